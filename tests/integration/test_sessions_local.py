"""WebRTC sessions in one process, without Ray: the session service on a FastAPI app, scripted
ASR/LLM/TTS, the real portrait avatar, and AvatarClient over loopback."""

import asyncio
import logging
import struct
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from aiortc import rtcsctptransport
from fastapi import FastAPI, Request

from avatarchat.avatar.media_avatar import painter_for
from avatarchat.avatar.pack import AvatarPack
from avatarchat.backends.base import create_backend
from avatarchat.config import parse_config
from avatarchat.ports import LocalPorts
from signaling import routes
from avatarchat.client.avatar_client import AvatarClient, SessionRefused
from avatarchat.webrtc.service import SessionService, session_deps
from avatarchat.webrtc.sessions import session_tag
from load_tests.measures.lipsync import AIORTC_AUDIO_HOLD_S, envelope_lag
from tests.helpers import mouth_change, sound_to_mouth_lag

pytestmark = pytest.mark.timeout(120)

LOOPBACK = ["127.0.0.1"]


def make_app(llm: dict | None = None, asr: dict | None = None, avatar: str | dict = "portrait", **sessions):
    """A FastAPI app serving sessions of this process, with scripted ASR/LLM/TTS and ``avatar`` (a
    backend name, or its whole stage config); the loaded backends are ``app.state.backends``."""
    cfg = parse_config({
        "stages": {"asr": {"backend": "scripted", **(asr or {})}, "llm": {"backend": "scripted", **(llm or {})},
                   "tts": {"backend": "scripted"},
                   "avatar": {"backend": avatar} if isinstance(avatar, str) else avatar,
                   "vad": {"backend": "silero"}},
        "sessions": {"host_addresses": LOOPBACK, "max_sessions": 2, **sessions}})
    backends = {s: create_backend(cfg.stage(s)) for s in ("asr", "llm", "tts", "avatar")}
    deps = session_deps(cfg, LocalPorts(**backends), create_backend(cfg.stage("vad")), painter_for(backends["avatar"]))
    service = SessionService(cfg.sessions, deps)
    app = FastAPI()
    app.state.backends = backends

    @app.post("/v1/sessions")
    async def create(request: Request):
        return await routes.create_session(service, request)

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
    # video flows at a real-time rate (a busy test machine slows it; load_tests/bench_sessions.py
    # measures the rate itself)
    assert 10 <= client.received.fps() <= 30
    # frame-to-frame change (the idle head sway alone moves the mouth crop ~0.4 a frame)
    assert mouth_change(client.received.mouth).mean() > 1.0
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


def send_raw(channel, pp_id: int, data: bytes, stream=None) -> None:
    """Send ``data`` as one SCTP message of payload protocol ``pp_id`` on ``channel``'s stream (or
    on ``stream``'s id), as no browser would: RTCDataChannel.send always encodes text as valid
    UTF-8, so this queues the bytes on the SCTP transport below it, as its
    ``_data_channel_send`` does."""
    transport = channel.transport
    if pp_id != rtcsctptransport.WEBRTC_DCEP:
        channel._addBufferedAmount(len(data))  # the flush takes it off again
    transport._data_channel_queue.append((stream or channel, pp_id, data))
    asyncio.ensure_future(transport._data_channel_flush())


def dcep_open(label: bytes) -> bytes:
    """A DATA_CHANNEL_OPEN control message (RFC 8832) for a reliable channel named ``label``."""
    return struct.pack("!BBHLHH", 0x03, 0, 0, 0, len(label), 0) + label


