"""StagePorts over Serve deployment handles.

A streamed stage call is consumed and re-yielded (a response generator cannot be passed on to
another handle call), and explicitly cancelled when the consumer stops early, so a cancelled turn
stops the remote stage instead of letting it run to the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray.serve.handle import DeploymentHandle

from avatarchat.messages import (AnimateRequest, AudioChunk, AvatarChunk, LLMRequest, SpeechRequest,
                                 TextDelta, Transcript)


async def _relay(response) -> AsyncIterator:
    try:
        async for item in response:
            yield item
    finally:
        response.cancel()


class HandlePorts:
    """``local_avatar``: an avatar backend loaded in this process (a motion avatar that
    ``runs_with_media``, avatarchat/avatar/media_avatar.py), called instead of the deployment.
    A speech-to-speech graph passes ``speech_to_speech`` and no llm or tts (asr only for captions)."""

    def __init__(self, asr: DeploymentHandle | None, llm: DeploymentHandle | None, tts: DeploymentHandle | None,
                 avatar: DeploymentHandle, local_avatar=None, speech_to_speech: DeploymentHandle | None = None):
        self.asr = asr
        self.llm = llm.options(stream=True) if llm is not None else None
        self.tts = tts.options(stream=True) if tts is not None else None
        self.avatar = avatar.options(stream=True)
        self.local_avatar = local_avatar
        self.speech = speech_to_speech.options(stream=True) if speech_to_speech is not None else None
        self.speech_to_speech = speech_to_speech is not None
        self.captions_from_asr = self.speech_to_speech and asr is not None

    async def transcribe(self, audio: AudioChunk) -> Transcript:
        return await self.asr.transcribe.remote(audio)

    def generate(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        return _relay(self.llm.generate.remote(request))

    def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]:
        return _relay(self.tts.synthesize.remote(text, language))

    def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]:
        if self.local_avatar is not None:
            return self.local_avatar.animate(request)
        return _relay(self.avatar.animate.remote(request))

    def converse(self, request: SpeechRequest) -> AsyncIterator[Transcript | TextDelta | AudioChunk]:
        return _relay(self.speech.converse.remote(request))
