"""A client of any OpenAI-compatible chat-completions server, streamed over HTTP (SSE).

Works with vLLM, llama.cpp's server, SGLang or a hosted API.

The request is ``POST {base_url}/chat/completions`` with ``"stream": true``; the reply is a stream of
``data: {json}`` lines ending with ``data: [DONE]``. Stopping iteration early closes the HTTP
response, which servers take as the client going away and stop generating.

The API key is never part of the configuration: ``api_key_env`` names the environment variable that
holds it.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from collections.abc import AsyncIterator

from pydantic import Field, field_validator

from avatarchat.backends.llm.base import DEFAULT_SYSTEM_PROMPT, LLMBackend
from avatarchat.config import Options
from avatarchat.messages import LLMRequest, TextDelta
from avatarchat.remote import EnvVarName, RemoteServiceError, RetryPolicy, kind_for_status, retrying


SERVICE = "the OpenAI-compatible LLM server"


class OpenAICompatError(RemoteServiceError):
    """The server answered with an error (HTTP status, or an error object in the stream), was
    unreachable or too slow; ``kind`` says which (avatarchat/remote.py)."""


class OpenAICompatLLM(LLMBackend):
    """A client of an OpenAI-compatible ``/v1/chat/completions`` endpoint (httpx, streaming)."""

    class Options(Options):
        base_url: str = Field("http://127.0.0.1:8001/v1",
                              description="the API root, up to and including /v1")
        model: str = Field("default", min_length=1, description="model name sent with each request")
        api_key_env: EnvVarName | None = Field(
            None, description="name of the environment variable holding the API key (sent as a "
                              "Bearer token); None sends no key. Never put the key itself here.")
        max_tokens: int = Field(48, ge=1, le=8192, description="longest reply in tokens")
        temperature: float = Field(0.2, ge=0.0, le=2.0, description="sampling temperature")
        timeout_s: float = Field(30.0, gt=0, description="connect and per-read timeout in seconds")
        system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1,
                                   description="fixed system prompt sent first in every request")
        check_on_load: bool = Field(False, description="GET {base_url}/models at start-up and fail "
                                                       "if the server does not answer")
        retry: RetryPolicy = Field(default_factory=RetryPolicy, description="retries of an unreachable, "
                                   "rate-limited, failing or stalled server, before the first token only")

        @field_validator("base_url")
        @classmethod
        def _http_url(cls, v: str) -> str:
            if not v.startswith(("http://", "https://")):
                raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
            return v.rstrip("/")

    def __init__(self, options):
        super().__init__(options)
        # httpx clients hold connections bound to the event loop that opened them: one per loop.
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._headers: dict[str, str] = {}
        self.streams_stopped_early = 0

    def load(self) -> None:
        import httpx  # noqa: F401 - fail at start-up if the library is missing

        o = self.options
        self._clients.clear()
        self._headers = {"Accept": "text/event-stream"}
        if o.api_key_env:
            key = os.environ.get(o.api_key_env)
            if not key:
                raise RuntimeError(f"environment variable {o.api_key_env} (api_key_env) is not set")
            self._headers["Authorization"] = f"Bearer {key}"
        if o.check_on_load:
            with httpx.Client(timeout=o.timeout_s, headers=self._headers) as client:
                try:
                    r = client.get(f"{o.base_url}/models")
                except httpx.HTTPError as err:
                    raise ConnectionError(f"cannot reach {o.base_url}/models: {err}") from err
                if r.status_code >= 400:
                    raise OpenAICompatError(SERVICE, kind_for_status(r.status_code),
                                            f"{o.base_url}/models answered HTTP {r.status_code}: {r.text[:200]}")

    def close(self) -> None:
        self._clients.clear()

    def _client(self):
        import httpx

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            t = self.options.timeout_s
            client = httpx.AsyncClient(timeout=httpx.Timeout(t, connect=t), headers=self._headers)
            self._clients[loop] = client
        return client

    def _body(self, request: LLMRequest) -> dict:
        o = self.options
        messages = self.chat_messages(request)
        max_tokens = min(request.max_tokens or o.max_tokens, o.max_tokens)
        return {"model": o.model, "messages": messages, "stream": True,
                "max_tokens": max_tokens, "temperature": o.temperature}

    def stream(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        # transient failures (unreachable, 429, 5xx, a stall) before the first token are retried
        return retrying(SERVICE, self.options.retry, lambda: self._stream_once(request))

    async def _stream_once(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        import httpx

        url = f"{self.options.base_url}/chat/completions"
        finished = False
        try:
            async with self._client().stream("POST", url, json=self._body(request)) as response:
                if response.status_code >= 400:
                    body = (await response.aread()).decode("utf-8", "replace")
                    raise OpenAICompatError(SERVICE, kind_for_status(response.status_code),
                                            f"{url} answered HTTP {response.status_code}: {body[:300]}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, ": keep-alive" comments, "event:" lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        finished = True
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise OpenAICompatError(SERVICE, "server_error", f"{url} streamed an error: {chunk['error']}")
                    for choice in chunk.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield TextDelta(text)
                finished = True  # the server closed the stream without [DONE]: take what came
        except httpx.TimeoutException as err:
            raise OpenAICompatError(SERVICE, "timeout", f"{url}: {type(err).__name__}") from err
        except httpx.TransportError as err:  # refused, reset, DNS: the server is not there
            raise OpenAICompatError(SERVICE, "unreachable", f"{url}: {err or type(err).__name__}") from err
        finally:
            if not finished:
                self.streams_stopped_early += 1


BACKEND = OpenAICompatLLM
