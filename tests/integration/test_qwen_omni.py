"""The qwen_omni speech-to-speech backend against local stand-ins of both its APIs: the real openai
SDK against tests/standins/openai_omni.py (chat completions, SSE) and the real dashscope SDK against
tests/standins/omni_realtime.py (realtime websocket). Nothing reaches Alibaba's servers."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import numpy as np
import pytest

from avatarchat.backends.base import create_backend
from avatarchat.backends.llm.base import DEFAULT_SYSTEM_PROMPT
from avatarchat.backends.speech_to_speech.qwen_omni import QwenOmni
from avatarchat.config import parse_stage
from avatarchat.errors import StageLoadError
from avatarchat.messages import AudioChunk, ChatMessage, SpeechRequest, TextDelta, Transcript
from avatarchat.remote import RemoteServiceError
from tests.standins.omni_realtime import OmniRealtimeStandin
from tests.standins.openai_omni import OpenAIOmniStandin
from tests.standins.server import speech_samples

KEY = "sk-test-6f1c0a9e2b7d4f3e"
REPLY = "Hello from the stand-in."
HISTORY = (ChatMessage("user", "My name is Ada."), ChatMessage("assistant", "Nice to meet you, Ada."))
FAST_RETRY = {"attempts": 3, "backoff_s": 0.01, "timeout_s": 2.0}

pytestmark = pytest.mark.timeout(30)


def make(**options) -> QwenOmni:
    return create_backend(parse_stage("test", "speech_to_speech", {"backend": "qwen_omni", **options}))


def expected_audio(text: str) -> int:
    words = text.split(" ")
    return sum(speech_samples(w if i == len(words) - 1 else w + " ", 24000) for i, w in enumerate(words))


def user_speech(seconds: float = 1.2, rate: int = 48000) -> AudioChunk:
    t = np.arange(int(seconds * rate)) / rate
    return AudioChunk((0.4 * np.sin(2 * math.pi * 220 * t)).astype(np.float32), rate)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)


@pytest.fixture(params=["chat", "realtime"])
def service(request):
    """(standin, backend options) of one API."""
    if request.param == "chat":
        standin = OpenAIOmniStandin(key=KEY, reply=REPLY)
        with standin:
            yield standin, {"api": "chat", "base_url": standin.url, "retry": FAST_RETRY}
    else:
        # Typed text goes to the chat API even with api: realtime: standin.chat answers it.
        with OmniRealtimeStandin(key=KEY, reply=REPLY) as standin, \
                OpenAIOmniStandin(key=KEY, reply=REPLY) as standin.chat:
            yield standin, {"api": "realtime", "realtime_url": standin.url, "base_url": standin.chat.url,
                            "retry": FAST_RETRY}


async def collect(backend, request) -> tuple[list, float | None]:
    items, first_audio = [], None
    async for item in backend.converse(request):
        if isinstance(item, AudioChunk) and first_audio is None:
            first_audio = time.monotonic()
        items.append(item)
    return items, first_audio


async def wait_until(check, within: float = 1.5) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


async def test_speech_turn(service, caplog):
    caplog.set_level(logging.DEBUG)
    standin, options = service
    backend = make(**options)
    speech = user_speech()
    items, first_audio = await collect(backend, SpeechRequest(history=HISTORY, audio=speech))

    # What the SDK sent (a snapshot, once the stand-in has marked the end of its reply).
    assert await wait_until(lambda: standin.requests[0]["finished_at"] is not None)
    (sent,) = standin.requests
    assert sent["auth"] == f"Bearer {KEY}"
    heard_samples = math.ceil(len(speech.samples) * 16000 / speech.sample_rate)
    if options["api"] == "chat":
        assert sent["model"] == "qwen-omni-turbo"
        assert sent["modalities"] == ["text", "audio"]
        assert sent["audio"] == {"voice": "Cherry", "format": "wav"}
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
        system, *history, user = sent["messages"]
        assert system == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
        assert history == [{"role": m.role, "content": m.content} for m in HISTORY]
        (audio,) = user["content"]
        assert (audio["type"], audio["format"], audio["prefix"]) == ("input_audio", "wav", "data:;base64")
        assert (audio["sample_rate"], audio["channels"], audio["width"]) == (16000, 1, 2)
        assert audio["samples"] == heard_samples
    else:
        assert sent["model"] == "qwen-omni-turbo-realtime"
        session = sent["session"]
        assert session["modalities"] == ["text", "audio"] and session["voice"] == "Cherry"
        assert session["input_audio_format"] == "pcm16" and session["output_audio_format"] == "pcm16"
        assert session["turn_detection"] is None
        assert session["input_audio_transcription"] == {"model": "gummy-realtime-v1"}
        assert session["instructions"].startswith(DEFAULT_SYSTEM_PROMPT)
        assert "User: My name is Ada.\nAssistant: Nice to meet you, Ada." in session["instructions"]
        assert sent["audio_bytes"] == 2 * heard_samples and sent["appends"] > 1
        assert (sent["commits"], sent["responses"], sent["cancels"]) == (1, 1, 0)
        assert sent["events"].index("input_audio_buffer.commit") < sent["events"].index("response.create")

    # What came back.
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == REPLY
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    assert len(chunks) > 3 and all(c.sample_rate == 24000 and c.samples.dtype == np.float32 for c in chunks)
    audio = np.concatenate([c.samples for c in chunks])
    assert len(audio) == expected_audio(REPLY)
    assert np.sqrt(np.mean(audio ** 2)) > 0.15
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 24000 / len(audio) - 440) < 5
    transcripts = [i for i in items if isinstance(i, Transcript)]
    if options["api"] == "chat":
        assert transcripts == []
    else:
        assert transcripts == [Transcript(text="what is the weather", language=None)]
    # Streamed: the first audio was here before the stand-in had sent the last of the reply.
    assert first_audio < sent["finished_at"]
    # The SDKs' debug logs (the realtime SDK logs each event it sends) were captured, without the key.
    assert ("omni realtime" in caplog.text) == (options["api"] == "realtime")
    assert KEY not in caplog.text


async def test_typed_text_and_language(service):
    standin, options = service
    backend = make(**options, voice="Ethan", max_tokens=200)
    items, _ = await collect(backend, SpeechRequest(history=(), text="ni hao", language="zh"))
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == REPLY
    assert not [i for i in items if isinstance(i, Transcript)]
    if options["api"] == "realtime":
        # The realtime API documents no text input: typed text is answered by the chat API.
        assert standin.requests == []
        standin = standin.chat
    (sent,) = standin.requests
    assert sent["model"] == "qwen-omni-turbo" and sent["auth"] == f"Bearer {KEY}"
    system, user = sent["messages"]
    assert user == {"role": "user", "content": "ni hao"}
    assert "Chinese" in system["content"] and sent["max_tokens"] == 200
    assert sent["audio"]["voice"] == "Ethan"


async def test_realtime_settings():
    """max_tokens, the language line and captions from the asr stage reach the realtime session."""
    with OmniRealtimeStandin(key=KEY, reply=REPLY) as standin:
        backend = make(api="realtime", realtime_url=standin.url, model="qwen3-omni-flash-realtime",
                       max_tokens=200, temperature=0.5, captions="asr", retry=FAST_RETRY)
        items, _ = await collect(backend, SpeechRequest(history=(), audio=user_speech(0.3), language="zh"))
    assert [i for i in items if isinstance(i, Transcript)] == []
    (sent,) = standin.requests
    session = sent["session"]
    assert sent["model"] == "qwen3-omni-flash-realtime" and session["input_audio_transcription"] is None
    assert (session["max_tokens"], session["temperature"]) == (200, 0.5)
    assert "Chinese" in session["instructions"] and "conversation so far" not in session["instructions"]


async def test_chat_text_only_in_transcript():
    """The service may put the reply text only in delta.audio.transcript: it is still the text."""
    with OpenAIOmniStandin(key=KEY, reply=REPLY, text_field="transcript") as standin:
        backend = make(api="chat", base_url=standin.url, retry=FAST_RETRY)
        items, _ = await collect(backend, SpeechRequest(history=(), audio=user_speech(0.5)))
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == REPLY


async def test_stopping_early_stops_generation(service):
    standin, options = service
    backend = make(**options)
    stream = backend.converse(SpeechRequest(history=(), audio=user_speech(0.5)))
    async for item in stream:
        if isinstance(item, AudioChunk):
            break
    stopped = time.monotonic()
    await stream.aclose()
    closed = "client_closed_at" if options["api"] == "chat" else "closed_at"
    assert await wait_until(lambda: standin.requests[0][closed] is not None)
    (sent,) = standin.requests  # a snapshot: taken once the stand-in saw the client go
    if options["api"] == "chat":
        assert sent["client_closed_at"] - stopped < 1.0 and sent["finished_at"] is None
    else:
        assert sent["cancels"] == 1 and sent["cancelled_at"] - stopped < 1.0
        assert sent["closed_at"] - stopped < 1.0 and sent["finished_at"] is None


@pytest.mark.parametrize("mode, kind", [("unauthorised", "unauthorised"), ("quota", "quota"),
                                        ("quota_429", "quota")])
async def test_failures_that_are_not_retried(service, mode, kind, caplog):
    caplog.set_level(logging.DEBUG)
    standin, options = service
    if mode == "quota_429" and options["api"] == "realtime":
        pytest.skip("an HTTP-only variant")
    standin.mode = mode
    backend = make(**options)
    with pytest.raises(RemoteServiceError) as caught:
        await collect(backend, SpeechRequest(history=(), audio=user_speech(0.3)))
    assert caught.value.kind == kind
    assert len(standin.requests) == 1  # not retried
    if kind == "unauthorised":
        assert "DASHSCOPE_API_KEY" in str(caught.value)
    assert KEY not in str(caught.value) and KEY not in caplog.text


async def test_wrong_key_is_unauthorised(service, monkeypatch):
    standin, options = service
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-some-other-key")
    backend = make(**options)
    with pytest.raises(RemoteServiceError) as caught:
        await collect(backend, SpeechRequest(history=(), audio=user_speech(0.3)))
    assert caught.value.kind == "unauthorised" and "sk-some-other-key" not in str(caught.value)


async def test_transient_failures_are_retried(service):
    standin, options = service
    standin.mode = "fail_times:2"
    backend = make(**options)
    items, _ = await collect(backend, SpeechRequest(history=(), audio=user_speech(0.3)))
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == REPLY
    assert len(standin.requests) == 3


async def test_rate_limited_is_retried_then_raised(service):
    standin, options = service
    standin.mode = "rate_limited"
    backend = make(**{**options, "retry": {**FAST_RETRY, "attempts": 2}})
    with pytest.raises(RemoteServiceError) as caught:
        await collect(backend, SpeechRequest(history=(), audio=user_speech(0.3)))
    assert caught.value.kind == "rate_limited" and len(standin.requests) == 2


async def test_stall_is_a_timeout(service):
    standin, options = service
    standin.mode = "stall"
    backend = make(**{**options, "retry": {"attempts": 2, "backoff_s": 0.01, "timeout_s": 0.5}})
    began = time.monotonic()
    with pytest.raises(RemoteServiceError) as caught:
        await collect(backend, SpeechRequest(history=(), audio=user_speech(0.3)))
    assert caught.value.kind == "timeout"
    assert len(standin.requests) == 2 and time.monotonic() - began < 3.0  # retried once


async def test_realtime_stall_after_the_transcript_is_not_retried():
    """The user's transcript already reached the session: a retry would repeat it."""
    with OmniRealtimeStandin(key=KEY, reply=REPLY) as standin:
        backend = make(api="realtime", realtime_url=standin.url,
                       retry={"attempts": 2, "backoff_s": 0.01, "timeout_s": 0.5})
        received = []
        stalls = (ChatMessage("user", "[stall] hello?"),)
        with pytest.raises(RemoteServiceError) as caught:
            async for item in backend.converse(SpeechRequest(history=stalls, audio=user_speech(0.3))):
                received.append(item)
        assert caught.value.kind == "timeout" and len(standin.requests) == 1
        assert received == [Transcript(text="what is the weather", language=None)]
        assert await wait_until(lambda: standin.requests[0]["closed_at"] is not None)


