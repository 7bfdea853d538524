"""How a turn reaches the stages: through Serve deployment handles in the service, or straight to
in-process backends (offline use and tests). The turn code is the same for both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from avatarchat.messages import (AnimateRequest, AudioChunk, AvatarChunk, LLMRequest, TextDelta,
                                 Transcript)


class StagePorts(Protocol):
    async def transcribe(self, audio: AudioChunk) -> Transcript: ...

    def generate(self, request: LLMRequest) -> AsyncIterator[TextDelta]: ...

    def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]: ...

    def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]: ...


class LocalPorts:
    """Calls loaded backends in this process."""

    def __init__(self, asr, llm, tts, avatar):
        self.asr, self.llm, self.tts, self.avatar = asr, llm, tts, avatar

    async def transcribe(self, audio: AudioChunk) -> Transcript:
        return await self.asr.transcribe(audio)

    def generate(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        return self.llm.stream(request)

    def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]:
        return self.tts.synthesize(text, language)

    def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]:
        return self.avatar.animate(request)
