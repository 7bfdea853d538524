"""Live WebRTC sessions against the real service (`serve run`, real models), driven by AvatarClient
over loopback (host candidate 127.0.0.1, no STUN: nothing leaves the machine). Shares the one
service start-up of tests/cluster/conftest.py (max_sessions 3 there)."""

import asyncio
import time

import httpx
import numpy as np
import pytest

from avatarchat.avatar.pack import AvatarPack
from load_tests.measures.lipsync import sounding
from avatarchat.client.avatar_client import AvatarClient, SessionRefused
from tests.conftest import BECKETT_TEXT
from tests.helpers import mouth_change, normalise_words, sound_to_mouth_lag

pytestmark = [pytest.mark.cluster, pytest.mark.models, pytest.mark.timeout(300)]

LOOPBACK = ["127.0.0.1"]
MOUTH_BOX = AvatarPack.load("astronaut").regions["mouth_box"]


def heard_share(reference: str, transcripts: list[str]) -> float:
    """The share of ``reference``'s words found in order in the transcripts, read one after another
    (the longest common subsequence: a phrase transcribed twice, by a cancelled turn and the turn
    that merged it, counts once)."""
    ref = normalise_words(reference)
    hyp = [w for t in transcripts for w in normalise_words(t)]
    row = [0] * (len(hyp) + 1)
    for r in ref:
        prev_diag, row[0] = 0, 0
        for j, h in enumerate(hyp, 1):
            prev_diag, row[j] = row[j], (prev_diag + 1 if r == h else max(row[j], row[j - 1]))
    return row[-1] / len(ref)


def is_reply_done(e):
    return e["type"] == "transcript" and e["role"] == "avatar" and e["final"]


def new_client(service, **kw) -> AvatarClient:
    return AvatarClient(service.url, host_addresses=LOOPBACK, mouth_box=MOUTH_BOX, **kw)


async def active_sessions(service) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{service.url}/v1/sessions")).json()["active_sessions"]


async def wait_sessions(service, n: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if await active_sessions(service) == n:
            return time.monotonic() - t0
        await asyncio.sleep(0.2)
    raise AssertionError(f"{await active_sessions(service)} sessions still active after {timeout_s} s")


async def test_a_spoken_question_is_answered_with_voice_and_a_moving_mouth(service, speech_assets):
    client = new_client(service)
    await client.connect()
    try:
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 10)
        spoken_s = client.say_wav(speech_assets / "beckett.wav")  # six phrases with ~0.7 s pauses
        done = await client.wait_for_event(is_reply_done, spoken_s + 90)
        events = client.received.events
        i_done = events.index(done)
        # Pauses end utterances. Speech resuming cancels a turn not yet speaking (the next turn then
        # answers the phrases together) or interrupts one already speaking (the next turn has only
        # the later phrases): which happens depends on how fast the reply starts. Either way every
        # phrase is heard, in order, and the answered turn ends with the recording's last words.
        users = [e["text"] for e in events[:i_done] if e["type"] == "transcript" and e["role"] == "user"]
        assert heard_share(BECKETT_TEXT, users) >= 0.75, users
        assert normalise_words(users[-1])[-2:] == ["fail", "better"], users
        speaking_at = [t for e, t in zip(events[:i_done], client.received.event_times)
                       if e == {"type": "state", "state": "speaking"}][-1]
        assert len(done["text"].split()) >= 2
        deltas = "".join(e["text"] for e in client.events_of("transcript", role="avatar", final=False))
        assert deltas.split() == done["text"].split() or deltas.strip()
        await client.wait_for_event(lambda e: e["type"] == "timings", 30)
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 30, start=i_done)
        await asyncio.sleep(0.5)
        r = client.received
        listening_at = next(t for e, t in zip(r.events[i_done:], r.event_times[i_done:])
                            if e == {"type": "state", "state": "listening"})
        audio = r.audio_samples()
        reply = audio[-int((done["audio_s"] + 3) * 48000):]
        assert np.sqrt(np.mean(reply ** 2)) > 0.01, "the reply must be audible"
        fps = r.fps()
        assert 10 <= fps <= 30, fps  # real-time video; the rate itself is bench_sessions.py's
        # The mouth moves while the avatar's voice is heard (frames from "speaking" to "listening"
        # with the reply's sound arriving: not the pauses between sentences, the silent tail or a
        # playout held by the user's voice, where it rests) and rests before.
        times = np.array(r.video_times[:len(r.mouth)])
        mouth = np.stack(r.mouth).astype(np.float32)
        in_reply = (times >= speaking_at) & (times <= listening_at)
        voiced = sounding(r, times[in_reply])
        voiced_pairs = voiced[1:] & voiced[:-1]  # consecutive frames, both while the voice is heard
        # Resting: before the avatar first spoke at all. A pause in the speech can start a turn
        # that speaks briefly before the resumed speech interrupts it, so frames just before the
        # answered turn's "speaking" may show a moving mouth.
        first_speaking = next(t for e, t in zip(r.events, r.event_times)
                              if e == {"type": "state", "state": "speaking"})
        resting = mouth[times < first_speaking - 1.0]
        # A two-word reply is ~15 frames; the resting face before it is seconds long.
        assert voiced_pairs.sum() > 10 and len(resting) > 25, (voiced_pairs.sum(), len(resting))
        # Frame-to-frame change, not the spread over each window: the head's idle sway moves the
        # mouth crop too, and over a longer resting window spread it as much as half the talking.
        talking_change = mouth_change(mouth[in_reply])[voiced_pairs].mean()
        resting_change = mouth_change(resting).mean()
        assert talking_change > 1.5, (talking_change, resting_change)
        assert talking_change > 3 * resting_change, (talking_change, resting_change)
        lag, corr = sound_to_mouth_lag(r)  # sound and mouth arrive together
        print(f"\nWEBRTC one session: connect {client.connect_s * 1000:.0f} ms, received video "
              f"{fps:.1f} fps over {len(r.video_times)} frames, reply {done['audio_s']} s, "
              f"mouth behind sound {lag * 1000:.0f} ms (correlation {corr:.2f}), mouth change "
              f"{talking_change:.2f} talking, {resting_change:.2f} resting")
        assert corr > 0.3 and abs(lag) <= 0.12, (lag, corr)
    finally:
        assert await client.close() == 204
    await wait_sessions(service, 0, 5)


