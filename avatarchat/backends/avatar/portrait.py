"""The embedded avatar: a photo (an avatar pack) animated by the speech it says.

This stage only computes motion: per video frame a FaceMotion (mouth from the audio, head sway,
breathing and blinks from ``idle_motion``). Pixels are drawn later by ``PortraitRenderer`` next to
the video encoder, so ~100 bytes a frame cross Ray instead of a 786 kB image. The work here is a
few FFTs per sentence, small enough to run on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pydantic import Field

from avatarchat.avatar import expression
from avatarchat.avatar.motion import SpeechMouth, SpeechMouthOptions, chunk_spans, frame_range, idle_motion
from avatarchat.avatar.pack import AvatarPack
from avatarchat.backends.avatar.base import AvatarBackend
from avatarchat.config import Options
from avatarchat.messages import AnimateRequest, AudioChunk, AvatarChunk, FaceMotion


STRESS_NOD_DEG = 1.6  # head dip (degrees) at full stress (the mouth track's brow value, 0 .. 0.5)


class PortraitAvatar(AvatarBackend):
    runs_with_media = True  # a few FFTs a sentence: cheaper here than a Ray round trip
    class Options(Options):
        pack: str = Field("astronaut", description="avatar pack: a name in avatars/ (or "
                          "$AVATAR_CHAT_AVATARS_DIR) or a directory path")
        fps: int = Field(25, gt=0, le=120, description="video frames per second")
        chunk_s: float = Field(0.2, gt=0, le=5.0, description="seconds of audio per yielded chunk")
        gate_db: float = Field(-50.0, le=0, description="audio quieter than this (dBFS) closes "
                               "the mouth completely")
        range_db: float = Field(24.0, gt=0, le=60, description="loudness range (dB below the "
                                "speech's loud end) over which the mouth goes from closed to open")
        attack_s: float = Field(0.035, gt=0, le=1, description="mouth opening time constant")
        release_s: float = Field(0.09, gt=0, le=1, description="mouth closing time constant")
        lookahead_s: float = Field(0.02, ge=0, le=0.2, description="lips lead the sound by this")
        idle_scale: float = Field(1.0, ge=0, le=3, description="head sway amplitude (0 = still)")

    def load(self) -> None:
        o = self.options
        self.fps = o.fps
        # Fails with the path and the packs available when the pack is missing or incomplete.
        self._pack = AvatarPack.load(o.pack)
        self._mouth = SpeechMouth(o.fps, SpeechMouthOptions(
            gate_db=o.gate_db, range_db=o.range_db, attack_s=o.attack_s, release_s=o.release_s,
            lookahead_s=o.lookahead_s))

    @property
    def pack(self) -> str:
        return self.options.pack

    async def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]:
        audio = request.speech.audio
        if len(audio.samples) == 0:
            return
        track = self._mouth.track(audio, request.previous)
        faces = self._expressions(len(track), request)
        sr, fps = audio.sample_rate, self.fps
        for a, b, start, end in chunk_spans(audio, self.options.chunk_s):
            frames = frame_range(start, end, fps)
            motions = tuple(self._frame(track, faces, k, request.seed) for k in frames)
            yield AvatarChunk(AudioChunk(audio.samples[a:b], sr, start), motions, frames.start, fps,
                              request.speech.text, request.speech.sentence)
            await asyncio.sleep(0)  # let other sessions' streams run between chunks

    def _expressions(self, n: int, request: AnimateRequest) -> list[expression.Expression]:
        """The expression in each of the ``n`` frames: eased from the previous frame's towards the
        request's emotion, so sentences and emotions change without a jump."""
        p = request.previous
        current = expression.Expression(p.smile, p.surprise) if p else expression.Expression()
        goal, dt = expression.target(request.emotion), 1.0 / self.fps
        out = []
        for _ in range(n):
            current = expression.ease(current, goal, dt, expression.BLEND_IN_S)
            out.append(current)
        return out

    def _frame(self, track, faces, k: int, seed: int) -> FaceMotion:
        idle = idle_motion(k / self.fps, seed, self.options.idle_scale)
        i = k - track.first_frame
        face = faces[i]
        extra = expression.offsets(face)
        return FaceMotion(mouth_open=max(float(track.open[i]), extra.mouth_open),
                          mouth_width=float(track.width[i]),
                          # stressed syllables: the brows lift and the head dips a little
                          head_yaw=idle.head_yaw,
                          head_pitch=idle.head_pitch + extra.head_pitch + STRESS_NOD_DEG * float(track.brow[i]),
                          head_roll=idle.head_roll, blink=idle.blink,
                          brow=idle.brow + float(track.brow[i]) + extra.brow, breath=idle.breath,
                          smile=face.smile, surprise=face.surprise)


BACKEND = PortraitAvatar
