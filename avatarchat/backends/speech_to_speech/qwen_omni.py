"""Qwen-Omni (Alibaba Model Studio / DashScope): one model hears the user and answers with text and
24 kHz speech, in place of the ASR, LLM and TTS stages. Two APIs, chosen by ``api``:

``chat``: the OpenAI-compatible chat completions endpoint through the ``openai`` SDK. The user's turn
is a WAV (16 kHz, 16-bit mono) sent base64 as an ``input_audio`` part, or plain text when typed; the
reply streams back as ``delta.content`` text and ``delta.audio`` pieces (``data``: base64 PCM16 mono
24 kHz, ``transcript``: the spoken text). This API transcribes nothing: no user Transcript.

``realtime``: the Qwen-Omni realtime websocket through ``dashscope.audio.qwen_omni``, one connection
per turn. Turn detection is off (the service's own VAD/end-of-turn already decided the turn ended):
the finished utterance is appended as 16 kHz PCM16, committed, and a response requested. The
service's transcript of the user's speech is yielded as one Transcript. The history travels in the
session ``instructions`` (the system prompt, then the earlier turns as text): that field is
documented for this API, where adding text items to the conversation (``conversation.item.create``)
is not. For the same reason a typed message is answered through the chat API (``chat_model``), the
one that documents text input.

Every failure becomes a RemoteServiceError (avatarchat/remote.py); ones another try can fix are
retried until the first piece of the reply came. The API key is read from the environment variable
named by ``api_key_env`` at load and never logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from typing import Literal

from pydantic import Field, field_validator

from avatarchat.audio import encode_wav, from_pcm16, resample, to_pcm16
from avatarchat.backends.speech_to_speech.base import SpeechToSpeechBackend, SpeechToSpeechOptions
from avatarchat.languages import system_prompt_for
from avatarchat.messages import AudioChunk, SpeechRequest, TextDelta, Transcript
from avatarchat.remote import (EnvVarName, RemoteServiceError, RetryPolicy, handshake_failure,
                               kind_for_code, retrying, scrub, secret_from_env, service_url)
from avatarchat.threads import stream_in_thread

SERVICE = "Qwen-Omni"
DEFAULT_MODELS = {"chat": "qwen-omni-turbo", "realtime": "qwen-omni-turbo-realtime"}
INPUT_RATE = 16000   # what both APIs take (realtime: pcm16 at 16 kHz only)
OUTPUT_RATE = 24000  # what both APIs answer with
_APPEND_SAMPLES = 3200  # 0.2 s per input_audio_buffer.append, well under the event size limit
_TRANSCRIPT_GRACE_S = 1.0  # how long after response.done a late user transcript is still awaited


def _kind_for_code(code: str | None, status: int | None = None):
    """The failure kind of a service error code, else of the HTTP status; a code that says neither
    is a refused request, no code at all a server failure."""
    return kind_for_code(code, status) or ("bad_request" if code else "server_error")


def _part(obj, name: str):
    """A field of an SDK object or a dict; the openai SDK types ``delta.audio`` in some versions and
    keeps it as an extra (dict) field in others."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    value = getattr(obj, name, None)
    if value is None and getattr(obj, "model_extra", None):
        value = obj.model_extra.get(name)
    return value