async def test_hostile_bytes_on_the_events_channel_are_answered_and_the_session_carries_on():
    """Each of these once ended the session without a word: json's RecursionError out of the
    message handler, aiortc 1.16's UnicodeDecodeError and asserts in its SCTP receive loop (which
    end the whole DTLS transport, media included; avatarchat/webrtc/sctp_guard.py)."""
    app, service = make_app()
    client = client_for(app)
    await client.connect()
    try:
        channel = client._channel
        client.send("[" * 60_000)  # under the 64 kB limit, far deeper than Python's stack
        nested = await client.wait_for_event(lambda e: e["type"] == "error", 10)
        assert nested == {"type": "error", "stage": "input", "reason": "message is nested too deeply"}
        mark = len(client.received.events)
        send_raw(channel, rtcsctptransport.WEBRTC_STRING, b'{"type": "text", "text": "caf\xe9"}')
        not_text = await client.wait_for_event(lambda e: e["type"] == "error", 10, start=mark)
        assert not_text == {"type": "error", "stage": "input", "reason": "message is not UTF-8 text"}
        # control messages no browser sends: a second OPEN for the events channel's own stream,
        # and an OPEN whose label is not UTF-8; both are dropped, no channel opens
        send_raw(channel, rtcsctptransport.WEBRTC_DCEP, dcep_open(b"events"))
        send_raw(channel, rtcsctptransport.WEBRTC_DCEP, dcep_open(b"\xff\xfe"), SimpleNamespace(id=100))
        await asyncio.sleep(0.5)
        mark = len(client.received.events)
        client.send_text("What is your name?")
        done = await client.wait_for_event(
            lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 30, start=mark)
        assert done["text"].startswith("Hello there.")
        assert not client.events_of("closed") and len(client.events_of("error")) == 2
        assert client.pc.connectionState == "connected" and len(service) == 1
    finally:
        await client.close()
    await service.close_all()


async def test_a_failure_of_ours_on_a_message_is_answered_and_the_session_carries_on(monkeypatch):
    """pyee re-raises a handler's exception inside aiortc's receive loop when nothing handles its
    "error" event, ending the transport: the session's handler must never raise."""
    from avatarchat.webrtc import session as session_module

    app, service = make_app()
    client = client_for(app)
    await client.connect()
    try:
        def broken(raw, max_text_chars):
            raise RuntimeError("a bug")

        with monkeypatch.context() as patch:
            patch.setattr(session_module, "parse_client_message", broken)
            client.interrupt()
            failed = await client.wait_for_event(lambda e: e["type"] == "error", 10)
        assert failed == {"type": "error", "stage": "input", "reason": "the server failed on this message"}
        client.send_text("What is your name?")
        done = await client.wait_for_event(
            lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 30)
        assert done["text"].startswith("Hello there.")
    finally:
        await client.close()
    await service.close_all()


async def test_logs_and_task_names_carry_a_session_tag_never_its_id(caplog):
    """The id is all DELETE needs, and Ray's log files are readable by every local user."""
    serve_log = logging.getLogger("ray.serve")
    serve_log.addHandler(caplog.handler)  # whether or not Ray stops it propagating to the root
    caplog.set_level(logging.DEBUG, logger="ray.serve")
    try:
        app, service = make_app()
        client = client_for(app)
        await client.connect()
        sid = client.session_id
        session = service.registry.get(sid)
        assert session.tag == session_tag(sid) and len(session.tag) == 10

        async def fails():
            raise RuntimeError("probe")

        session._spawn(fails(), "probe")  # a failed task is logged by its name
        client.send_text("What is your name?")
        await client.wait_for_event(lambda e: e["type"] == "transcript" and e["role"] == "avatar", 30)
        names = [t.get_name() for t in asyncio.all_tasks()]
        assert any(session.tag in name for name in names)
        assert not any(sid in name for name in names)
        session.closed = True  # as a failed peer connection does: the reaper ends it and says so
        await service.registry.reap()
        client.location = None
        await client.close()
        await service.close_all()
    finally:
        serve_log.removeHandler(caplog.handler)
    said = [(r.getMessage(), repr(r.args)) for r in caplog.records]
    assert any(f"session {session.tag} created" in m for m, _ in said)
    assert any(f"session {session.tag} ended" in m for m, _ in said)
    assert any(f"session-{session.tag}-probe" in m for m, _ in said)
    assert not [m for m, args in said if sid in m or sid in args]


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


