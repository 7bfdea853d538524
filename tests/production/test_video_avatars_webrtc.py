"""Frame-drawing avatars over real WebRTC: a session in this process (the session service on a
FastAPI app, scripted ASR/LLM/TTS) with the LiteAvatar or MuseTalk backend on a random-weight model, and
AvatarClient over loopback. The client receives the avatar's own frames at their size; the reply
is shown in frames the avatar drew, the silence in its idle loop; an interruption stops the drawn
frames at once and the idle loop returns. (Sync on the media clock is the contract's,
measured in tests/integration/test_sessions_local.py with a drawing avatar whose pixels follow the
sound: a random-weight face follows nothing.)"""

import asyncio
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from avatarchat.client.avatar_client import AvatarClient
from avatarchat.messages import VideoFrame
from load_tests.random_models import liteavatar as random_liteavatar
from tests.integration.test_sessions_local import LOOPBACK, make_app

pytestmark = pytest.mark.timeout(180)


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


async def test_drawn_frames_reach_a_webrtc_client_and_stop_on_interruption(drawing_avatar):
    app, service = make_app(avatar=drawing_avatar)
    avatar = app.state.backends["avatar"]
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
