"""A stage backend with a stand-in: when the configured backend (usually a remote service) fails
with a RemoteServiceError before its first output, the same call goes to the fallback backend, and
the primary rests for ``REST_S`` so that every following sentence does not wait out its timeout
again. A failure after output has reached the session is not hidden: the turn ends with it, since
switching voices or models mid-sentence would be worse than saying what broke.

    stages:
      tts:
        backend: cosyvoice_bailian
        fallback: {backend: hibari}
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from avatarchat.remote import RemoteServiceError

log = logging.getLogger("ray.serve")

REST_S = 30.0

# Each stage's call: the streamed ones, and ASR's single answer.
STREAMED = {"llm": "stream", "tts": "synthesize", "speech_to_speech": "converse"}


class FallbackBackend:
    """Wraps ``primary`` and ``fallback`` (two loaded backends of one stage) as one backend."""

    def __init__(self, primary, fallback, clock: Callable[[], float] = time.monotonic, rest_s: float = REST_S):
        self.primary, self.fallback, self.clock, self.rest_s = primary, fallback, clock, rest_s
        self.stage, self.options = primary.stage, primary.options
        self.failed_at: float | None = None
        self.calls_to_fallback = 0
        if primary.stage in STREAMED:
            setattr(self, STREAMED[primary.stage], self._streaming_call(STREAMED[primary.stage]))

    def __getattr__(self, name):
        return getattr(self.primary, name)  # sample_rate and the like: the primary's

    @property
    def name(self) -> str:
        return f"{self.primary.name} (fallback {self.fallback.name})"

    def _resting(self) -> bool:
        return self.failed_at is not None and self.clock() - self.failed_at < self.rest_s

    def _failed(self, err: RemoteServiceError) -> None:
        self.failed_at = self.clock()
        self.calls_to_fallback += 1
        log.warning("stage %s: %s failed (%s: %s); %s answers for the next %g s", self.stage,
                    self.primary.name, err.kind, err.reason, self.fallback.name, self.rest_s)

    def _streaming_call(self, method: str):
        async def call(*args, **kwargs) -> AsyncIterator:
            if not self._resting():
                started = False
                try:
                    async with aclosing(getattr(self.primary, method)(*args, **kwargs)) as items:
                        async for item in items:
                            started = True
                            yield item
                    return
                except RemoteServiceError as err:
                    if started:
                        raise
                    self._failed(err)
            else:
                self.calls_to_fallback += 1
            async with aclosing(getattr(self.fallback, method)(*args, **kwargs)) as items:
                async for item in items:
                    yield item
        return call

    async def transcribe(self, *args, **kwargs):
        if not self._resting():
            try:
                return await self.primary.transcribe(*args, **kwargs)
            except RemoteServiceError as err:
                self._failed(err)
        else:
            self.calls_to_fallback += 1
        return await self.fallback.transcribe(*args, **kwargs)

    def load(self) -> None:
        pass  # both were loaded by create_backend, each failing start-up under its own name

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()

    def check_health(self) -> None:
        self.primary.check_health()
        self.fallback.check_health()