async def test_disconnect_mid_reply_is_not_retried(service):
    standin, options = service
    standin.mode = "disconnect"
    backend = make(**options)
    received = []
    with pytest.raises(RemoteServiceError) as caught:
        async for item in backend.converse(SpeechRequest(history=(), audio=user_speech(0.3))):
            received.append(item)
    assert received and caught.value.kind == "server_error"
    assert len(standin.requests) == 1


async def test_a_stalled_session_does_not_hold_up_another(service):
    standin, options = service
    backend = make(**{**options, "retry": {"attempts": 1, "timeout_s": 5.0}})
    stalls = (ChatMessage("user", "[stall] are you there?"),)
    stalled = asyncio.create_task(collect(backend, SpeechRequest(history=stalls, audio=user_speech(0.5))))
    await asyncio.sleep(0.2)
    began = time.monotonic()
    items, _ = await collect(backend, SpeechRequest(history=(), audio=user_speech(0.5)))
    assert time.monotonic() - began < 2.0
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == REPLY
    assert not stalled.done()
    stalled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stalled


@pytest.mark.parametrize("api", ["chat", "realtime"])
def test_missing_key_fails_at_load(api, monkeypatch):
    monkeypatch.delenv("DASHSCOPE_API_KEY")
    with pytest.raises(StageLoadError) as caught:
        make(api=api)
    assert "DASHSCOPE_API_KEY" in str(caught.value)


def test_options_refuse_a_pasted_key():
    with pytest.raises(ValueError):
        QwenOmni.Options(api_key_env="sk-abc-123")


@pytest.mark.parametrize("api", ["chat", "realtime"])
async def test_nothing_listening_is_unreachable(api):
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = make(api=api, base_url=f"http://127.0.0.1:{port}/v1", realtime_url=f"ws://127.0.0.1:{port}/rt",
                   retry={"attempts": 2, "backoff_s": 0.01, "timeout_s": 2.0})
    with pytest.raises(RemoteServiceError) as caught:
        await collect(backend, SpeechRequest(history=(), audio=user_speech(0.3)))
    assert caught.value.kind == "unreachable"
