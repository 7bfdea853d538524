"""Speech recognition: one utterance in, one transcript out."""

from __future__ import annotations

from avatarchat.backends.base import Backend
from avatarchat.messages import AudioChunk, Transcript


class ASRBackend(Backend):
    stage = "asr"
    sample_rate: int = 16000  # the rate transcribe() expects; callers resample

    async def transcribe(self, audio: AudioChunk) -> Transcript:
        raise NotImplementedError
