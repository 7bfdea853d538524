"""Alibaba Cloud Bailian (DashScope) CosyVoice: streaming cloud TTS through the `dashscope` SDK (API key).

Each ``synthesize`` call is one synthesis task on a websocket of its own (the SDK's
`SpeechSynthesizer`): run-task -> task-started, the sentence streamed in clause by clause
(`streaming_call`, continue-task), `streaming_complete` (finish-task) -> raw PCM16 audio frames
-> task-finished. The audio is yielded as float32 chunks as it arrives. A new connection per sentence
costs a TLS handshake, and dashscope 2.0.2 polls for it every 100 ms: ~0.1-0.3 s before the first audio.

The SDK is thread and callback based: its websocket thread calls ``on_data``, and a worker thread
of ours drives the blocking calls. Both feed one bounded asyncio queue, so the event loop never
blocks and a slow consumer holds the websocket thread back (TCP backpressure) instead of buffering
without bound. Stopping iteration early cancels the task (finish-task with the cancel directive)
and closes the websocket from a thread of its own.

The API key comes from the environment variable named by ``api_key_env`` at load(); it is sent in each
task's Authorization header (and given to the SDK's module-wide ``dashscope.api_key`` only when that
is unset, as the SDK refuses to start without one), never logged, and scrubbed from error text. Failures become
``RemoteServiceError`` (avatarchat/remote.py), retried before the first audio when another try can help.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import threading
import weakref
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from functools import cache
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from avatarchat import languages
from avatarchat.audio import coalesce, from_pcm16, timed_chunks
from avatarchat.backends.tts.base import TTSBackend
from avatarchat.config import Options
from avatarchat.messages import AudioChunk
from avatarchat.remote import (EnvVarName, FailureKind, RemoteServiceError, RetryPolicy, handshake_failure,
                               kind_for_code, retrying, scrub, secret_from_env, service_url)

SERVICE = "Bailian CosyVoice"
PRODUCTION_URL = "wss://dashscope.aliyuncs.com/api-ws/v1/inference"
MIN_CHUNK_S = 0.1          # coalesce the service's small frames into chunks at least this long
QUEUE_ITEMS = 32           # frames in flight between the websocket thread and the event loop
CANCEL_WAIT_MS = 1000      # wait this long for task-finished after a cancel, then force-close
COMPLETE_WAIT_MS = 120_000  # the SDK's own bound on finish-task; ours (retry.timeout_s) is tighter
MIN_CLAUSE_CHARS = 8       # shorter clauses ride with the next one

# Clause ends: ASCII punctuation only before whitespace (so "3.5" stays whole), CJK punctuation anywhere.
_CLAUSE_END = re.compile(r"[,;:.!?]+(?=\s)\s*|[，。！？；：、]+\s*")


def split_clauses(text: str, min_chars: int = MIN_CLAUSE_CHARS) -> list[str]:
    """``text`` cut after clause punctuation into the pieces an LLM would stream; joined they give
    ``text`` back exactly."""
    parts, start = [], 0
    for m in _CLAUSE_END.finditer(text):
        if m.end() - start >= min_chars and m.end() < len(text):
            parts.append(text[start:m.end()])
            start = m.end()
    tail = text[start:]
    if tail.strip() or not parts:
        parts.append(tail)
    else:
        parts[-1] += tail
    return parts


class BailianCosyVoiceTTS(TTSBackend):
    """CosyVoice on Alibaba Cloud Bailian (DashScope websocket API, ``dashscope`` SDK), PCM output."""

    class Options(Options):
        model: str = Field("cosyvoice-v2", min_length=1,
                           description="CosyVoice model on Bailian (cosyvoice-v2, cosyvoice-v3-flash, ...)")
        voice: str = Field("longxiaochun_v2", min_length=1,
                           description="voice when the reply's language has none in voices_by_language; "
                                       "it must belong to the model (v2 voices end in _v2)")
        voices_by_language: dict[str, str] = Field(
            default_factory=dict, description="voice per reply language code (zh, en, ...); a language "
                                              "not listed uses voice")
        sample_rate: Literal[8000, 16000, 22050, 24000, 44100, 48000] = Field(
            24000, description="rate of the PCM16 mono audio the service sends: 8000, 16000, 22050, "
                               "24000, 44100 or 48000")
        volume: int = Field(50, ge=0, le=100, description="loudness, 0-100 (the service's default 50)")
        speech_rate: float = Field(1.0, ge=0.5, le=2.0, description="speaking rate, 0.5-2.0")
        pitch_rate: float = Field(1.0, ge=0.5, le=2.0, description="pitch factor, 0.5-2.0")
        url: str = Field(PRODUCTION_URL, description="DashScope websocket inference endpoint (the "
                         "international site: wss://dashscope-intl.aliyuncs.com/api-ws/v1/inference)")
        api_key_env: EnvVarName = Field("DASHSCOPE_API_KEY", description="name of the environment variable "
                                 "holding the DashScope API key; never put the key itself here")
        retry: RetryPolicy = Field(default_factory=RetryPolicy,
                                   description="retries before the first audio, and the stall timeout")

        @field_validator("url")
        @classmethod
        def _ws_url(cls, v: str) -> str:
            return service_url(v, "wss://", "ws://")

        @field_validator("voices_by_language")
        @classmethod
        def _voices(cls, v: dict[str, str]) -> dict[str, str]:
            if any(not code or not voice for code, voice in v.items()):
                raise ValueError("voices_by_language maps a language code to a voice name, neither empty")
            return languages.language_keys(v)

    def __init__(self, options):
        super().__init__(options)
        self.sample_rate = options.sample_rate
        self._key: str | None = None
        self._format = None
        self._live: weakref.WeakSet = weakref.WeakSet()  # synthesizers with a task under way

    def load(self) -> None:
        try:
            import dashscope
            from dashscope.audio.tts_v2 import AudioFormat
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError("the dashscope SDK is not installed "
                                      "(pip install 'avatar-chat[cloud]')") from err
        self._key = secret_from_env(self.options.api_key_env, "DashScope API key")
        self._format = AudioFormat[f"PCM_{self.options.sample_rate}HZ_MONO_16BIT"]
        # The SDK refuses to build a synthesizer while its module-wide key is unset. Our key rides in
        # each synthesizer's own Authorization header, which wins over the module-wide one.
        if dashscope.api_key is None:
            dashscope.api_key = self._key
        _synthesizer_class()

    def close(self) -> None:
        for synth in list(self._live):
            with suppress(Exception):  # the socket is going away either way
                synth.close()
        self._key = None

    def voice_for(self, language: str | None) -> str:
        return languages.choice_for(language, self.options.voices_by_language, self.options.voice)

    async def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]:
        if self._key is None:
            raise RuntimeError("BailianCosyVoiceTTS.load() has not been called")
        text = text.strip()
        if not text:
            return
        clauses, voice = split_clauses(text), self.voice_for(language)
        stream = retrying(SERVICE, self.options.retry, lambda: self._attempt(clauses, voice))
        async with aclosing(timed_chunks(stream, self.sample_rate)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _attempt(self, clauses: list[str], voice: str) -> AsyncIterator[np.ndarray]:
        """One synthesis task: float32 samples in pieces of at least MIN_CHUNK_S."""
        return coalesce(self._samples(clauses, voice), int(self.sample_rate * MIN_CHUNK_S))

    async def _samples(self, clauses: list[str], voice: str) -> AsyncIterator[np.ndarray]:
        o = self.options
        bridge = _Bridge(asyncio.get_running_loop(), self._key, o.api_key_env)
        synth = _synthesizer_class()(
            model=o.model, voice=voice, format=self._format, volume=o.volume, speech_rate=o.speech_rate,
            pitch_rate=o.pitch_rate, headers={"Authorization": f"Bearer {self._key}"}, callback=bridge,
            url=o.url)
        synth.bridge = bridge
        self._live.add(synth)
        threading.Thread(target=_drive, args=(synth, bridge, clauses), daemon=True,
                         name="bailian-tts").start()
        pending = bytearray()  # an odd byte waits for its sample's other half
        finished = False
        try:
            while True:
                kind, value = await bridge.queue.get()
                if kind == "data":
                    pending += value
                    yield _take_samples(pending)
                elif kind == "done":
                    finished = True
                    return
                else:
                    raise value
        finally:
            # Runs on close, cancellation and failure alike; nothing here may await.
            bridge.stop()
            self._live.discard(synth)
            if not finished:
                threading.Thread(target=_cancel, args=(synth,), daemon=True, name="bailian-tts-cancel").start()


def _take_samples(pending: bytearray) -> np.ndarray:
    """The whole 16-bit samples in ``pending`` as float32, removed from it (an odd byte stays)."""
    n = len(pending) & ~1
    samples = from_pcm16(bytes(pending[:n]))
    del pending[:n]
    return samples


def _drive(synth, bridge: _Bridge, clauses: list[str]) -> None:
    """Worker thread: the SDK's blocking calls for one task."""
    try:
        for clause in clauses:
            if bridge.stopped:
                return
            synth.streaming_call(clause)
        if bridge.stopped:
            return
        synth.streaming_complete(complete_timeout_millis=COMPLETE_WAIT_MS)
        bridge.end_error(RemoteServiceError(SERVICE, "protocol", "the task ended without task-finished"))
    except Exception as err:  # noqa: BLE001 - every SDK failure becomes a RemoteServiceError
        bridge.end_error(bridge.sdk_error(err))
    finally:
        if bridge.stopped:
            with suppress(Exception):  # the socket is going away either way
                synth.close()


