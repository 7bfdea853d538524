"""The outgoing tracks: 48 kHz mono audio in 20 ms frames and video at the avatar's fps, both paced
by the session's one ``MediaClock`` (see playout.py). Frames are drawn here, in the process that
encodes them, from face motion: pixels never cross Ray."""

from __future__ import annotations

import asyncio
import fractions

import av
import cv2
from aiortc import MediaStreamTrack

from avatarchat.audio import to_pcm16
from avatarchat.avatar.painter import FramePainter
from avatarchat.conversation.playout import AUDIO_FRAME_S, AUDIO_FRAME_SAMPLES, OUT_RATE, Playout

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_TIME_BASE = fractions.Fraction(1, OUT_RATE)
# A sender that fell this far behind the clock (a starved process) skips ahead instead of bursting.
MAX_LATE_S = 0.2


class AvatarAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, playout: Playout):
        super().__init__()
        self.playout = playout
        self._n = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise _ended()
        clock = self.playout.clock
        late = await clock.wait(self._n * AUDIO_FRAME_S)
        if late > MAX_LATE_S:
            self._n = int(clock.now() / AUDIO_FRAME_S)
        samples = self.playout.audio_frame(self._n * AUDIO_FRAME_S)
        frame = av.AudioFrame.from_ndarray(to_pcm16(samples).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OUT_RATE
        frame.pts = self._n * AUDIO_FRAME_SAMPLES
        frame.time_base = AUDIO_TIME_BASE
        self._n += 1
        return frame


class AvatarVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, playout: Playout, painter: FramePainter):
        super().__init__()
        self.playout, self.painter = playout, painter
        self._k = 0
        self.frames_sent = 0
        self.frames_skipped = 0  # frames never drawn because the sender ran late

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise _ended()
        fps, clock = self.playout.fps, self.playout.clock
        late = await clock.wait(self._k / fps)
        if late > MAX_LATE_S:
            k = int(clock.now() * fps)
            self.frames_skipped += max(0, k - self._k)
            self._k = k
        t = self._k / fps
        shown, _ = self.playout.frame_at(t)
        frame = await asyncio.to_thread(self._draw, shown, t)
        frame.pts = int(round(t * VIDEO_TIME_BASE.denominator))
        frame.time_base = VIDEO_TIME_BASE
        self._k += 1
        self.frames_sent += 1
        return frame


    def _draw(self, shown, t: float) -> av.VideoFrame:
        # OpenCV's RGB -> I420 takes 0.3 ms a 512x512 frame, libswscale's reformat 1.8 ms.
        image = self.painter.paint(shown, t)
        return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")


def _ended():
    from aiortc.mediastreams import MediaStreamError

    return MediaStreamError()
