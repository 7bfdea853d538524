"""Frame-drawing avatars over real WebRTC: a session in this process (the session service on a
FastAPI app, scripted ASR/LLM/TTS) with the LiteAvatar or MuseTalk backend on a random-weight model, and
AvatarClient over loopback. The client receives the avatar's own frames at its size; while the
avatar speaks the face box changes and the rest of the frame is its background; an interruption
stops the drawn frames at once and the idle loop returns. (Sync on the media clock is the contract's,
measured in tests/integration/test_sessions_local.py with a drawing avatar whose pixels follow the
sound: a random-weight face follows nothing.)"""

import asyncio
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request

from avatarchat.avatar.media_avatar import painter_for
from avatarchat.backends.base import create_backend
from avatarchat.client.avatar_client import AvatarClient
from avatarchat.config import parse_config
from avatarchat.messages import VideoFrame
from avatarchat.ports import LocalPorts
from avatarchat.webrtc.service import SessionService, session_deps
from load_tests.random_models import liteavatar as random_liteavatar
from signaling import routes

pytestmark = pytest.mark.timeout(180)

LOOPBACK = ["127.0.0.1"]


@pytest.fixture(scope="module")
def liteavatar_dir(tmp_path_factory):
    return random_liteavatar.build(tmp_path_factory.mktemp("liteavatar"), "tiny")


@pytest.fixture(scope="module")
def musetalk_dirs(tmp_path_factory):
    """(model directory, prepared avatar) as tests/production/test_musetalk.py makes them."""
    from avatarchat.avatar import musetalk_prepare
    from load_tests.random_models import musetalk as random_musetalk
    from tests.production.test_musetalk import FACE_BOX, write_video

    model_dir = random_musetalk.build(tmp_path_factory.mktemp("musetalk") / "tiny", "tiny")
    root = tmp_path_factory.mktemp("musetalk_avatar")
    box = ",".join(str(v) for v in FACE_BOX)
    assert musetalk_prepare.main(["--video", str(write_video(root / "base.mp4")), "--out", str(root / "prepared"),
                                  "--model-dir", str(model_dir), "--box", box, "--device", "cpu"]) == 0
    return model_dir, root / "prepared"


@pytest.fixture(params=["liteavatar", "musetalk"])
def drawing_avatar(request) -> dict:
    if request.param == "liteavatar":
        return {"backend": "liteavatar", "model_dir": str(request.getfixturevalue("liteavatar_dir")),
                "threads": 1, "workers": 1}
    model_dir, avatar = request.getfixturevalue("musetalk_dirs")
    return {"backend": "musetalk", "model_dir": str(model_dir), "avatar": str(avatar), "cpu_threads": 1}


def make_app(avatar: dict):
    cfg = parse_config({
        "stages": {"asr": {"backend": "scripted"}, "llm": {"backend": "scripted"},
                   "tts": {"backend": "scripted"}, "avatar": avatar, "vad": {"backend": "silero"}},
        "sessions": {"host_addresses": LOOPBACK, "max_sessions": 2}})
    backends = {s: create_backend(cfg.stage(s)) for s in ("asr", "llm", "tts", "avatar")}
    service = SessionService(cfg.sessions, session_deps(cfg, LocalPorts(**backends), create_backend(cfg.stage("vad")),
                                                        painter_for(backends["avatar"])))
    app = FastAPI()

    @app.post("/v1/sessions")
    async def create(request: Request):
        return await routes.create_session(service, request)

    @app.delete("/v1/sessions/{sid}")
    async def delete(sid: str):
        return await routes.delete_session(service, sid)

    return app, service, backends["avatar"]


async def test_drawn_frames_reach_a_webrtc_client_and_stop_on_interruption(drawing_avatar):
    app, service, avatar = make_app(drawing_avatar)
    width, height = avatar.frame_size()
    client = AvatarClient("http://test", host_addresses=LOOPBACK, http_transport=httpx.ASGITransport(app))
    await client.connect()
    session = service.registry.get(client.session_id)
    painted = []  # (media time, whether the avatar drew it) as the video track paints
    paint = session.video_out.painter.paint

    def painting(frame, t):
        painted.append((t, isinstance(frame, VideoFrame)))
        return paint(frame, t)

    session.video_out.painter = SimpleNamespace(paint=painting)
    try:
        client.send_text("What is your name?")
        await client.wait_for_event(lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 120)
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 60,
                                    start=len(client.received.events) - 2)
        assert client.received.frame_size == (width, height)
        drawn = sum(1 for _, d in painted if d)
        assert drawn >= 10, painted[-20:]  # the reply was shown in the avatar's own frames

        # A second question, cut while the avatar speaks: its drawn frames stop at once.
        client.send_text("Tell me a story.")
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "speaking"}, 120,
                                    start=len(client.received.events))
        await asyncio.sleep(0.3)
        client.interrupt()
        mark = len(client.received.events)
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 10, start=mark)
        cut = session.playout.clock.now()
        await asyncio.sleep(0.5)
        after = [d for t, d in painted if t > cut + 1 / 25]
        assert after and not any(after), "drawn frames after the interruption"
    finally:
        await client.close()
        await service.close_all()
        avatar.close()
    # the idle loop (background, neutral mouth) was shown before and after
    assert any(not d for _, d in painted)
    assert np.isfinite(client.received.fps())
