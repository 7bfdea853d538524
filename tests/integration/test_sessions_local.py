"""WebRTC sessions in one process, without Ray: the session service on a FastAPI app, scripted
ASR/LLM/TTS, the real portrait avatar, and AvatarClient over loopback."""

import asyncio

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request

from avatarchat.avatar.pack import AvatarPack
from avatarchat.avatar.renderer import PortraitRenderer
from avatarchat.backends.base import create_backend
from avatarchat.config import parse_config
from avatarchat.ports import LocalPorts
from deployments.gateway import read_body
from signaling import routes
from signaling.client import AvatarClient, SessionRefused
from signaling.service import SessionService
from signaling.session import SessionDeps
from tests.helpers import sound_to_mouth_lag

pytestmark = pytest.mark.timeout(120)

LOOPBACK = ["127.0.0.1"]


def make_app(**sessions):
    cfg = parse_config({
        "stages": {"asr": {"backend": "scripted"}, "llm": {"backend": "scripted"},
                   "tts": {"backend": "scripted"}, "avatar": {"backend": "portrait"},
                   "vad": {"backend": "silero"}},
        "sessions": {"host_addresses": LOOPBACK, "max_sessions": 2, **sessions}})
    backends = {s: create_backend(cfg.stage(s)) for s in ("asr", "llm", "tts", "avatar")}
    deps = SessionDeps(ports=LocalPorts(**backends), vad=create_backend(cfg.stage("vad")),
                       renderer=PortraitRenderer(AvatarPack.load("astronaut")), fps=25,
                       limits=cfg.limits, pacing=cfg.pacing)
    service = SessionService(cfg.sessions, deps)
    app = FastAPI()

    @app.post("/v1/sessions")
    async def create(request: Request):
        return await routes.create_session(service, request, read_body)

    @app.delete("/v1/sessions/{sid}")
    async def delete(sid: str):
        return await routes.delete_session(service, sid)

    return app, service


def client_for(app, **kw):
    return AvatarClient("http://test", host_addresses=LOOPBACK, http_transport=httpx.ASGITransport(app),
                        mouth_box=AvatarPack.load("astronaut").regions["mouth_box"], **kw)


async def test_a_typed_question_is_answered_with_audio_and_moving_mouth():
    app, service = make_app()
    client = client_for(app)
    await client.connect()
    assert client.connect_s < 5
    client.send_text("What is your name?")
    done = await client.wait_for_event(
        lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 30)
    assert done["text"].startswith("Hello there.")
    await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 30,
                                start=client.received.events.index(done))
    user = client.events_of("transcript", role="user")
    assert user and user[0]["text"] == "What is your name?"
    assert client.events_of("timings")
    audio = client.received.audio_samples()
    assert np.sqrt(np.mean(audio ** 2)) > 0.01
    assert client.received.fps() == pytest.approx(25, abs=4)
    mouth = np.stack(client.received.mouth).astype(np.float32)
    assert mouth.std(axis=0).mean() > 2.0
    assert len(service) == 1
    assert await client.close() == 204
    assert len(service) == 0


async def test_interrupt_and_bad_messages_keep_the_session():
    app, service = make_app()
    client = client_for(app)
    await client.connect()
    client.send("{not json")
    client.send({"type": "dance"})
    errors = await client.wait_for_event(lambda e: e["type"] == "error", 10)
    assert "JSON" in errors["reason"]
    client.send_text("Tell me a story.")
    await client.wait_for_event(lambda e: e == {"type": "state", "state": "speaking"}, 20)
    client.interrupt()
    n = len(client.received.events)
    await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 5, start=n)
    await asyncio.sleep(0.5)
    session = service.registry.get(client.session_id)
    assert not session.playout.speaking and session.active_tasks == 1  # only the mic listener
    assert not client.events_of("transcript", role="avatar", final=True)
    client.send_text("Again?")
    await client.wait_for_event(lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 30)
    # only finished turns join the history; the interrupted one does not
    assert [(m.role, m.content[:6]) for m in session.history] == [("user", "Again?"), ("assistant", "Hello ")]
    await client.close()


async def test_full_server_refuses_with_503_and_a_vanished_client_is_reaped():
    app, service = make_app(max_sessions=1, media_timeout_s=2.0)
    first = client_for(app)
    await first.connect()
    second = client_for(app)
    with pytest.raises(SessionRefused) as refused:
        await second.connect()
    assert refused.value.status == 503 and refused.value.retry_after == "5"
    session = service.registry.get(first.session_id)
    first.send_text("Tell me a story.")
    await first.wait_for_event(lambda e: e == {"type": "state", "state": "speaking"}, 20)
    await first.vanish()
    for _ in range(50):
        if len(service) == 0:
            break
        await asyncio.sleep(0.2)
    assert len(service) == 0
    # nothing stays behind: no tasks, no turn, tracks ended, peer connection closed
    assert session.closed and session.active_tasks == 0 and not session.playout.speaking
    assert session.audio_out.readyState == "ended" and session.video_out.readyState == "ended"
    assert session.pc.connectionState == "closed"
    await service.close_all()


async def test_sound_and_mouth_arrive_together():
    app, service = make_app()
    client = client_for(app)
    await client.connect()
    await asyncio.sleep(1.0)  # idle frames first: the mouth at rest
    client.send_text("What is your name?")
    await client.wait_for_event(lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 30)
    await asyncio.sleep(1.0)
    lag, corr = sound_to_mouth_lag(client.received)
    assert corr > 0.5 and abs(lag) <= 0.08, (lag, corr)
    await client.close()
    await service.close_all()
