"""Remote services (cloud TTS, speech-to-speech APIs): their failures, retries and secrets.

A backend that calls a service over the network turns every failure into one ``RemoteServiceError``
of a known ``kind``, so a session hears one clear reason ("unauthorised: check the key in
DASHSCOPE_API_KEY") instead of an SDK's traceback, and the retry policy knows which failures a second
try can fix. Retrying is only safe before the first piece of output reached the caller: after that
a retry would repeat what the user already heard, so the failure ends the turn instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from avatarchat.config import Options

log = logging.getLogger("ray.serve")

FailureKind = Literal["unreachable", "unauthorised", "quota", "rate_limited", "timeout",
                      "bad_request", "server_error", "protocol"]

# What each kind tells the user (after the service's name), and whether trying again can help.
_KINDS: dict[str, tuple[str, bool]] = {
    "unreachable": ("cannot be reached", True),
    "unauthorised": ("refused the credentials", False),
    "quota": ("quota is used up", False),
    "rate_limited": ("is limiting the request rate", True),
    "timeout": ("did not answer in time", True),
    "bad_request": ("refused the request", False),
    "server_error": ("failed while answering", True),
    "protocol": ("answered with something this client does not understand", False),
}


class RemoteServiceError(RuntimeError):
    """A remote service failed. ``kind`` is one of FailureKind; ``detail`` is the service's own
    words (never the key); ``reason`` is what the session is told."""

    def __init__(self, service: str, kind: FailureKind, detail: str = "", hint: str = ""):
        if kind not in _KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; known: {', '.join(_KINDS)}")
        self.service, self.kind, self.detail, self.hint = service, kind, detail, hint
        words = _KINDS[kind][0]
        reason = f"{service} {words}"
        if detail:
            reason += f" ({detail})"
        if hint:
            reason += f": {hint}"
        self.reason = reason
        super().__init__(reason)

    @property
    def transient(self) -> bool:
        return _KINDS[self.kind][1]

    def __reduce__(self):
        # Crosses Ray's process boundary (a stage replica to the session's Media replica) intact.
        return type(self), (self.service, self.kind, self.detail, self.hint)


def kind_for_status(status: int) -> FailureKind:
    """The failure kind of an HTTP status (or a service's status code that follows HTTP's)."""
    if status in (401, 403):
        return "unauthorised"
    if status == 402:
        return "quota"
    if status == 429:
        return "rate_limited"
    if status in (408, 504):
        return "timeout"
    if status >= 500:
        return "server_error"
    return "bad_request"


def kind_for_code(code: str | None, status: int | None = None) -> FailureKind | None:
    """The failure kind of a service's error code (DashScope's "Arrearage", "Throttling.RateQuota",
    OpenAI's "insufficient_quota", ...) and HTTP ``status``; None when neither says. The code tells
    apart what one status covers (429: quota or rate limit; 400: a bad key or request); the rest the
    status says plainly."""
    c = "".join(ch for ch in (code or "").lower() if ch.isalnum())  # "invalid_api_key" ~ "InvalidApiKey"
    if any(k in c for k in ("arrearage", "allocationquota", "freetieronly", "insufficient")) or \
            ("quota" in c and "rate" not in c):
        return "quota"
    if c.startswith("throttling") or any(k in c for k in ("ratelimit", "ratequota", "toomanyrequests",
                                                          "limitrequests")):
        return "rate_limited"
    if any(k in c for k in ("apikey", "unauthori", "accessdenied", "forbidden", "authentication")):
        return "unauthorised"
    if status is not None:
        return kind_for_status(status)
    if "timeout" in c:
        return "timeout"
    if any(k in c for k in ("invalid", "badrequest", "datainspection", "unsupported", "notfound",
                            "missing", "toolong")):
        return "bad_request"
    if any(k in c for k in ("internal", "unavailable", "server", "overload")):
        return "server_error"
    return None


def handshake_failure(status: int, body: bytes | str | None) -> tuple[FailureKind, str]:
    """The kind and detail of a refused websocket handshake: its HTTP ``status``, unless the JSON
    body's ``code`` says more (DashScope answers an account in arrears with 429 and "Arrearage")."""
    code = text = ""
    try:
        parsed = json.loads(body or b"{}")
        code, text = str(parsed.get("code", "")), str(parsed.get("message", ""))
    except (ValueError, AttributeError):
        pass
    return kind_for_code(code, status), f"handshake HTTP {status} {code} {text}".strip()


def scrub(detail: object, secret: str | None) -> str:
    """``detail`` fit for an error message: ``secret`` masked (a service may echo what it was sent)
    and cut to 300 characters."""
    text = str(detail or "")
    if secret:
        text = text.replace(secret, "***")
    return text[:300]


class RetryPolicy(Options):
    """How a remote backend retries a failure that another try can fix (unreachable, timeout, rate
    limited, a server error), and only before any output reached the session."""

    attempts: int = Field(3, ge=1, le=10, description="tries in all, the first included; 1 never retries")
    backoff_s: float = Field(0.25, ge=0.0, le=30.0, description="wait before the second try; each later "
                             "wait doubles, with up to 25 % random jitter so sessions do not retry in step")
    timeout_s: float = Field(10.0, gt=0.0, le=300.0, description="longest wait for the service's first "
                             "answer, and then between two of its messages, before it counts as a timeout")


async def retrying(service: str, policy: RetryPolicy, attempt: Callable[[], AsyncIterator],
                   sleep=asyncio.sleep) -> AsyncIterator:
    """Yield what ``attempt()`` streams; a transient RemoteServiceError before its first item starts
    a new attempt (up to ``policy.attempts``), after it, or of another kind, is raised. Each wait for
    an item is bounded by ``policy.timeout_s``: a stalled service becomes a "timeout" failure."""
    for number in range(1, policy.attempts + 1):
        stream = attempt()
        started = False
        try:
            while True:
                try:
                    item = await asyncio.wait_for(anext(stream), policy.timeout_s)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise RemoteServiceError(service, "timeout",
                                             f"nothing for {policy.timeout_s:g} s") from None
                started = True
                yield item
        except RemoteServiceError as err:
            if started or not err.transient or number == policy.attempts:
                raise
            wait = policy.backoff_s * 2 ** (number - 1) * (1 + random.uniform(0, 0.25))
            log.warning("%s: %s; try %d of %d in %.2f s", service, err.kind, number + 1, policy.attempts, wait)
            await sleep(wait)
        finally:
            await stream.aclose()


def secret_from_env(env_name: str, what: str) -> str:
    """The secret held by environment variable ``env_name``; a start-up error naming the variable
    (never the value) when it is unset."""
    value = os.environ.get(env_name, "")
    if not value.strip():
        raise RuntimeError(f"environment variable {env_name} is not set: it holds the {what} "
                           f"(the config names the variable, never the key itself)")
    return value.strip()


def env_name(value: str) -> str:
    """Validator body for an ``*_env`` option: a variable's name, not a secret pasted by mistake."""
    if not value or not all(c.isalnum() or c == "_" for c in value) or value[0].isdigit():
        raise ValueError("must be the NAME of an environment variable (letters, digits, underscores), "
                         "not the key itself")
    return value


# The type of an ``*_env`` option (api_key_env): a variable's name, checked by env_name.
EnvVarName = Annotated[str, AfterValidator(env_name)]


def service_url(value: str, *schemes: str) -> str:
    """Validator body for a service's URL option: ``value`` when it starts with one of ``schemes``."""
    if not value.startswith(schemes):
        raise ValueError(f"must start with {' or '.join(schemes)}, got {value!r}")
    return value