async def test_two_sessions_at_once_hear_only_their_own_replies(service):
    a, b = new_client(service), new_client(service)
    await asyncio.gather(a.connect(), b.connect())
    try:
        questions = {a: "What is the capital of France?", b: "What colour is grass?"}
        for client, text in questions.items():
            client.send_text(text)
        dones = await asyncio.gather(*(c.wait_for_event(is_reply_done, 120) for c in (a, b)))
        for client, done in zip((a, b), dones):
            users = client.events_of("transcript", role="user")
            assert [u["text"] for u in users] == [questions[client]]
            assert len(client.events_of("transcript", role="avatar", final=True)) == 1
            deltas = "".join(e["text"] for e in client.events_of("transcript", role="avatar", final=False))
            assert " ".join(deltas.split()) == " ".join(done["text"].split())
        for client in (a, b):
            await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 30,
                                        start=client.received.events.index(
                                            client.events_of("transcript", role="avatar", final=True)[0]))
        for client in (a, b):
            audio = client.received.audio_samples()
            assert np.sqrt(np.mean(audio[-int(4 * 48000):] ** 2)) > 0.005 or \
                np.abs(audio).max() > 0.1
            print(f"\nWEBRTC two sessions: connect {client.connect_s * 1000:.0f} ms, "
                  f"video {client.received.fps():.1f} fps")
            # 25 fps on an idle 2-core box; the sender lives in the Gateway replica (nice 15) and
            # shares the cores with both turns' LLM, so only a floor is asserted here.
            assert client.received.fps() >= 15
    finally:
        await asyncio.gather(a.close(), b.close())
    await wait_sessions(service, 0, 5)


@pytest.mark.parametrize("body,ctype,status", [
    (b"this is not SDP", "application/sdp", 400),
    (b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
     "application/sdp", 400),
    (b"v=0\r\n", "application/json", 415),
    (b"v=0\r\n" + b"a=x\r\n" * 10_000, "application/sdp", 413),
])
async def test_bad_offers_get_a_json_reason_while_a_session_carries_on(service, body, ctype, status):
    existing = new_client(service)
    await existing.connect()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{service.url}/v1/sessions", content=body, headers={"content-type": ctype})
            assert r.status_code == status and r.json()["error"], r.text
            r = await http.delete(f"{service.url}/v1/sessions/no-such-session")
            assert r.status_code == 404 and r.json()["error"]
        existing.send_text("Hello!")
        await existing.wait_for_event(is_reply_done, 90)
    finally:
        await existing.close()
    await wait_sessions(service, 0, 5)


