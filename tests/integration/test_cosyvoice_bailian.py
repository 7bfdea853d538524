"""The cosyvoice_bailian TTS backend, running the real dashscope SDK against a local stand-in of
DashScope's websocket protocol (tests/standins/dashscope_tts.py): what the SDK sends, the audio that
comes back, streaming, cancellation, and each failure the service can answer with."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import numpy as np
import pytest

from avatarchat.backends.base import create_backend
from avatarchat.config import parse_stage
from avatarchat.errors import ConfigError, StageLoadError
from avatarchat.remote import RemoteServiceError
from tests.standins.dashscope_tts import DashScopeTTSStandIn

pytestmark = [pytest.mark.timeout(30)]

KEY = "sk-standin-0123456789abcdef"
TEXT = "Hello there, how are you today? I am fine, thanks."
LONG_TEXT = ("Well, that is a very good question, and I would love to tell you all about it, because "
             "the history of the place is long and full of surprising turns.")


@pytest.fixture(scope="module")
def standin():
    with DashScopeTTSStandIn(tone_hz=440.0, seconds_per_char=0.06, speed=4.0) as server:
        yield server


@pytest.fixture
def server(standin, monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    standin.mode = "ok"
    standin.reset()
    yield standin
    standin.mode = "ok"


def make(server, **options):
    retry = {"backoff_s": 0.0, "timeout_s": 2.0, **options.pop("retry", {})}
    raw = {"backend": "cosyvoice_bailian", "url": server.url, "retry": retry, **options}
    return create_backend(parse_stage("test", "tts", raw))


async def collect(tts, text, language=None):
    return [chunk async for chunk in tts.synthesize(text, language)]


def expected_tone(server, count, rate):
    """The stand-in's tone as the backend should hand it on: PCM16 scaled to [-1, 1)."""
    return np.frombuffer(server._tone(0, count, rate), dtype="<i2").astype(np.float32) / 32768.0


async def test_sends_model_voice_format_key_and_text(server):
    tts = make(server)
    chunks = await collect(tts, TEXT)
    assert chunks
    [request] = server.requests
    assert request["authorization"] == f"Bearer {KEY}"
    assert request["user_agent"].startswith("dashscope/")
    assert request["model"] == "cosyvoice-v2"
    params = request["parameters"]
    assert (params["voice"], params["format"], params["sample_rate"]) == ("longxiaochun_v2", "pcm", 24000)
    assert (params["volume"], params["rate"], params["pitch"]) == (50, 1.0, 1.0)
    # Streamed clause by clause, in order, nothing lost; then finish-task and task-finished.
    assert request["texts"] == ["Hello there, ", "how are you today? ", "I am fine, ", "thanks."]
    assert "".join(request["texts"]) == TEXT
    assert request["finish_task"] and request["task_finished"] and not request["cancelled"]


async def test_audio_is_the_services_pcm_as_float32(server):
    tts = make(server)
    chunks = await collect(tts, TEXT)
    assert all(c.sample_rate == 24000 and c.samples.dtype == np.float32 for c in chunks)
    # One timeline from 0.0, gapless; small frames coalesced to >= 0.1 s (the last may be shorter).
    assert chunks[0].start == 0.0
    assert all(abs(a.end - b.start) < 1e-9 for a, b in zip(chunks, chunks[1:]))
    assert all(c.duration >= 0.1 - 1e-9 for c in chunks[:-1])
    audio = np.concatenate([c.samples for c in chunks])
    assert abs(len(audio) / 24000 - 0.06 * len(TEXT)) < 0.01
    assert np.abs(audio).max() > 0.4  # not silence
    np.testing.assert_allclose(audio, expected_tone(server, len(audio), 24000), atol=1e-6)
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 24000 / len(audio) - 440.0) < 2.0


