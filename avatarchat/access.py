"""Who may use the HTTP API: optional bearer tokens, one for users and one for operators.

    open      GET /healthz, the web page (/ and /static/...): a page must load to ask for a token
    user      POST/DELETE /v1/sessions..., GET /v1/sessions, POST /v1/turns, GET /v1/ice,
              GET /v1/avatar, GET /v1/info: what a conversation needs
    operator  everything else: /v1/diagnostics, /v1/stages, /docs, /openapi.json, and any
              route added later (a new route is closed until it is placed here)

Each token is read from the environment variable the config names (``access.user_token_env``,
``access.operator_token_env``), once, at start-up; a named variable that is unset or empty fails the
start. The operator token also opens every user route. Tokens are compared in constant time and
never logged. Without tokens the API is open, which is refused when the service is bound beyond
loopback unless ``access.allow_open_beyond_loopback`` says so (behind an authenticating proxy).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from avatarchat.errors import ConfigError
from avatarchat.http_io import json_error

Scope = Literal["open", "user", "operator"]

_USER_ROUTES = {("POST", "/v1/sessions"), ("GET", "/v1/sessions"), ("POST", "/v1/turns"),
                ("GET", "/v1/ice"), ("GET", "/v1/avatar"), ("GET", "/v1/info")}


def scope_of(method: str, path: str) -> Scope:
    """Which token a request needs (see the module docstring)."""
    if path in ("/", "/healthz") or path.startswith("/static/"):
        return "open"
    if (method, path) in _USER_ROUTES or (method == "DELETE" and path.startswith("/v1/sessions/")):
        return "user"
    return "operator"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


@dataclass(frozen=True)
class AccessPolicy:
    """The tokens in force; None: that scope is open."""

    user_token: str | None = None
    operator_token: str | None = None

    def allows(self, scope: Scope, authorization: str | None) -> bool:
        if scope == "open":
            return True
        # the scope's own token first: None leaves the scope open; the operator's opens user routes
        tokens = [self.operator_token] if scope == "operator" else [self.user_token, self.operator_token]
        if tokens[0] is None:
            return True
        given = bearer(authorization)
        # compare_digest on bytes: constant time whatever the characters
        return given is not None and any(t is not None and hmac.compare_digest(given.encode(), t.encode())
                                         for t in tokens)

    @property
    def is_open(self) -> bool:
        return self.user_token is None or self.operator_token is None


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750), else None."""
    if not authorization:
        return None
    kind, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if kind.lower() == "bearer" and token else None


def _token(source: str, key: str, env_name: str | None) -> str | None:
    if env_name is None:
        return None
    value = os.environ.get(env_name, "")
    if not value.strip():
        raise ConfigError(source, key, f"environment variable {env_name} is not set (or empty): set it "
                                       f"in the environment that starts Ray (scripts/serve.sh), or remove "
                                       f"the key to leave that part of the API open")
    return value.strip()


def load_policy(access, host: str, source: str = "config") -> AccessPolicy:
    """The policy for ``access`` (config's Access options) on a service bound to ``host``. Raises
    ConfigError for a token variable that is not set, and for an API left open beyond loopback."""
    policy = AccessPolicy(_token(source, "access.user_token_env", access.user_token_env),
                          _token(source, "access.operator_token_env", access.operator_token_env))
    if policy.is_open and not is_loopback(host) and not access.allow_open_beyond_loopback:
        missing = [k for k, t in (("access.user_token_env", policy.user_token),
                                  ("access.operator_token_env", policy.operator_token)) if t is None]
        raise ConfigError(source, missing[0],
                          f"the service is bound to {host!r}, beyond loopback, and {' and '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not set: anyone who reaches the port "
                          f"could use it. Name environment variables holding bearer tokens, or set "
                          f"access.allow_open_beyond_loopback: true (e.g. behind a proxy that authenticates)")
    return policy


async def check_access(request: Request, call_next):
    """An HTTP middleware (``app.middleware("http")(check_access)``): every request passes the
    policy the app holds in ``app.state.access`` (set at start-up, before any request is served)."""
    policy: AccessPolicy = getattr(request.app.state, "access", None) or AccessPolicy()
    scope = scope_of(request.method, request.url.path)
    if not policy.allows(scope, request.headers.get("authorization")):
        return json_error(401, f"this needs the {scope} token: send 'Authorization: Bearer <token>'",
                          {"WWW-Authenticate": 'Bearer realm="avatar-chat"'})
    return await call_next(request)