async def leftovers(service, before: set, wait_s: float = 5.0) -> tuple[int, list[str]]:
    """(peer connections still in memory, tasks started since ``before`` still running), once
    both are gone or after ``wait_s``. The reaper is the service's own and stays."""
    keep = before | {asyncio.current_task(), service.registry._reaper}
    for _ in range(int(wait_s / 0.1)):
        pcs = service.live_peer_connections()
        tasks = sorted(t.get_coro().__qualname__ for t in asyncio.all_tasks() - keep)
        if pcs == 0 and not tasks:
            break
        await asyncio.sleep(0.1)
    return pcs, tasks


def when_closing_starts(session) -> asyncio.Event:
    """An event set as the session's peer connection starts to close."""
    started, close = asyncio.Event(), session.pc.close

    async def close_and_tell():
        started.set()
        await close()

    session.pc.close = close_and_tell
    return started


def slow_to_close(session, seconds: float) -> None:
    """The session's peer connection takes ``seconds`` more to close, once its close has begun."""
    transceiver = session.pc.getTransceivers()[0]
    stop = transceiver.stop

    async def slow_stop():
        await asyncio.sleep(seconds)
        await stop()

    transceiver.stop = slow_stop


async def test_a_hang_up_cut_short_still_closes_the_peer_connection():
    """Serve cancels a request whose HTTP client gave up: a DELETE cancelled while the session
    closes must not leave its peer connection half closed (aiortc's close() cut short is never
    finished: its RTCP tasks run for good and hold the connection, as the overloaded soak saw)."""
    app, service = make_app()
    before = asyncio.all_tasks()
    client = client_for(app)
    await client.connect()
    closing = when_closing_starts(service.registry.get(client.session_id))
    hang_up = asyncio.ensure_future(routes.delete_session(service, client.session_id))
    await closing.wait()
    hang_up.cancel()  # the client gave up waiting for the DELETE
    await asyncio.gather(hang_up, return_exceptions=True)
    del hang_up  # its CancelledError's frames hold the session
    assert len(service) == 0
    client.location = None  # already ended: hang up without a DELETE
    await client.close()
    assert await leftovers(service, before) == (0, [])


async def test_a_peer_connection_slow_to_close_is_waited_for_a_while_and_still_closed(monkeypatch):
    """The reaper waits for a peer connection's close only so long; past that, the close must go
    on, not be cut short."""
    from avatarchat.webrtc import session as session_module

    monkeypatch.setattr(session_module, "PC_CLOSE_WAIT_S", 0.2)
    app, service = make_app()
    before = asyncio.all_tasks()
    client = client_for(app)
    await client.connect()
    slow_to_close(service.registry.get(client.session_id), 0.5)
    assert await service.end(client.session_id, "hung up")  # back after PC_CLOSE_WAIT_S
    client.location = None
    await client.close()
    assert await leftovers(service, before) == (0, [])


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


async def test_a_flood_of_messages_is_refused_past_the_limit_and_the_session_carries_on():
    app, service = make_app(max_messages_per_s=2.0, message_burst=5)
    client = client_for(app)
    await client.connect()
    try:
        for _ in range(25):
            client.interrupt()
        await client.wait_for_event(lambda e: e["type"] == "error" and "too many messages" in e["reason"], 10)
        await asyncio.sleep(0.5)
        refused = [e for e in client.events_of("error") if "too many messages" in e["reason"]]
        assert 15 <= len(refused) <= 20, len(refused)  # 5 at once, then 2 a second
        await asyncio.sleep(1.0)  # the budget refills
        mark = len(client.received.events)
        client.send_text("What is your name?")
        done = await client.wait_for_event(
            lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 30, start=mark)
        assert done["text"].startswith("Hello there.")
    finally:
        await client.close()


STORY = " ".join(f"Sentence number {i} of a long story goes on here." for i in range(1, 9))


def rms_between(client, t0: float, t1: float) -> float:
    r = client.received
    pieces = [a for a, at in zip(r.audio, r.audio_times) if t0 < at <= t1]
    return float(np.sqrt(np.mean(np.concatenate(pieces) ** 2))) if pieces else 0.0