def _cancel(synth) -> None:
    """Tell the service to stop (finish-task, directive cancel), then close the websocket."""
    with suppress(Exception):  # not started, or already closed: closing is all that is left
        synth.streaming_cancel(complete_timeout_millis=CANCEL_WAIT_MS)
    with suppress(Exception):
        synth.close()


class _Bridge:
    """One task's link from the SDK's threads to the event loop: the SDK's callback object, and the
    bounded queue of ("data", bytes) items ending in one ("done", None) or ("error", err)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: str, key_env: str):
        self.loop, self.key, self.key_env = loop, key, key_env
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_ITEMS)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ended = False

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """The consumer is gone: producers stop waiting for room, and what is queued is dropped."""
        self._stop.set()
        while not self.queue.empty():
            self.queue.get_nowait()

    def _put(self, item) -> None:
        if self._stop.is_set():
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        except RuntimeError:  # the loop is closed
            return
        while True:
            try:
                future.result(timeout=0.2)
                return
            except TimeoutError:
                # The queue is full: wait on (backpressure), unless the consumer went away.
                if self._stop.is_set():
                    future.cancel()
                    return
            except Exception:  # noqa: BLE001 - cancelled with its loop
                return

    def _end(self, item) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._put(item)

    def end_error(self, err: RemoteServiceError) -> None:
        self._end(("error", err))

    # ResultCallback's methods, called by the SDK (its websocket thread).
    def on_open(self) -> None:
        pass

    def on_event(self, message) -> None:
        pass

    def on_close(self) -> None:
        pass

    def on_data(self, data: bytes) -> None:
        if not self._ended:
            self._put(("data", bytes(data)))

    def on_complete(self) -> None:
        self._end(("done", None))

    def on_error(self, message) -> None:
        """task-failed: ``message`` is the event's JSON text."""
        try:
            header = json.loads(message).get("header", {})
            code, text = str(header.get("error_code", "")), str(header.get("error_message", ""))
        except (ValueError, AttributeError):
            code, text = "", str(message)
        self.end_error(self.failure(kind_for_code(code) or "server_error", f"{code}: {text}".strip(": ")))

    # The websocket's own failures, which the SDK only logs (reported by _synthesizer_class).
    def transport_error(self, err: BaseException) -> None:
        self.end_error(self.transport_failure(err))

    def transport_closed(self) -> None:
        self.end_error(self.failure("server_error", "the connection closed before the task finished"))

    def failure(self, kind: FailureKind, detail: str) -> RemoteServiceError:
        detail = scrub(detail, self.key)  # the service never echoes it; make sure
        hint = {"unauthorised": f"check the key in {self.key_env} and that CosyVoice is enabled for it",
                "quota": "the Bailian account is in arrears or out of free quota",
                "rate_limited": "too many requests at once for this account",
                "bad_request": "check model and voice (the voice must belong to the model)"}.get(kind, "")
        return RemoteServiceError(SERVICE, kind, detail, hint)

    def transport_failure(self, err: BaseException) -> RemoteServiceError:
        import websocket

        what = f"{type(err).__name__}: {err}"
        if isinstance(err, websocket.WebSocketBadStatusException):
            return self.failure(*handshake_failure(err.status_code, err.resp_body))
        if isinstance(err, (websocket.WebSocketTimeoutException, socket.timeout)):
            return self.failure("timeout", what)
        if isinstance(err, (websocket.WebSocketConnectionClosedException, ConnectionResetError,
                            ConnectionAbortedError, BrokenPipeError)):
            return self.failure("server_error", f"the connection dropped mid-task ({what})")
        if isinstance(err, (ConnectionRefusedError, websocket.WebSocketAddressException, socket.gaierror,
                            ssl.SSLError, OSError)):
            return self.failure("unreachable", what)
        return self.failure("protocol", what)

    def sdk_error(self, err: Exception) -> RemoteServiceError:
        """What the SDK raised in the worker thread."""
        from dashscope.common.error import RequestFailure

        if isinstance(err, RemoteServiceError):
            return err
        if isinstance(err, RequestFailure):  # task-failed before task-started
            code = str(err.name or "")
            return self.failure(kind_for_code(code) or "server_error", f"{code}: {err.message}")
        if isinstance(err, TimeoutError):  # no connection within 5 s, or no task-started within 10 s
            return self.failure("timeout", str(err))
        if isinstance(err, ConnectionError):  # a send on a closed socket
            return self.failure("server_error", "the connection closed before the task finished")
        return self.failure("protocol", f"{type(err).__name__}: {err}")


@cache
def _synthesizer_class():
    """The SDK's SpeechSynthesizer, reporting what dashscope 2.0.2 only logs or waits out: a failed
    handshake or dropped socket reaches the bridge at once (the SDK would sit out its 5 s connect and
    10 s start waits and report a bare timeout), and a closed socket releases the SDK's waiters."""
    from dashscope.audio.tts_v2 import SpeechSynthesizer

    class Synthesizer(SpeechSynthesizer):
        bridge: _Bridge | None = None

        def on_error(self, ws, error):
            if self.bridge is not None:
                self.bridge.transport_error(error)

        def on_close(self, ws, close_status_code, close_msg):
            if self.bridge is not None:
                self.bridge.transport_closed()  # ignored when the task already ended
            self.start_event.set()
            self.complete_event.set()

    return Synthesizer


BACKEND = BailianCosyVoiceTTS
