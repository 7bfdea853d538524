"""The edge_tts backend, running the real edge-tts SDK against a local stand-in of Microsoft's
websocket service (tests/standins/edge_tts_service.py): what the SDK sends, the streamed MP3 decoded
as it arrives, early close, and each failure as one RemoteServiceError kind with the right retries.
Nothing here reaches Microsoft; what only the real service can show is listed in docs/backends.md."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import numpy as np
import pytest
from pydantic import ValidationError

from avatarchat.backends.base import create_backend
from avatarchat.config import parse_stage
from avatarchat.errors import ConfigError, StageLoadError
from avatarchat.remote import RemoteServiceError
from tests.standins.edge_tts_service import EdgeTTSStandIn

pytestmark = pytest.mark.timeout(30)

TEXT = "Hello there, this is a short test of the voice."
FAST_RETRY = {"attempts": 3, "backoff_s": 0.01, "timeout_s": 2.0}


@pytest.fixture
def standin():
    with EdgeTTSStandIn() as server:
        yield server


@pytest.fixture
def make(standin, monkeypatch):
    from edge_tts.drm import DRM

    # A 403 makes the SDK correct its process-wide clock skew from the server's Date: undo it.
    monkeypatch.setattr(DRM, "clock_skew_seconds", 0.0)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "WS_PROXY", "WSS_PROXY", "ALL_PROXY"):  # the SDK trusts
        monkeypatch.delenv(proxy, raising=False)  # them; the stand-in is on 127.0.0.1
        monkeypatch.delenv(proxy.lower(), raising=False)
    made = []

    def make_backend(**options):
        options.setdefault("url", standin.url)
        options.setdefault("retry", FAST_RETRY)
        backend = create_backend(parse_stage("test", "tts", {"backend": "edge_tts", **options}))
        made.append(backend)
        return backend

    yield make_backend
    for backend in made:
        backend.close()


async def collect(backend, text=TEXT, language=None):
    return [chunk async for chunk in backend.synthesize(text, language)]


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


async def test_request_and_audio(standin, make):
    backend = make(rate="+20%", pitch="+30Hz")
    chunks = await collect(backend)

    (sent,) = standin.requests
    assert sent["voice"] == "Microsoft Server Speech Text to Speech Voice (en-US, AriaNeural)"
    assert (sent["rate"], sent["pitch"], sent["volume"]) == ("+20%", "+30Hz", "+0%")
    assert sent["text"] == TEXT and TEXT in sent["ssml"]
    assert sent["speech_config_headers"]["Path"] == "speech.config"
    audio_config = sent["speech_config"]["context"]["synthesis"]["audio"]
    assert audio_config["outputFormat"] == "audio-24khz-48kbitrate-mono-mp3"
    assert sent["ssml_headers"]["Content-Type"] == "application/ssml+xml"
    assert {"TrustedClientToken", "ConnectionId", "Sec-MS-GEC", "Sec-MS-GEC-Version"} <= set(sent["query"])
    assert sent["headers"]["Origin"].startswith("chrome-extension://")
    assert sent["outcome"] == "ok" and not sent["closed_early"]

    assert len(chunks) > 3, "the audio came in one piece: it was not streamed"
    assert chunks[0].start == 0.0
    for before, after in zip(chunks, chunks[1:]):
        assert after.start == pytest.approx(before.end)
    samples = np.concatenate([c.samples for c in chunks])
    assert all(c.sample_rate == 24000 and c.samples.dtype == np.float32 for c in chunks)
    assert np.abs(samples).max() <= 1.0 and np.sqrt(np.mean(samples ** 2)) > 0.05
    # Rate +20 % shortened the stand-in's audio; MP3 adds ~0.05-0.1 s of codec delay and padding.
    assert sent["audio_seconds"] == pytest.approx(0.06 * len(TEXT) / 1.2, abs=0.01)
    assert chunks[-1].end == pytest.approx(sent["audio_seconds"], abs=0.15)
    assert dominant_hz(samples, 24000) == pytest.approx(440 + 30, abs=5)  # pitch +30Hz reached it


async def test_first_audio_before_the_service_finished_sending(standin, make):
    backend = make()
    first_at = None
    async for _ in backend.synthesize(TEXT * 2):
        first_at = first_at or time.monotonic()
    finished = standin.requests[0]["finished_sending_at"]
    assert first_at < finished - 0.3, "the first chunk waited for the whole MP3"


@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_stopping_early_closes_the_websocket(standin, make, how):
    backend = make()
    stream = backend.synthesize(TEXT * 3)
    if how == "aclose":
        await anext(stream)
        stopped = time.monotonic()
        await stream.aclose()
    else:
        got_one = asyncio.Event()

        async def consume():
            async for _ in stream:
                got_one.set()

        task = asyncio.create_task(consume())
        await got_one.wait()
        stopped = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert time.monotonic() - stopped < 1.5
    seen = await asyncio.to_thread(standin.wait_closed, 0, 2.0)
    assert seen is not None and seen["closed_early"]
    assert seen["closed_at"] - stopped < 1.0
    assert seen["audio_bytes_sent"] < seen["mp3_bytes"]
    assert "turn_end_sent_at" not in seen


async def test_unauthorised_is_not_retried(standin, make):
    standin.mode = "unauthorised"
    backend = make(retry={"attempts": 3, "backoff_s": 0.01})
    with pytest.raises(RemoteServiceError) as caught:
        await collect(backend)
    assert caught.value.kind == "unauthorised"
    # Two handshakes: the SDK's own second try after its clock correction; none from the policy.
    assert [r["outcome"] for r in standin.requests] == ["refused 403", "refused 403"]


async def test_transient_failures_are_retried_then_succeed(standin, make):
    standin.mode = "fail_times:2"
    chunks = await collect(make())
    assert [r["outcome"] for r in standin.requests] == ["refused 503", "refused 503", "ok"]
    assert chunks and chunks[0].start == 0.0


async def test_rate_limited_is_retried_up_to_the_policy(standin, make):
    standin.mode = "rate_limited"
    with pytest.raises(RemoteServiceError) as caught:
        await collect(make())
    assert caught.value.kind == "rate_limited"
    assert len(standin.requests) == 3


async def test_stall_times_out(standin, make, caplog):
    caplog.set_level(logging.DEBUG)
    standin.mode = "stall"
    backend = make(retry={"attempts": 2, "backoff_s": 0.01, "timeout_s": 0.5})
    started = time.monotonic()
    with pytest.raises(RemoteServiceError) as caught:
        await collect(backend)
    elapsed = time.monotonic() - started
    assert caught.value.kind == "timeout"
    assert 0.9 < elapsed < 2.5
    assert len(standin.requests) == 2
    for index in range(2):  # each stalled connection was closed by the client, not left open
        assert await asyncio.to_thread(standin.wait_closed, index, 1.0) is not None
    assert any("try 2 of 2" in r.getMessage() for r in caplog.records)  # the logs are captured
    # The reply's text is the user's business: never above DEBUG in the logs.
    assert not [r for r in caplog.records if TEXT in r.getMessage() and r.levelno > logging.DEBUG]


@pytest.mark.parametrize("mode", ["disconnect", "close_early"])
async def test_cut_stream_fails_without_retry(standin, make, mode):
    standin.mode = mode
    backend = make()
    chunks = []
    with pytest.raises(RemoteServiceError) as caught:
        async for chunk in backend.synthesize(TEXT * 3):
            chunks.append(chunk)
    assert caught.value.kind == "server_error"
    assert chunks, "audio should have been yielded before the cut"
    assert len(standin.requests) == 1  # audio had reached the caller: a retry would repeat it


async def test_no_audio_is_a_bad_request(standin, make):
    standin.mode = "no_audio"
    with pytest.raises(RemoteServiceError) as caught:
        await collect(make())
    assert caught.value.kind == "bad_request"
    assert len(standin.requests) == 1


async def test_unreachable(make):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    backend = make(url=f"ws://127.0.0.1:{port}/edge/v1?TrustedClientToken=x",
                   retry={"attempts": 2, "backoff_s": 0.01})
    with pytest.raises(RemoteServiceError) as caught:
        await collect(backend)
    assert caught.value.kind == "unreachable"


async def test_a_stalled_session_does_not_block_another(standin, make):
    backend = make(retry={"attempts": 1, "timeout_s": 3.0})
    started = time.monotonic()
    stalled = asyncio.create_task(collect(backend, "This one [stall] waits."))
    await asyncio.sleep(0.1)
    chunks = await collect(backend, TEXT)
    assert chunks and time.monotonic() - started < 1.5
    assert not stalled.done()
    with pytest.raises(RemoteServiceError) as caught:
        await stalled
    assert caught.value.kind == "timeout"


async def test_voice_by_language(standin, make):
    backend = make(voices_by_language={"zh": "zh-CN-XiaoxiaoNeural", "JA": "ja-JP-NanamiNeural"})
    for language in ("zh", "zh-TW", "ja", "fr", None):
        await collect(backend, "Hi.", language)
    voices = [r["voice"].split("(")[1].rstrip(")") for r in standin.requests]
    assert voices == ["zh-CN, XiaoxiaoNeural", "zh-CN, XiaoxiaoNeural", "ja-JP, NanamiNeural",
                      "en-US, AriaNeural", "en-US, AriaNeural"]


async def test_one_url_per_process(standin, make):
    first = make()
    with EdgeTTSStandIn() as other:
        with pytest.raises(StageLoadError, match="one URL per process"):
            make(url=other.url)
        first.close()
        chunks = await collect(make(url=other.url))
        assert chunks and len(other.requests) == 1


def test_options_are_validated():
    from avatarchat.backends.tts.edge_tts import EdgeTTS

    with pytest.raises(ValidationError):
        EdgeTTS.Options(rate="fast")
    for bad in ({"rate": "10%"}, {"pitch": "+3%"}, {"voice": "Aria"}, {"url": "https://example.org/x"},
                {"voices_by_language": {"zh": "Xiaoxiao"}}, {"retry": {"attempts": 0}}):
        with pytest.raises(ConfigError):
            parse_stage("test", "tts", {"backend": "edge_tts", **bad})
    options = parse_stage("test", "tts", {"backend": "edge_tts", "rate": "-10%", "pitch": "+5Hz"}).options
    assert (options.rate, options.pitch, options.url) == ("-10%", "+5Hz", None)


async def test_standin_frames_as_the_sdk_parses(standin, make):
    """The SDK itself, word boundaries on: every frame the stand-in sends parses, nothing is lost."""
    import edge_tts

    make()  # points the SDK's module-global URL at the stand-in
    messages = [m async for m in edge_tts.Communicate(TEXT, boundary="WordBoundary").stream()]
    words = [m["text"] for m in messages if m["type"] == "WordBoundary"]
    audio = b"".join(m["data"] for m in messages if m["type"] == "audio")
    assert words == TEXT.split()
    assert len(audio) == standin.requests[0]["mp3_bytes"]
    assert standin.requests[0]["speech_config"]["context"]["synthesis"]["audio"]["metadataoptions"] == {
        "sentenceBoundaryEnabled": "false", "wordBoundaryEnabled": "true"}