def longest_silence_s(audio: np.ndarray, rate: int = 48000) -> float:
    """The longest run of silent 20 ms windows between the first and last loud one."""
    n = rate // 50
    rms = np.sqrt(np.mean(audio[:len(audio) // n * n].reshape(-1, n) ** 2, axis=1))
    loud = np.flatnonzero(rms > 0.01)
    quiet = rms[loud[0]:loud[-1]] < 0.001 if len(loud) else np.zeros(0, bool)
    best = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        best = max(best, run)
    return best / 50


async def speak_when_talking(client, samples, rate, after_s: float = 1.0):
    """Wait until the avatar has been audible for ``after_s``, then say ``samples``; returns the
    clock time the saying began."""
    await client.wait_for_event(lambda e: e == {"type": "state", "state": "speaking"}, 30)
    await asyncio.sleep(after_s)
    t = asyncio.get_running_loop().time()
    client.say(samples, rate)
    return t


async def test_talking_over_the_avatar_stops_it_and_keeps_only_what_was_heard(beckett):
    samples, rate, _ = beckett
    question = samples[:int(1.6 * rate)]  # "Ever tried. Ever failed." (real speech, 1.6 s)
    app, service = make_app(llm={"reply": STORY}, asr={"text": "Stop please."})
    client = client_for(app)
    await client.connect()
    try:
        session = service.registry.get(client.session_id)
        client.send_text("Tell me a story.")
        await speak_when_talking(client, question, rate)
        stop = await client.wait_for_event(lambda e: e["type"] == "interruption", 10)
        assert stop["cause"] == "voice"
        assert 0 <= stop["speech_onset_to_silence"] < 0.2
        heard = stop["heard_text"]
        assert heard and STORY.startswith(heard) and len(heard) < len(STORY) / 2
        at = client.received.event_times[client.received.events.index(stop)]
        await asyncio.sleep(1.2)
        # no audio of the old reply after the stop: the user still talks for ~1.2 s, and the new
        # reply comes only after the end of their speech is decided
        assert rms_between(client, at - 1.0, at - 0.3) > 0.01
        assert rms_between(client, at + 0.15, at + 1.0) < 0.001
        # and no frame of it: the mouth moves while the reply plays, and rests (idle face) after
        r = client.received
        times = np.array(r.video_times[:len(r.mouth)])
        mouth = np.stack(r.mouth).astype(np.float32)
        talking = mouth_change(mouth[(times > at - 1.0) & (times < at - 0.3)]).mean()
        after = mouth_change(mouth[(times > at + 0.2) & (times < at + 1.0)]).mean()
        assert after < talking / 2, (after, talking)
        answer = await client.wait_for_event(
            lambda e: e["type"] == "transcript" and e["role"] == "user" and e["text"] == "Stop please.", 20)
        assert answer
        done = await client.wait_for_event(
            lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 60,
            start=client.received.events.index(stop))
        assert done["text"] == STORY
        assert [(m.role, m.content) for m in session.history[:2]] == [("user", "Tell me a story."),
                                                                      ("assistant", heard)]
        assert session.history[2].content == "Stop please."
        deltas_after_stop = [e for e, t in zip(client.received.events, client.received.event_times)
                             if t > at and e["type"] == "transcript" and e["role"] == "avatar"]
        assert "".join(e["text"] for e in deltas_after_stop if not e["final"]).strip() == STORY
    finally:
        await client.close()


async def test_a_short_sound_over_the_avatar_only_pauses_it(beckett):
    samples, rate, _ = beckett
    start = int(0.35 * rate)  # a 0.15 s slice of voice: shorter than min_speech_ms (300)
    blip = samples[start:start + int(0.15 * rate)]
    reply = "One two three four five six. Seven eight nine ten eleven twelve."
    app, service = make_app(llm={"reply": reply})
    client = client_for(app)
    await client.connect()
    try:
        session = service.registry.get(client.session_id)
        client.send_text("Count for me.")
        await speak_when_talking(client, blip, rate, after_s=0.8)
        done = await client.wait_for_event(
            lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 30)
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 30,
                                    start=client.received.events.index(done))
        assert not client.events_of("interruption")
        # it paused (the blip was heard as voice) and went on: one gap of ~0.3 s inside the reply
        assert 0.2 <= longest_silence_s(client.received.audio_samples()) <= 1.0
        assert done["text"] == reply
        assert [m.content for m in session.history] == ["Count for me.", reply]
        assert len(client.events_of("transcript", role="user")) == 1  # the blip was not a question
    finally:
        await client.close()


async def test_timings_carry_every_per_turn_measure():
    app, _ = make_app()
    client = client_for(app)
    await client.connect()
    try:
        client.send_text("What is your name?")
        timings = await client.wait_for_event(lambda e: e["type"] == "timings", 30)
        for key in ("llm_first_token", "tts_first_audio", "avatar_first_frame", "text_to_voice"):
            assert isinstance(timings[key], float) and timings[key] >= 0, (key, timings)
    finally:
        await client.close()


# -- render=browser: the face as numbers on the "motion" channel, no video -----------------------------


async def test_browser_render_sends_motion_in_step_with_the_sound_and_no_video():
    app, service = make_app()
    client = client_for(app, render="browser")
    await client.connect()
    try:
        assert client.render == "browser"
        await asyncio.sleep(1.0)  # idle faces first
        client.send_text("What is your name?")
        await client.wait_for_event(lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 30)
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 30)
        await asyncio.sleep(0.5)
        r = client.received
        assert r.video_times == []  # nothing encoded
        assert 10 <= r.fps() <= 30
        frames = [k for _, k, _ in r.motions]
        assert frames == sorted(frames)  # unordered channel, but loopback keeps order; no repeats
        mouth = np.array([m.mouth_open for _, _, m in r.motions])
        assert mouth.max() > 0.5 and mouth[:20].max() == 0.0  # speaks, and was closed while idle
        from load_tests.measures.lipsync import lip_sync

        lag, corr = lip_sync(r)
        assert corr > 0.5 and abs(lag) <= 0.08, (lag, corr)
        session = service.registry.get(client.session_id)
        assert session.frames_out.frames_sent > 40
        assert session.video_out.frames_sent == 0
    finally:
        assert await client.close() == 204
    await service.close_all()


async def test_a_render_mode_the_deployment_does_not_offer_is_refused_with_the_allowed_ones():
    app, service = make_app(render=["server"])
    for mode, status in (("browser", 400), ("pixels", 400)):
        client = client_for(app, render=mode)
        with pytest.raises(SessionRefused) as refused:
            await client.connect()
        assert refused.value.status == status and "sessions.render allows server" in refused.value.reason
    assert len(service) == 0
    ok = client_for(app)
    await ok.connect()
    assert ok.render == "server"
    await ok.close()
    await service.close_all()


async def test_an_emotion_tag_from_the_llm_shows_on_the_face_and_not_in_the_text():
    app, service = make_app(llm={"reply": "[happy] That is wonderful news! Well done."})
    client = client_for(app, render="browser")
    await client.connect()
    try:
        client.send_text("I passed my exam.")
        done = await client.wait_for_event(
            lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 30)
        assert done["text"] == "That is wonderful news! Well done."
        deltas = "".join(e["text"] for e in client.events_of("transcript", role="avatar", final=False))
        assert "[" not in deltas and "happy" not in deltas
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 30)
        await asyncio.sleep(4.5)  # the smile eases out once the reply is over (0.6 s time constant)
        smiles = [m.smile for _, _, m in client.received.motions]
        assert max(smiles) > 0.6
        assert smiles[-1] == 0.0
    finally:
        await client.close()
    await service.close_all()