async def test_one_more_session_than_the_limit_gets_503_and_retry_after(service):
    clients = [new_client(service) for _ in range(3)]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        assert await active_sessions(service) == 3
        with pytest.raises(SessionRefused) as refused:
            await new_client(service).connect()
        assert refused.value.status == 503 and refused.value.retry_after and refused.value.reason
        clients[0].send_text("Hello!")
        await clients[0].wait_for_event(is_reply_done, 90)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    await wait_sessions(service, 0, 5)


async def test_a_client_that_vanishes_mid_reply_is_reaped_within_10_s(service):
    client = new_client(service)
    await client.connect()
    client.send_text("Tell me a long story about a dragon and a knight.")
    await client.wait_for_event(lambda e: e == {"type": "state", "state": "speaking"}, 90)
    await client.vanish()  # no DELETE, no goodbye: its sockets just close
    took = await wait_sessions(service, 0, 10)
    print(f"\nWEBRTC vanished client reaped after {took:.1f} s")
    async with httpx.AsyncClient() as http:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stages = (await http.get(f"{service.url}/v1/stages")).json()
            if all(s["active"] == 0 for s in stages.values()):
                break
            await asyncio.sleep(0.2)
        assert all(s["active"] == 0 for s in stages.values()), stages


async def test_the_session_server_also_runs_as_a_plain_process_beside_ray(service):
    """signaling/standalone.py: the measured alternative placement (docs/architecture.md), on the
    same cluster, calling the same stage deployments by handle."""
    url = await asyncio.to_thread(service.start_side_sessions)
    client = AvatarClient(url, host_addresses=LOOPBACK)
    await client.connect()
    try:
        client.send_text("What is your name?")
        done = await client.wait_for_event(is_reply_done, 90)
        assert len(done["text"].split()) >= 2
    finally:
        assert await client.close() == 204


async def test_turn_measures_reach_prometheus_through_ray_metrics(service):
    client = new_client(service)
    await client.connect()
    try:
        client.send_text("What is your name?")
        timings = await client.wait_for_event(lambda e: e["type"] == "timings", 90)
        for key in ("llm_first_token", "tts_first_audio", "avatar_first_frame", "text_to_voice"):
            assert timings[key] >= 0, (key, timings)
    finally:
        await client.close()
    # Ray's metrics agent exports every few seconds
    text, deadline = "", time.monotonic() + 60
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            text = (await http.get(f"http://127.0.0.1:{service.metrics_port}/metrics")).text
            if 'avatar_chat_turn_seconds_bucket' in text and 'measure="text_to_voice"' in text:
                break
            await asyncio.sleep(2)
    assert 'avatar_chat_turn_seconds_bucket' in text and 'measure="llm_first_token"' in text, text[-2000:]
    assert "avatar_chat_active_sessions" in text


async def test_talking_over_the_avatar_stops_it_and_the_new_question_is_answered(service, beckett):
    samples, rate, _ = beckett
    question = samples[:int(1.6 * rate)]  # "Ever tried. Ever failed."
    client = new_client(service)
    await client.connect()
    try:
        client.send_text("Tell me a long story about a dragon and a knight.")
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "speaking"}, 90)
        await asyncio.sleep(1.0)
        client.say(question, rate)
        stop = await client.wait_for_event(lambda e: e["type"] == "interruption", 30)
        assert stop["cause"] == "voice" and stop["speech_onset_to_silence"] < 0.5
        at = client.received.event_times[client.received.events.index(stop)]
        # the new question (Whisper may hear "Ever tried. Ever failed." in several ways)
        user = await client.wait_for_event(
            lambda e: e["type"] == "transcript" and e["role"] == "user" and e["text"].strip(), 60,
            start=client.received.events.index(stop))
        done = await client.wait_for_event(is_reply_done, 90, start=client.received.events.index(user))
        assert len(done["text"].split()) >= 2
        # the old reply went quiet: nothing audible from just after the stop until the new reply
        r = client.received
        quiet = [a for a, t in zip(r.audio, r.audio_times) if at + 0.2 < t < at + 1.0]
        assert quiet and float(np.sqrt(np.mean(np.concatenate(quiet) ** 2))) < 0.003
        # and its text stopped: no avatar text between the stop and the new user transcript
        between = r.events[r.events.index(stop) + 1:r.events.index(user)]
        assert not [e for e in between if e["type"] == "transcript" and e["role"] == "avatar"]
    finally:
        await client.close()
