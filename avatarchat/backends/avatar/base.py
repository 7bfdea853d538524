"""Avatar: speech audio in, face motion for each video frame out, with the audio it goes with."""

from __future__ import annotations

from collections.abc import AsyncIterator

from avatarchat.backends.base import Backend
from avatarchat.messages import AnimateRequest, AvatarChunk


class AvatarBackend(Backend):
    stage = "avatar"
    fps: int = 25

    @property
    def pack(self) -> str:
        """The avatar pack (``avatars/<name>/``) the renderer draws these motions on."""
        raise NotImplementedError

    def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]:
        raise NotImplementedError