async def test_the_avatar_for_the_browser_is_served_once_built():
    _, service = make_app()
    first = await routes.avatar_for_browser(service)
    pack = __import__("json").loads(first.body)
    assert first.media_type == "application/json" and pack["format"] == 1
    assert pack["motion_fields"][:2] == ["mouth_open", "mouth_width"] and len(pack["eyes"]) == 2
    assert pack["image"].startswith("data:image/png;base64,")
    assert (await routes.avatar_for_browser(service)).body is first.body  # built once per process


# -- an avatar that draws its own frames (avatarchat/backends/avatar/scripted_frames.py) -------------

async def test_frames_an_avatar_draws_arrive_in_sync_with_its_sound():
    """The frame-drawing path of the avatar contract end to end over WebRTC: the idle loop while
    silent, the avatar's own frames while it speaks, timed on the same media clock as the audio.
    The drawn box's brightness follows the sound, so its lag behind the sound is the A/V offset:
    within one frame as the session sends them (media time, what a browser lines up by RTP
    timestamps), and as this client receives them by arrival time (transport included)."""
    from avatarchat.backends.avatar.scripted_frames import MARK_BOX

    app, service = make_app(avatar="scripted_frames")
    client = AvatarClient("http://test", host_addresses=LOOPBACK, http_transport=httpx.ASGITransport(app),
                          mouth_box=MARK_BOX)
    await client.connect()
    session = service.registry.get(client.session_id)
    sent_audio, sent_video = [], []  # (media time, level) as the tracks take them
    x0, y0, x1, y1 = MARK_BOX
    paint, audio_frame = session.video_out.painter.paint, session.playout.audio_frame

    def painting(frame, t):
        image = paint(frame, t)
        sent_video.append((t, float(image[y0:y1, x0:x1].mean())))
        return image

    def sounding(t):
        samples = audio_frame(t)
        sent_audio.append((t, float(np.sqrt(np.mean(samples ** 2)))))
        return samples

    session.video_out.painter = SimpleNamespace(paint=painting)
    session.playout.audio_frame = sounding
    try:
        await asyncio.sleep(1.0)  # idle frames first: the box dark
        client.send_text("What is your name?")
        await client.wait_for_event(lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 30)
        await asyncio.sleep(1.0)
        assert client.received.frame_size == (320, 240)
        boxes = np.array([m.mean() for m in client.received.mouth])
        assert boxes[:10].max() < 60 and boxes.max() > 120, (boxes[:10], boxes.max())  # idle dark, speech bright

        at, level = np.array(sent_audio).T
        vt, box = np.array(sent_video).T
        lag, corr = envelope_lag(at, level, vt, box, step_s=0.005)
        assert corr > 0.5 and abs(lag) <= 0.04, (lag, corr)  # as sent: within one frame
        lag, corr = sound_to_mouth_lag(client.received, audio_hold_s=AIORTC_AUDIO_HOLD_S)
        # as received: the same, plus encoding, transport and decoding (the portrait's bound)
        assert corr > 0.5 and abs(lag) <= 0.08, (lag, corr)
    finally:
        await client.close()
        await service.close_all()


