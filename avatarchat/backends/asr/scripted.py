"""A scripted ASR for tests of the code around it: answers a fixed text after a fixed delay."""

from __future__ import annotations

import asyncio

from pydantic import Field

from avatarchat.backends.asr.base import ASRBackend
from avatarchat.config import Options
from avatarchat.messages import AudioChunk, Transcript


class ScriptedASR(ASRBackend):
    class Options(Options):
        text: str = Field("Hello there.", description="the transcript every utterance gets")
        delay_s: float = Field(0.05, ge=0, description="simulated recognition time")
        fail: bool = Field(False, description="raise instead of answering (failure tests)")
        language: str | None = Field("en", description="the language the transcript reports")
        emotion: str | None = Field(None, description="the emotion the transcript reports")

    async def transcribe(self, audio: AudioChunk) -> Transcript:
        await asyncio.sleep(self.options.delay_s)
        if self.options.fail:
            raise RuntimeError("scripted ASR failure")
        o = self.options
        return Transcript(text=o.text, language=o.language, emotion=o.emotion)


BACKEND = ScriptedASR
