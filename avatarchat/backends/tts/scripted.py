"""A scripted TTS for tests: a tone whose length follows the text, after a scripted delay. It keeps
the last sentences it was asked to speak, with their language, so tests see what reached the TTS."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import numpy as np
from pydantic import Field

from avatarchat.backends.tts.base import TTSBackend
from avatarchat.config import Options
from avatarchat.messages import AudioChunk


class ScriptedTTS(TTSBackend):
    class Options(Options):
        seconds_per_char: float = Field(0.06, gt=0, description="audio length per character of text")
        delay_s: float = Field(0.02, ge=0, description="simulated time to first audio")
        sample_rate: int = Field(24000, gt=0, description="output sample rate")

    def __init__(self, options):
        super().__init__(options)
        self.spoken: deque[tuple[str, str | None]] = deque(maxlen=64)  # (text, language), newest last

    def load(self) -> None:
        self.sample_rate = self.options.sample_rate

    async def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]:
        self.spoken.append((text, language))
        await asyncio.sleep(self.options.delay_s)
        n = int(len(text) * self.options.seconds_per_char * self.sample_rate)
        t = np.arange(n, dtype=np.float32) / self.sample_rate
        # a 220 Hz tone with a 4 Hz syllable-like envelope, so downstream level analysis has work
        tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
        yield AudioChunk(tone.astype(np.float32), self.sample_rate, 0.0)


BACKEND = ScriptedTTS