async def test_an_interruption_stops_a_drawing_avatar_and_the_idle_loop_returns():
    app, service = make_app(avatar="scripted_frames")
    drawer = app.state.backends["avatar"]
    client = client_for(app)
    await client.connect()
    try:
        client.send_text("Tell me a story.")
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "speaking"}, 20)
        session = service.registry.get(client.session_id)
        client.interrupt()
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 5,
                                    start=len(client.received.events) - 1)
        drawn = drawer.frames_drawn
        await asyncio.sleep(0.5)
        assert drawer.frames_drawn == drawn, "the avatar kept drawing after the interruption"
        assert not session.playout.speaking
        shown, speaking = session.playout.frame_at(session.playout.clock.now())
        assert not speaking and type(shown).__name__ == "FaceMotion"  # the painter shows the idle loop
    finally:
        await client.close()
        await service.close_all()


async def test_render_browser_is_refused_for_an_avatar_that_draws_its_own_frames():
    app, service = make_app(avatar="scripted_frames", render=["browser", "server"])
    assert service.render_modes == ("server",)
    client = AvatarClient("http://test", host_addresses=LOOPBACK, http_transport=httpx.ASGITransport(app),
                          render="browser")
    with pytest.raises(SessionRefused) as refused:
        await client.connect()
    assert refused.value.status == 400 and "draws its own frames" in str(refused.value)
    await service.close_all()