async def test_sample_rate_volume_rates_and_voice_by_language(server):
    tts = make(server, sample_rate=16000, volume=80, speech_rate=1.25, pitch_rate=0.9,
               voices_by_language={"en": "loongabby_v2"}, model="cosyvoice-v2")
    assert tts.sample_rate == 16000
    chunks = await collect(tts, "Good morning to you.", language="en-US")
    params = server.requests[0]["parameters"]
    assert (params["voice"], params["sample_rate"], params["format"]) == ("loongabby_v2", 16000, "pcm")
    assert (params["volume"], params["rate"], params["pitch"]) == (80, 1.25, 0.9)
    audio = np.concatenate([c.samples for c in chunks])
    assert {c.sample_rate for c in chunks} == {16000}
    np.testing.assert_allclose(audio, expected_tone(server, len(audio), 16000), atol=1e-6)
    await collect(tts, "Bonjour.", language="fr")
    assert server.requests[1]["parameters"]["voice"] == "longxiaochun_v2"  # no French voice: the default


async def test_streams_before_the_service_finishes_without_blocking_the_loop(server):
    tts = make(server)
    lag = 0.0

    async def ticker():
        nonlocal lag
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            lag = max(lag, time.monotonic() - t - 0.01)

    tick = asyncio.create_task(ticker())
    t0 = time.monotonic()
    first_at = None
    async for chunk in tts.synthesize(LONG_TEXT):
        if first_at is None:
            first_at = time.monotonic() - t0
            assert not server.requests[0]["task_finished"]  # the service is still speaking
    total = time.monotonic() - t0
    tick.cancel()
    audio_s = 0.06 * len(LONG_TEXT)
    assert first_at < 1.0 and total > audio_s / 4 * 0.8  # paced at 4x real time: streamed, not batched
    assert lag < 0.1, f"the event loop stalled {lag:.3f} s"


async def test_closing_early_cancels_the_task(server):
    tts = make(server)
    stream = tts.synthesize(LONG_TEXT)
    await anext(stream)
    closed = time.monotonic()
    await stream.aclose()
    assert time.monotonic() - closed < 0.1  # closing never waits on the service
    deadline = time.monotonic() + 1.0
    while server.requests[0]["closed_at"] is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    request = server.requests[0]
    assert request["closed_at"] is not None, "the connection is still open 1 s after the stream closed"
    assert request["cancelled"], "no finish-task with the cancel directive"
    assert request["audio_s"] < 0.06 * len(LONG_TEXT) / 2  # synthesis stopped early


async def test_missing_key_fails_at_load_naming_the_variable(server, monkeypatch):
    monkeypatch.delenv("DASHSCOPE_API_KEY")
    with pytest.raises(StageLoadError, match="DASHSCOPE_API_KEY"):
        make(server)
    with pytest.raises(StageLoadError, match="NOT_SET_ANYWHERE_XYZ"):
        make(server, api_key_env="NOT_SET_ANYWHERE_XYZ")
    with pytest.raises(ConfigError, match="api_key_env"):  # a key pasted where its variable's name goes
        make(server, api_key_env="sk-3f2a-9b1c")


async def test_key_from_the_named_variable_wins(server, monkeypatch):
    monkeypatch.setenv("BAILIAN_KEY_FOR_TESTS", "sk-from-named-variable")
    tts = make(server, api_key_env="BAILIAN_KEY_FOR_TESTS")
    await collect(tts, "Hi there.")
    assert server.requests[0]["authorization"] == "Bearer sk-from-named-variable"


async def test_unauthorised_is_not_retried(server):
    server.mode = "unauthorised"
    tts = make(server)
    t0 = time.monotonic()
    with pytest.raises(RemoteServiceError) as caught:
        await collect(tts, TEXT)
    assert caught.value.kind == "unauthorised" and "InvalidApiKey" in caught.value.detail
    assert "DASHSCOPE_API_KEY" in caught.value.reason
    assert time.monotonic() - t0 < 1.0  # the refused handshake is reported at once
    assert [r["refused"] for r in server.requests] == [401]


@pytest.mark.parametrize("mode, kind, code", [("quota", "quota", "Arrearage"),
                                              ("task_failed:Throttling.AllocationQuota", "quota", None),
                                              ("task_failed:InvalidParameter", "bad_request", None)])
