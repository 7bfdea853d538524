"""Avatar: speech audio in, one frame per video frame time out, with the audio it goes with.

The contract has two kinds of backend, told apart by ``draws_frames``:

- motion avatars (``portrait``) yield a ``FaceMotion`` per frame: a few numbers that the media plane
  renders next to the video encoder, or that the page draws itself (``render: browser``). Their work
  is a few FFTs a sentence, so with ``runs_with_media`` the session's own process runs them, where
  the audio already is, instead of a round trip through the Avatar deployment.
- frame-drawing avatars (``musetalk``, ``liteavatar``) own their pixels: they yield a ``VideoFrame``
  per frame (JPEG) from the Avatar deployment, where their GPU is, and hand the media plane the idle
  loop (``idle_frames``) shown while the avatar is silent, so silence costs no model work.

Either way frame ``k`` of a reply is shown at ``k / fps`` seconds on the reply's timeline (the same
media clock as its audio), so lip sync holds for both; frames that arrive late are skipped by the
media plane, and an interruption cancels ``animate``'s stream (a backend stops at its next yield).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

from avatarchat.backends.base import Backend
from avatarchat.messages import AnimateRequest, AvatarChunk, VideoFrame


class AvatarBackend(Backend):
    stage = "avatar"
    fps: int = 25
    draws_frames: ClassVar[bool] = False    # True: animate yields VideoFrame, not FaceMotion
    runs_with_media: ClassVar[bool] = False  # cheap motion work: run in the session's process

    @property
    def pack(self) -> str | None:
        """The avatar pack (``avatars/<name>/``) a motion avatar's frames are drawn on; None for a
        backend that draws its own frames."""
        return None

    def frame_size(self) -> tuple[int, int]:
        """(width, height) of a frame-drawing backend's frames."""
        raise NotImplementedError

    def idle_frames(self) -> list[VideoFrame]:
        """A frame-drawing backend's silent loop, shown in order (frame ``k`` of the session clock
        is ``idle_frames()[k % len]``) whenever no reply is playing. Called once per media replica."""
        raise NotImplementedError

    def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]:
        raise NotImplementedError
