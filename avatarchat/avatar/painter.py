"""Turns what the avatar stage sends for a frame into pixels, next to the video encoder.

One painter per media process, shared by its sessions (it keeps no per-frame state):

- ``MotionPainter``: a motion avatar's ``FaceMotion`` drawn on its pack's photo (PortraitRenderer).
  It can also hand the page everything it needs to draw the face itself (``render: browser``).
- ``DrawnFramePainter``: a frame-drawing avatar's ``VideoFrame`` decoded; while the avatar is silent
  (the playout gives an idle FaceMotion), the backend's idle loop at the session clock's frame.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from avatarchat.avatar.renderer import PortraitRenderer
from avatarchat.messages import FaceMotion, Frame, VideoFrame


class FramePainter(Protocol):
    fps: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames."""

    @property
    def draws_in_browser(self) -> bool:
        """Whether the page can draw these frames itself from face motion."""

    def paint(self, frame: Frame, media_t: float) -> np.ndarray:
        """The (H, W, 3) uint8 RGB image for ``frame``, shown at ``media_t`` on the session clock."""


class MotionPainter:
    draws_in_browser = True

    def __init__(self, renderer: PortraitRenderer, fps: int):
        self.renderer, self.fps = renderer, fps

    @property
    def size(self) -> tuple[int, int]:
        return self.renderer.size

    def paint(self, frame: Frame, media_t: float) -> np.ndarray:
        if not isinstance(frame, FaceMotion):
            raise TypeError(f"a motion avatar sent a {type(frame).__name__}, not FaceMotion")
        return self.renderer.render(frame)


class DrawnFramePainter:
    draws_in_browser = False

    def __init__(self, idle_frames: list[VideoFrame], fps: int):
        if not idle_frames:
            raise ValueError("a frame-drawing avatar must give at least one idle frame")
        sizes = {(f.width, f.height) for f in idle_frames}
        if len(sizes) != 1:
            raise ValueError(f"the avatar's idle frames differ in size: {sorted(sizes)}")
        # decoded once: the idle loop is what most frames of a session show
        self._idle = [f.rgb() for f in idle_frames]
        self._size = sizes.pop()
        self.fps = fps

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def paint(self, frame: Frame, media_t: float) -> np.ndarray:
        if isinstance(frame, VideoFrame):
            image = frame.rgb()
            if image.shape[1::-1] != self._size:
                raise ValueError(f"the avatar drew a {image.shape[1]}x{image.shape[0]} frame, "
                                 f"its idle frames are {self._size[0]}x{self._size[1]}")
            return image
        # a FaceMotion here is the playout's idle face: show the idle loop instead
        return self._idle[int(media_t * self.fps + 1e-6) % len(self._idle)]
