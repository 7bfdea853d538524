"""A scripted avatar for tests: cuts the audio into chunks and gives each frame a mouth opening
from the chunk's level, with the same frame-timing rules as a real avatar backend."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator

import numpy as np
from pydantic import Field

from avatarchat.backends.avatar.base import AvatarBackend
from avatarchat.config import Options
from avatarchat.messages import AnimateRequest, AudioChunk, AvatarChunk, FaceMotion


class ScriptedAvatar(AvatarBackend):
    runs_with_media = True  # a few FFTs a sentence: cheaper here than a Ray round trip
    class Options(Options):
        pack: str = Field("astronaut", description="avatar pack the frames are meant for")
        fps: int = Field(25, gt=0, description="video frames per second")
        chunk_s: float = Field(0.2, gt=0, description="audio per yielded chunk")
        delay_s: float = Field(0.0, ge=0, description="simulated time per chunk")

    def __init__(self, options):
        super().__init__(options)
        self.emotions: deque[str | None] = deque(maxlen=64)  # each request's emotion, newest last

    def load(self) -> None:
        self.fps = self.options.fps

    @property
    def pack(self) -> str:
        return self.options.pack

    async def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]:
        self.emotions.append(request.emotion)
        audio = request.speech.audio
        step = max(1, int(self.options.chunk_s * audio.sample_rate))
        for offset in range(0, len(audio.samples), step):
            await asyncio.sleep(self.options.delay_s)
            piece = audio.samples[offset:offset + step]
            start = audio.start + offset / audio.sample_rate
            end = start + len(piece) / audio.sample_rate
            first = math.ceil(start * self.fps - 1e-9)
            last = math.ceil(end * self.fps - 1e-9)  # exclusive
            level = float(np.sqrt(np.mean(piece ** 2))) if len(piece) else 0.0
            frames = tuple(FaceMotion(mouth_open=min(1.0, 3 * level)) for _ in range(first, last))
            yield AvatarChunk(AudioChunk(piece, audio.sample_rate, start), frames, first, self.fps,
                              request.speech.text, request.speech.sentence)


BACKEND = ScriptedAvatar