class QwenOmni(SpeechToSpeechBackend):
    """Qwen-Omni over its OpenAI-compatible chat API or its realtime websocket."""

    sample_rate = OUTPUT_RATE

    class Options(SpeechToSpeechOptions):
        api: Literal["chat", "realtime"] = Field(
            "chat", description="\"chat\": OpenAI-compatible chat completions (openai SDK, no user "
            "transcript); \"realtime\": the realtime websocket (dashscope SDK), which also transcribes "
            "the user")
        model: str | None = Field(
            None, min_length=1, description="model name; None takes qwen-omni-turbo (chat) or "
            "qwen-omni-turbo-realtime (realtime)")
        voice: str = Field("Cherry", min_length=1, description="the reply's voice (the model's voice list)")
        base_url: str = Field("https://dashscope.aliyuncs.com/compatible-mode/v1",
                              description="chat API root, up to and including /v1 (international: "
                              "https://dashscope-intl.aliyuncs.com/compatible-mode/v1)")
        realtime_url: str = Field("wss://dashscope.aliyuncs.com/api-ws/v1/realtime",
                                  description="realtime websocket URL, without ?model= (the SDK adds it)")
        api_key_env: EnvVarName = Field("DASHSCOPE_API_KEY", description="name of the environment variable "
                                 "holding the API key; never put the key itself here")
        chat_model: str = Field(
            "qwen-omni-turbo", min_length=1,
            description="realtime only: the chat-API model that answers typed text, which the "
            "realtime API takes no documented event for (base_url applies)")
        transcription_model: str = Field(
            "gummy-realtime-v1", min_length=1,
            description="realtime only: the model that transcribes the user's speech")
        max_tokens: int | None = Field(None, ge=1, le=16384,
                                       description="longest reply in tokens; None: the service's default")
        temperature: float | None = Field(None, ge=0.0, lt=2.0,
                                          description="sampling temperature; None: the service's default")
        retry: RetryPolicy = Field(default_factory=RetryPolicy,
                                   description="retries of failures another try can fix, and timeouts")

        @field_validator("base_url")
        @classmethod
        def _http(cls, v: str) -> str:
            return service_url(v, "http://", "https://").rstrip("/")

        @field_validator("realtime_url")
        @classmethod
        def _ws(cls, v: str) -> str:
            if "?" in service_url(v, "ws://", "wss://"):
                raise ValueError(f"realtime_url must carry no query (the SDK adds ?model=), got {v!r}")
            return v

    def __init__(self, options):
        super().__init__(options)
        self._key = ""
        # AsyncOpenAI's HTTP pool is bound to the event loop that opened it: one client per loop.
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._sdk = None  # (conversation class, callback class) of the realtime API

    @property
    def model(self) -> str:
        return self.options.model or DEFAULT_MODELS[self.options.api]

    def load(self) -> None:
        importlib.import_module("openai")  # fails at start-up if missing (realtime: typed text uses it)
        if self.options.api == "realtime":
            self._sdk = _sdk_classes()
        self._key = secret_from_env(self.options.api_key_env, "DashScope API key")
        self._clients.clear()

    def close(self) -> None:
        self._clients.clear()

    def converse(self, request: SpeechRequest) -> AsyncIterator[Transcript | TextDelta | AudioChunk]:
        attempt = self._chat if self.options.api == "chat" or request.text is not None else self._realtime
        return retrying(SERVICE, self.options.retry, lambda: attempt(request))

    # ---- shared -------------------------------------------------------------------------------

    def _failure(self, kind, detail: str = "") -> RemoteServiceError:
        detail = scrub(detail, self._key)
        hint = f"check the key in {self.options.api_key_env}" if kind == "unauthorised" else ""
        if kind == "quota":
            hint = "top up or raise the account's quota in Model Studio"
        return RemoteServiceError(SERVICE, kind, detail, hint)

    def _system(self, request: SpeechRequest) -> str:
        return system_prompt_for(self.options.system_prompt, request.language)

    def _audio(self, data: str | None) -> AudioChunk | None:
        """A piece of the reply's speech (base64 PCM16, both APIs) as a chunk; None when empty."""
        pcm = base64.b64decode(data or "")
        if len(pcm) % 2:
            raise self._failure("protocol", "audio data is not whole 16-bit samples")
        return AudioChunk(from_pcm16(pcm), OUTPUT_RATE) if pcm else None

    @staticmethod
    def _input_audio(request: SpeechRequest):
        """The user's speech at the 16 kHz both APIs take."""
        return resample(request.audio.samples, request.audio.sample_rate, INPUT_RATE)

    # ---- chat completions (openai SDK) ----------------------------------------------------------

    def _client(self):
        import openai

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # max_retries=0: retrying() owns retries, so they stop once output reached the session.
            client = openai.AsyncOpenAI(api_key=self._key, base_url=self.options.base_url,
                                        max_retries=0, timeout=self.options.retry.timeout_s)
            self._clients[loop] = client
        return client

    def _chat_body(self, request: SpeechRequest) -> dict:
        o = self.options
        if request.audio is not None:
            wav = encode_wav(self._input_audio(request), INPUT_RATE)
            user = [{"type": "input_audio", "input_audio": {
                "data": "data:;base64," + base64.b64encode(wav).decode("ascii"), "format": "wav"}}]
        else:
            user = request.text
        messages = [{"role": "system", "content": self._system(request)},
                    *({"role": m.role, "content": m.content} for m in request.history),
                    {"role": "user", "content": user}]
        model = self.model if o.api == "chat" else o.chat_model
        body = {"model": model, "messages": messages, "modalities": ["text", "audio"],
                "audio": {"voice": o.voice, "format": "wav"}, "stream": True,
                "stream_options": {"include_usage": True}}
        if o.max_tokens is not None:
            body["max_tokens"] = o.max_tokens
        if o.temperature is not None:
            body["temperature"] = o.temperature
        return body

    def _chat_failure(self, err, started: bool) -> RemoteServiceError:
        import openai

        if isinstance(err, openai.APITimeoutError):
            return self._failure("timeout", "no answer in time")
        if isinstance(err, openai.APIConnectionError):
            # Before any answer: the service cannot be reached; mid-reply: it dropped the stream.
            return self._failure("server_error" if started else "unreachable",
                                 "the connection dropped mid-reply" if started else "connection failed")
        status = getattr(err, "status_code", None)
        kind = _kind_for_code(getattr(err, "code", None), status)
        return self._failure(kind, f"HTTP {status}: {err.message}" if status else err.message)

    async def _chat(self, request: SpeechRequest) -> AsyncIterator[TextDelta | AudioChunk]:
        import openai

        started = False
        text_from = None  # "content" or "transcript": the first field that carried the reply text
        try:
            # Resampling and encoding a long utterance takes a few ms: off the loop other sessions share.
            body = await asyncio.to_thread(self._chat_body, request)
            stream = await self._client().chat.completions.create(**body)
        except openai.APIError as err:
            raise self._chat_failure(err, False) from None
        try:
            async for chunk in stream:
                for choice in chunk.choices or ():
                    delta = choice.delta
                    audio = _part(delta, "audio")
                    # The text may come as content, as the audio's transcript, or both: take one.
                    for field, text in (("content", delta.content), ("transcript", _part(audio, "transcript"))):
                        if text and text_from in (None, field):
                            text_from = field
                            started = True
                            yield TextDelta(text)
                    piece = self._audio(_part(audio, "data"))
                    if piece is not None:
                        started = True
                        yield piece
        except openai.APIError as err:
            raise self._chat_failure(err, started) from None
        finally:
            await stream.close()  # early stop: closing the HTTP response ends generation

    # ---- realtime websocket (dashscope SDK, run in threads) --------------------------------------

    def _realtime(self, request: SpeechRequest) -> AsyncIterator:
        return stream_in_thread(lambda stop: self._realtime_turn(request, stop), maxsize=32)

    def _instructions(self, request: SpeechRequest) -> str:
        text = self._system(request)
        if request.history:
            names = {"user": "User", "assistant": "Assistant", "system": "System"}
            turns = "\n".join(f"{names[m.role]}: {m.content}" for m in request.history)
            text += f"\n\nThe conversation so far:\n{turns}"
        return text

    def _realtime_turn(self, request: SpeechRequest, stop: threading.Event) -> Iterator:
        from dashscope.audio.qwen_omni import AudioFormat, MultiModality

        o = self.options
        events: queue.Queue = queue.Queue()
        conversation_cls, callback_cls = self._sdk
        conv = conversation_cls(model=self.model, callback=callback_cls(events),
                                url=o.realtime_url, api_key=self._key)

        def connect() -> None:
            try:
                conv.connect()
            except Exception as err:  # noqa: BLE001 - handed to the turn's thread
                events.put(("failed", err))

        started = finished = False
        threading.Thread(target=connect, name="qwen_omni_connect", daemon=True).start()
        try:
            self._await_event(events, stop, "session.created", started)
            if stop.is_set():
                return
            extra = {"instructions": self._instructions(request)}
            if o.max_tokens is not None:
                extra["max_tokens"] = o.max_tokens
            if o.temperature is not None:
                extra["temperature"] = o.temperature
            conv.update_session(
                output_modalities=[MultiModality.TEXT, MultiModality.AUDIO], voice=o.voice,
                input_audio_format=AudioFormat.PCM_16000HZ_MONO_16BIT,
                output_audio_format=AudioFormat.PCM_24000HZ_MONO_16BIT,
                enable_input_audio_transcription=o.captions == "model",  # "asr": not needed
                input_audio_transcription_model=o.transcription_model,
                enable_turn_detection=False, **extra)
            pcm = to_pcm16(self._input_audio(request))
            for i in range(0, len(pcm), _APPEND_SAMPLES):
                if stop.is_set():
                    return
                conv.append_audio(base64.b64encode(pcm[i:i + _APPEND_SAMPLES].tobytes()).decode("ascii"))
            conv.commit()
            conv.create_response()
            want_transcript = o.captions == "model"
            grace_until = None
            while True:
                timeout = None if grace_until is None else grace_until - time.monotonic()
                if timeout is not None and timeout <= 0:
                    break
                event = self._next_event(events, stop, started, timeout)
                if event is None:  # stopped by the consumer, or the transcript's grace ran out
                    if stop.is_set():
                        return
                    break
                kind = event.get("type", "")
                if kind == "conversation.item.input_audio_transcription.completed" and want_transcript:
                    want_transcript = False
                    text = (event.get("transcript") or "").strip()
                    if text:
                        yield Transcript(text=text, language=request.language)
                        if grace_until is not None:
                            break
                elif kind in ("response.audio_transcript.delta", "response.text.delta"):
                    if event.get("delta"):
                        started = True
                        yield TextDelta(event["delta"])
                elif kind == "response.audio.delta":
                    chunk = self._audio(event.get("delta"))
                    if chunk is not None:
                        started = True
                        yield chunk
                elif kind == "response.done":
                    finished = True
                    response = event.get("response") or {}
                    if response.get("status") == "failed":
                        err = (response.get("status_details") or {}).get("error") or {}
                        raise self._failure(_kind_for_code(err.get("code")), err.get("message", "response failed"))
                    if not want_transcript:
                        break
                    grace_until = time.monotonic() + _TRANSCRIPT_GRACE_S
        finally:
            # Closing a connection that may already be gone.
            if not finished:
                with suppress(Exception):
                    conv.cancel_response()  # stops generation (and billing) before the close
            with suppress(Exception):
                conv.close()

    def _await_event(self, events, stop, wanted: str, started: bool) -> None:
        while not stop.is_set():
            event = self._next_event(events, stop, started, None)
            if event is not None and event.get("type") == wanted:
                return

    def _next_event(self, events: queue.Queue, stop: threading.Event, started: bool,
                    timeout: float | None) -> dict | None:
        """The service's next event; None when the consumer stopped or ``timeout`` passed. Raises the
        RemoteServiceError of an error event, a failed handshake or a dropped connection. Waits in
        short slices so a consumer that stopped is noticed promptly."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not stop.is_set():
            wait = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                what, *args = events.get(timeout=wait)
            except queue.Empty:
                continue
            if what == "event":
                event = args[0]
                if event.get("type") == "error":
                    err = event.get("error") or {}
                    raise self._failure(_kind_for_code(err.get("code")), err.get("message", ""))
                return event
            if what == "failed":
                raise self._connect_failure(args[0], started)
            if what == "closed":
                code, reason = args
                detail = f"closed ({code} {reason or ''})".strip() if code else "the connection dropped"
                raise self._failure("server_error" if started else "unreachable", detail)
        return None

    def _connect_failure(self, err, started: bool) -> RemoteServiceError:
        status = getattr(err, "status_code", None)  # websocket-client's WebSocketBadStatusException
        if status:
            return self._failure(*handshake_failure(status, getattr(err, "resp_body", None)))
        if started:
            return self._failure("server_error", f"the connection dropped mid-reply ({type(err).__name__})")
        if isinstance(err, TimeoutError):
            return self._failure("unreachable", "no websocket connection within 5 s")
        return self._failure("unreachable", type(err).__name__)


def _sdk_classes():
    """The SDK's conversation and callback, subclassed: the callback hands events (on the SDK's
    websocket thread) to the turn's thread via a queue, and the conversation reports websocket
    errors, a refused handshake among them, which the SDK only logs (its connect() would wait 5 s
    to notice)."""
    from dashscope.audio.qwen_omni import OmniRealtimeCallback, OmniRealtimeConversation

    class Callback(OmniRealtimeCallback):
        def __init__(self, events: queue.Queue):
            self.events = events

        def on_event(self, message) -> None:
            if isinstance(message, dict):
                self.events.put(("event", message))

        def on_close(self, code, reason) -> None:
            self.events.put(("closed", code, reason))

        def on_error(self, error) -> None:
            self.events.put(("failed", error))

    class Conversation(OmniRealtimeConversation):
        def _on_error(self, ws, error):
            self.callback.on_error(error)

    return Conversation, Callback


BACKEND = QwenOmni
