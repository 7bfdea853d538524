"""What a media process (a Media replica, the standalone session server, a local run) needs of the
avatar stage: who animates its sessions' replies, and the painter that turns frames into pixels.

The backend class decides, by the contract's two flags (avatarchat/backends/avatar/base.py):
a motion avatar that ``runs_with_media`` is loaded here and called in-process (its work is a few
FFTs a sentence: a Ray round trip would cost more than the work); any other backend is called
through the Avatar deployment. A frame-drawing avatar's idle loop is fetched from it once.
"""

from __future__ import annotations

from dataclasses import dataclass

from avatarchat import registry
from avatarchat.avatar.painter import DrawnFramePainter, FramePainter, MotionPainter
from avatarchat.backends.avatar.base import AvatarBackend
from avatarchat.backends.base import create_backend
from avatarchat.config import StageConfig


@dataclass
class MediaAvatar:
    local: AvatarBackend | None  # loaded in this process, or None: call the Avatar deployment
    painter: FramePainter


def motion_painter(pack: str, fps: int) -> MotionPainter:
    from avatarchat.avatar.pack import AvatarPack
    from avatarchat.avatar.renderer import PortraitRenderer

    return MotionPainter(PortraitRenderer(AvatarPack.load(pack)), fps)


def painter_for(backend: AvatarBackend) -> FramePainter:
    """The painter for a loaded backend."""
    if backend.draws_frames:
        return DrawnFramePainter(backend.idle_frames(), backend.fps)
    return motion_painter(backend.pack, backend.fps)


async def media_avatar(stage: StageConfig, deployment) -> MediaAvatar:
    """``deployment``: the Avatar deployment's handle (its ``idle_frames`` is asked once)."""
    cls = registry.backend_class("avatar", stage.backend)
    if cls.runs_with_media:
        backend = create_backend(stage)
        return MediaAvatar(backend, painter_for(backend))
    fps = stage.options.fps
    if cls.draws_frames:
        return MediaAvatar(None, DrawnFramePainter(await deployment.idle_frames.remote(), fps))
    return MediaAvatar(None, motion_painter(stage.options.pack, fps))
