"""Edge TTS: Microsoft Edge's online "Read aloud" neural voices through the `edge-tts` package (no key).

No account or key: the service is the one Edge's reader uses (``wss://speech.platform.bing.com/...``),
reached by the SDK with its own client token and time-based ``Sec-MS-GEC`` header. Each sentence is
one websocket connection: the SDK sends ``speech.config`` (output format
``audio-24khz-48kbitrate-mono-mp3``) and the SSML (voice, rate, pitch, volume); the service answers
with MP3 in binary frames and ends with ``turn.end``. The MP3 is decoded here as it arrives (PyAV's
MP3 decoder fed the bytes piece by piece) and yielded as float32 mono 24 kHz chunks of at least
``min_chunk_s``, so the first audio plays before the service has sent the last.

Word and sentence boundary events that the SDK also yields are ignored: nothing downstream uses them
(the avatar moves with the audio itself).

Failures become ``RemoteServiceError`` (avatarchat/remote.py): a refused handshake by its HTTP status
(403: unauthorised, 429: rate_limited, 5xx: server_error), connection refused or DNS: unreachable, no
audio for a sentence: bad_request (the SDK's words: check the parameters, usually the voice), an
answer the SDK cannot parse: protocol, a connection that ends before ``turn.end``: server_error.
The retry policy retries the transient ones before the first chunk; after it the turn ends. On a 403
the SDK itself reconnects once after correcting its clock from the server's Date header (its token
is time-based), so a refused handshake costs two connections, never more.

The websocket URL: the SDK reads the module global ``edge_tts.communicate.WSS_URL`` for every
connection, with no per-call parameter. ``url`` (when set) is written there at ``load()``, so one
process serves one Edge TTS URL: loading a second EdgeTTS with a different URL in the same process
fails at start-up instead of silently sending one's requests to the other's server.

Stopping iteration early (aclose, cancel, a timeout) cancels the task that reads the websocket: the
SDK sends the close frame at once, and a server that does not answer it is dropped after
``_CLOSE_GRACE_S``. The sentence's text is logged only at DEBUG: it is the avatar's reply.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing

import numpy as np
from pydantic import Field, field_validator

from avatarchat import languages
from avatarchat.audio import coalesce, timed_chunks
from avatarchat.backends.tts.base import TTSBackend
from avatarchat.config import Options
from avatarchat.messages import AudioChunk
from avatarchat.remote import RemoteServiceError, RetryPolicy, kind_for_status, retrying, service_url

log = logging.getLogger("ray.serve")

SERVICE = "Edge TTS"
_CLOSE_GRACE_S = 1.0  # how long a cancelled connection may take to close before it is dropped
# Short ("en-US-AriaNeural", "zh-CN-shaanxi-XiaoniNeural") or full ("Microsoft Server Speech Text to
# Speech Voice (en-US, AriaNeural)") voice names; load() also runs the SDK's own check on each.
_VOICE = re.compile(r"^([a-z]{2,3}(-[A-Za-z0-9]+)+Neural"
                    r"|Microsoft Server Speech Text to Speech Voice \(.+,.+\))$")

# Which URL the SDK's module global was set to, by how many loaded backends (see the docstring).
_url_claims: Counter[str] = Counter()
_url_lock = threading.Lock()


def _claim_url(url: str | None) -> str:
    """Point the SDK at ``url`` (None: its own default) for this process; refuse a second URL."""
    import edge_tts.communicate
    import edge_tts.constants

    url = url or edge_tts.constants.WSS_URL
    with _url_lock:
        others = [u for u, n in _url_claims.items() if n > 0 and u != url]
        if others:
            raise RuntimeError(f"another edge_tts backend in this process already uses {others[0]}: the "
                               f"SDK has one URL per process (edge_tts.communicate.WSS_URL), so one "
                               f"process cannot also serve {url}")
        _url_claims[url] += 1
        edge_tts.communicate.WSS_URL = url
    return url


def _release_url(url: str) -> None:
    import edge_tts.communicate
    import edge_tts.constants

    with _url_lock:
        _url_claims[url] -= 1
        if _url_claims[url] <= 0:
            del _url_claims[url]
        if not _url_claims:
            edge_tts.communicate.WSS_URL = edge_tts.constants.WSS_URL


def service_error(err: BaseException) -> RemoteServiceError:
    """The RemoteServiceError for what the SDK (or aiohttp under it) raised."""
    import aiohttp
    from edge_tts import exceptions as ex

    if isinstance(err, RemoteServiceError):
        return err
    if isinstance(err, aiohttp.WSServerHandshakeError | aiohttp.ClientResponseError):
        kind = kind_for_status(err.status)
        hint = ("Microsoft refused the connection; a newer edge-tts may be needed"
                if kind == "unauthorised" else "")
        return RemoteServiceError(SERVICE, kind, f"HTTP {err.status} on connect", hint)
    if isinstance(err, ex.SkewAdjustmentError):  # a 403 without a usable Date header
        return RemoteServiceError(SERVICE, "unauthorised", str(err))
    if isinstance(err, ex.NoAudioReceived):
        return RemoteServiceError(SERVICE, "bad_request", "no audio for the sentence",
                                  "check the voice name (edge-tts --list-voices)")
    if isinstance(err, ex.UnexpectedResponse | ex.UnknownResponse):
        return RemoteServiceError(SERVICE, "protocol", str(err))
    if isinstance(err, ex.WebSocketError):
        return RemoteServiceError(SERVICE, "server_error", f"websocket error: {err}")
    if isinstance(err, aiohttp.ServerTimeoutError | TimeoutError):
        return RemoteServiceError(SERVICE, "timeout", str(err) or type(err).__name__)
    if isinstance(err, aiohttp.ClientConnectorError):  # refused, DNS, no route (before any byte)
        return RemoteServiceError(SERVICE, "unreachable", str(err))
    if isinstance(err, aiohttp.ClientError | ConnectionError):
        return RemoteServiceError(SERVICE, "server_error", f"connection lost: {type(err).__name__}")
    import av

    if isinstance(err, av.FFmpegError):
        return RemoteServiceError(SERVICE, "protocol", f"undecodable MP3: {err}")
    return RemoteServiceError(SERVICE, "protocol", f"{type(err).__name__}: {err}")


class _Mp3Decoder:
    """Incremental MP3 -> float32 mono at ``rate``: bytes in as they arrive, samples out per
    complete MP3 frame (the parser keeps a partial frame until its end arrives)."""

    def __init__(self, rate: int):
        import av

        from avatarchat.audio import StreamResampler

        try:
            self._codec = av.CodecContext.create("mp3float", "r")
        except Exception:  # noqa: BLE001 - builds without the float decoder have the fixed-point one
            self._codec = av.CodecContext.create("mp3", "r")
        self._resampler = StreamResampler(rate)

    def _decode(self, packets) -> np.ndarray:
        parts = [self._resampler.feed_frame(frame)
                 for packet in packets for frame in self._codec.decode(packet)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def feed(self, data: bytes) -> np.ndarray:
        return self._decode(self._codec.parse(data))

    def flush(self) -> np.ndarray:
        tail = [self._decode(self._codec.parse(None)), self._decode([None]), self._resampler.flush()]
        return np.concatenate(tail).astype(np.float32)


async def _stop(task: asyncio.Task) -> None:
    """Cancel the websocket reader; a second cancel interrupts aiohttp's wait for the server's close
    reply (which it would otherwise wait up to 10 s for) and drops the connection."""
    for _ in range(2):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=_CLOSE_GRACE_S)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: its failure was already reported through the queue


class EdgeTTS(TTSBackend):
    """Microsoft Edge's online neural voices (edge-tts, no key); MP3 decoded as it streams in."""

    class Options(Options):
        voice: str = Field("en-US-AriaNeural", description="Edge voice for languages not in "
                           "voices_by_language (edge-tts --list-voices lists them)")
        voices_by_language: dict[str, str] = Field(
            default_factory=dict, description="language code (as the ASR reports it: en, zh, ja, ...) "
            "-> Edge voice, e.g. {zh: zh-CN-XiaoxiaoNeural}; 'zh-tw' tries 'zh-tw', then 'zh'")
        rate: str = Field("+0%", pattern=r"^[+-]\d+%$", description="speaking rate change, e.g. +10% or -5%")
        pitch: str = Field("+0Hz", pattern=r"^[+-]\d+Hz$", description="pitch change, e.g. +0Hz or -20Hz")
        volume: str = Field("+0%", pattern=r"^[+-]\d+%$", description="volume change, e.g. +0% or -10%")
        url: str | None = Field(None, description="websocket URL of the service (ws:// or wss://, with a "
                                "query string: the SDK appends &ConnectionId=...); null: the SDK's own "
                                "Microsoft URL. One URL per process (the SDK keeps it in a module global)")
        proxy: str | None = Field(None, description="HTTP proxy URL for the websocket; null: none beyond "
                                  "the HTTPS_PROXY/HTTP_PROXY variables, which the SDK honours")
        connect_timeout_s: int = Field(10, ge=1, le=120, description="longest TCP/TLS connect, seconds")
        min_chunk_s: float = Field(0.1, ge=0.0, le=2.0, description="decoded audio is held until at "
                                   "least this much is ready, then yielded as one chunk")
        retry: RetryPolicy = Field(default_factory=RetryPolicy, description="retries before the first "
                                   "chunk; retry.timeout_s also bounds each wait for audio")

        @field_validator("voice")
        @classmethod
        def _voice_name(cls, v: str) -> str:
            if not _VOICE.match(v):
                raise ValueError(f"{v!r} is not an Edge voice name such as en-US-AriaNeural")
            return v

        @field_validator("voices_by_language")
        @classmethod
        def _voice_names(cls, v: dict[str, str]) -> dict[str, str]:
            for language, voice in v.items():
                if not _VOICE.match(voice):
                    raise ValueError(f"{language}: {voice!r} is not an Edge voice name such as "
                                     f"zh-CN-XiaoxiaoNeural")
            return languages.language_keys(v)

        @field_validator("url")
        @classmethod
        def _ws_url(cls, v: str | None) -> str | None:
            if v is not None and "?" not in service_url(v, "ws://", "wss://"):
                raise ValueError("url needs a query string (e.g. ...?TrustedClientToken=...): the SDK "
                                 "appends &ConnectionId=...")
            return v

    sample_rate = 24000

    def __init__(self, options):
        super().__init__(options)
        self._communicate = None
        self._url: str | None = None

    def load(self) -> None:
        from edge_tts import Communicate
        from edge_tts.data_classes import TTSConfig

        o = self.options
        # The SDK's own validation of every voice and prosody value, at start-up, not on a turn.
        for voice in {o.voice, *o.voices_by_language.values()}:
            TTSConfig(voice, o.rate, o.volume, o.pitch, "SentenceBoundary")
        _Mp3Decoder(self.sample_rate)  # fails here if this PyAV has no MP3 decoder
        if self._url is None:
            self._url = _claim_url(o.url)
        self._communicate = Communicate

    def close(self) -> None:
        self._communicate = None
        if self._url is not None:
            _release_url(self._url)
            self._url = None

    def voice_for(self, language: str | None) -> str:
        return languages.choice_for(language, self.options.voices_by_language, self.options.voice)

    async def _pump(self, communicate, queue: asyncio.Queue) -> None:
        """Read the SDK's stream into ``queue``: ("audio", bytes)..., then ("end", complete) or
        ("error", RemoteServiceError). Runs as its own task so that stopping can cancel it."""
        received = 0
        try:
            async for message in communicate.stream():
                if message["type"] == "audio":
                    received += len(message["data"])
                    queue.put_nowait(("audio", message["data"]))
            # The SDK ends quietly when the connection closes before turn.end; it counts the audio
            # bytes of finished turns only (its offset compensation), so a shortfall is a cut stream.
            finished = communicate.state.get("cumulative_audio_bytes", received)
            queue.put_nowait(("end", finished == received))
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - every failure reaches the consumer as one kind
            queue.put_nowait(("error", service_error(err)))

    def _attempt(self, text: str, voice: str) -> AsyncIterator[np.ndarray]:
        return coalesce(self._samples(text, voice), int(self.options.min_chunk_s * self.sample_rate))

    async def _samples(self, text: str, voice: str) -> AsyncIterator[np.ndarray]:
        """One connection's audio, decoded as it arrives."""
        o = self.options
        communicate = self._communicate(
            text, voice, rate=o.rate, pitch=o.pitch, volume=o.volume, proxy=o.proxy,
            connect_timeout=o.connect_timeout_s,
            # A backstop only: retry.timeout_s (retrying) fires first on a stalled service.
            receive_timeout=math.ceil(o.retry.timeout_s) + 5)
        decoder = _Mp3Decoder(self.sample_rate)
        queue: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(self._pump(communicate, queue))
        try:
            while True:
                what, value = await queue.get()
                if what == "error":
                    raise value
                if what == "end":
                    if not value:
                        raise RemoteServiceError(SERVICE, "server_error",
                                                 "the connection closed before the end of the audio")
                    yield decoder.flush()
                    return
                try:
                    samples = decoder.feed(value)
                except Exception as err:  # noqa: BLE001 - av's errors: the bytes are not MP3
                    raise service_error(err) from err
                yield samples
        finally:
            await _stop(reader)

    async def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]:
        if self._communicate is None:
            raise RuntimeError("EdgeTTS.load() has not been called")
        if not text.strip():
            return
        voice = self.voice_for(language)
        log.debug("edge_tts: %r in %s", text, voice)
        pieces = retrying(SERVICE, self.options.retry, lambda: self._attempt(text, voice))
        async with aclosing(timed_chunks(pieces, self.sample_rate)) as chunks:
            async for chunk in chunks:
                yield chunk


BACKEND = EdgeTTS