async def test_permanent_failures_are_not_retried(server, mode, kind, code):
    server.mode = mode
    tts = make(server)
    with pytest.raises(RemoteServiceError) as caught:
        await collect(tts, TEXT)
    assert caught.value.kind == kind
    assert len(server.requests) == 1
    if code:
        assert server.requests[0]["failed"] == code


async def test_rate_limited_is_retried_then_reported(server):
    server.mode = "rate_limited"
    tts = make(server, retry={"attempts": 2})
    with pytest.raises(RemoteServiceError) as caught:
        await collect(tts, TEXT)
    assert caught.value.kind == "rate_limited"
    assert [r["failed"] for r in server.requests] == ["Throttling", "Throttling"]


async def test_transient_failures_then_success(server):
    server.mode = "fail_times:2"
    tts = make(server)
    chunks = await collect(tts, TEXT)
    assert abs(sum(c.duration for c in chunks) - 0.06 * len(TEXT)) < 0.01
    assert chunks[0].start == 0.0
    assert [r["failed"] for r in server.requests] == ["InternalError", "InternalError", None]
    assert server.requests[2]["task_finished"]


async def test_stall_is_a_timeout(server):
    server.mode = "stall"
    tts = make(server, retry={"attempts": 2, "timeout_s": 0.5})
    t0 = time.monotonic()
    with pytest.raises(RemoteServiceError) as caught:
        await collect(tts, TEXT)
    assert caught.value.kind == "timeout"
    assert time.monotonic() - t0 < 2.0
    await asyncio.sleep(0.3)
    requests = server.requests
    assert len(requests) == 2 and all(r["stalled"] for r in requests)
    assert all(r["closed_at"] is not None for r in requests)  # both connections were given up


async def test_unreachable_service(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    tts = make(server, url=f"ws://127.0.0.1:{port}/api-ws/v1/inference", retry={"attempts": 2})
    with pytest.raises(RemoteServiceError) as caught:
        await collect(tts, TEXT)
    assert caught.value.kind == "unreachable"


async def test_disconnect_after_audio_is_not_retried(server):
    server.mode = "disconnect"
    tts = make(server)
    received = []
    with pytest.raises(RemoteServiceError) as caught:
        async for chunk in tts.synthesize(LONG_TEXT):
            received.append(chunk)
    assert received, "the audio before the drop was not passed on"
    assert caught.value.kind == "server_error"
    assert len(server.requests) == 1 and server.requests[0]["dropped"]


async def test_a_stalled_session_does_not_hold_up_another(server):
    tts = make(server, retry={"attempts": 1, "timeout_s": 1.5})
    t0 = time.monotonic()
    finished_at = {}

    async def run(name, text):
        try:
            return await collect(tts, text)
        finally:
            finished_at[name] = time.monotonic() - t0

    stalled, ok = await asyncio.gather(run("stalled", "This one hangs. [stall] Forever."),
                                       run("ok", "All good here."), return_exceptions=True)
    assert isinstance(stalled, RemoteServiceError) and stalled.kind == "timeout"
    assert not isinstance(ok, BaseException) and ok
    assert finished_at["ok"] < 1.0 and finished_at["stalled"] > 1.4  # 0.84 s of audio at 4x; timeout 1.5 s
    by_text = {r["texts"][0]: r for r in server.requests}
    assert by_text["This one hangs. "]["stalled"] and by_text["All good here."]["task_finished"]


async def test_key_never_in_errors_or_logs(server, caplog):
    caplog.set_level(logging.DEBUG)
    errors = []
    for mode in ("ok", "unauthorised", "quota", "disconnect", "stall"):
        server.mode = mode
        tts = make(server, retry={"attempts": 1, "timeout_s": 0.5})
        try:
            await collect(tts, TEXT)
        except RemoteServiceError as err:
            errors.append(err)
    assert [e.kind for e in errors] == ["unauthorised", "quota", "server_error", "timeout"]
    for err in errors:
        assert KEY not in f"{err} {err.detail} {err.reason} {err!r}"
    assert KEY not in caplog.text
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not any("how are you today" in m for m in loud), "the sentence text was logged at INFO"
