"""How a turn reaches the stages: through Serve deployment handles in the service, or straight to
in-process backends (offline use and tests). The turn code is the same for both.

A cascade has asr, llm and tts; a speech-to-speech graph has the one model instead (``converse``),
and an asr stage only when captions come from it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from avatarchat.messages import (AnimateRequest, AudioChunk, AvatarChunk, LLMRequest, SpeechRequest,
                                 TextDelta, Transcript)


class StagePorts(Protocol):
    speech_to_speech: bool   # the turn calls converse() instead of transcribe/generate/synthesize
    captions_from_asr: bool  # speech to speech: transcribe() beside the model makes the captions

    async def transcribe(self, audio: AudioChunk) -> Transcript: ...

    def generate(self, request: LLMRequest) -> AsyncIterator[TextDelta]: ...

    def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]: ...

    def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]: ...

    def converse(self, request: SpeechRequest) -> AsyncIterator[Transcript | TextDelta | AudioChunk]: ...


class LocalPorts:
    """Calls loaded backends in this process."""

    def __init__(self, asr=None, llm=None, tts=None, avatar=None, speech_to_speech=None):
        self.asr, self.llm, self.tts, self.avatar = asr, llm, tts, avatar
        self.speech = speech_to_speech
        self.speech_to_speech = speech_to_speech is not None
        self.captions_from_asr = self.speech_to_speech and asr is not None

    async def transcribe(self, audio: AudioChunk) -> Transcript:
        return await self.asr.transcribe(audio)

    def generate(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        return self.llm.stream(request)

    def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]:
        return self.tts.synthesize(text, language)

    def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]:
        return self.avatar.animate(request)

    def converse(self, request: SpeechRequest) -> AsyncIterator[Transcript | TextDelta | AudioChunk]:
        return self.speech.converse(request)
