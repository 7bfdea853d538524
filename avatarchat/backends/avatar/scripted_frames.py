"""A scripted frame-drawing avatar for tests: it owns its pixels as MuseTalk and LiteAvatar do, but
draws them without a model. A box in the middle of each frame (``MARK_BOX``) is as bright as the
reply's audio in that frame's time, so a client can measure audio/video sync from what it receives;
the idle loop keeps the box dark. Same frame-timing rules as every avatar backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
from pydantic import Field

from avatarchat.avatar.motion import frame_range
from avatarchat.backends.avatar.base import AvatarBackend
from avatarchat.config import Options
from avatarchat.messages import AnimateRequest, AudioChunk, AvatarChunk, VideoFrame

MARK_BOX = (120, 90, 200, 150)  # x0, y0, x1, y1 in a 320x240 frame: brightness follows the sound
DARK, BRIGHT = 40, 255


class ScriptedFrameAvatar(AvatarBackend):
    draws_frames = True

    class Options(Options):
        fps: int = Field(25, gt=0, le=60, description="video frames per second")
        chunk_s: float = Field(0.2, gt=0, description="audio per yielded chunk")
        delay_s: float = Field(0.0, ge=0, description="simulated drawing time per chunk")
        idle_frames: int = Field(50, gt=0, le=500, description="length of the idle loop, in frames")

    def __init__(self, options):
        super().__init__(options)
        self.frames_drawn = 0  # every frame animate has drawn: an interruption must stop it

    def load(self) -> None:
        self.fps = self.options.fps

    def frame_size(self) -> tuple[int, int]:
        return 320, 240

    def _draw(self, brightness: int, k: int) -> VideoFrame:
        image = np.full((240, 320, 3), 90, np.uint8)
        image[:, :, 2] = 120 + (k % 50)  # a slow colour drift outside the box: the loop moves
        x0, y0, x1, y1 = MARK_BOX
        image[y0:y1, x0:x1] = brightness
        return VideoFrame.from_rgb(image)

    def idle_frames(self) -> list[VideoFrame]:
        return [self._draw(DARK, k) for k in range(self.options.idle_frames)]

    async def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]:
        audio = request.speech.audio
        sr, fps = audio.sample_rate, self.fps
        step = max(1, int(self.options.chunk_s * sr))
        for offset in range(0, len(audio.samples), step):
            await asyncio.sleep(self.options.delay_s)
            piece = audio.samples[offset:offset + step]
            start = audio.start + offset / sr
            frames = []
            for k in frame_range(start, start + len(piece) / sr, fps):
                # the sound around the frame's time (centred: the box neither leads nor trails)
                a = max(0, round((k / fps - audio.start - 0.5 / fps) * sr))
                window = audio.samples[a:a + round(sr / fps)]
                level = float(np.sqrt(np.mean(window ** 2))) if len(window) else 0.0
                frames.append(self._draw(min(BRIGHT, DARK + round(1500 * level)), k))
                self.frames_drawn += 1
            first = frame_range(start, start + len(piece) / sr, fps).start
            yield AvatarChunk(AudioChunk(piece, sr, start), tuple(frames), first, fps,
                              request.speech.text, request.speech.sentence)


BACKEND = ScriptedFrameAvatar
