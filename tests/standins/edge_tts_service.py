"""A stand-in of Microsoft Edge's online TTS websocket ("Read aloud"), for the real edge-tts SDK.

Wire protocol (as edge-tts 7.3.1 speaks it, and as this server answers):

Client -> server
  * ``GET <path>?TrustedClientToken=...&ConnectionId=<hex>&Sec-MS-GEC=<token>&Sec-MS-GEC-Version=1-...``
    upgraded to a websocket (permessage-deflate offered), with Edge's browser headers (Origin
    ``chrome-extension://...``, User-Agent, ``Cookie: muid=...``).
  * Text frame ``X-Timestamp:...\\r\\nContent-Type:application/json; charset=utf-8\\r\\n
    Path:speech.config\\r\\n\\r\\n{"context":{"synthesis":{"audio":{"metadataoptions":{
    "sentenceBoundaryEnabled":"true|false","wordBoundaryEnabled":"true|false"},
    "outputFormat":"audio-24khz-48kbitrate-mono-mp3"}}}}\\r\\n``
  * Text frame ``X-RequestId:<hex>\\r\\nContent-Type:application/ssml+xml\\r\\nX-Timestamp:...Z\\r\\n
    Path:ssml\\r\\n\\r\\n<speak ...><voice name='Microsoft Server Speech Text to Speech Voice (en-US,
    AriaNeural)'><prosody pitch='+0Hz' rate='+0%' volume='+0%'>escaped text</prosody></voice></speak>``

Server -> client (each text frame: header lines ``Name:value\\r\\n``, a blank line, a JSON body)
  * text ``Path:turn.start`` then text ``Path:response`` (the stream's id);
  * binary audio frames: 2-byte big-endian length N, N bytes of header lines each ending ``\\r\\n``
    (``X-RequestId``, ``Content-Type:audio/mpeg``, ``X-StreamId``, ``Path:audio``), then MP3 bytes
    (24 kHz mono 48 kbit/s CBR, cut at arbitrary byte positions, not at MP3 frame boundaries);
  * text ``Path:audio.metadata`` frames between them: ``{"Metadata":[{"Type":"WordBoundary" (or
    "SentenceBoundary"),"Data":{"Offset":ticks,"Duration":ticks,"text":{"Text":...,"Length":...,
    "BoundaryType":...}}}]}`` (1 tick = 100 ns);
  * a last binary ``Path:audio`` frame with no Content-Type and no data, then text ``Path:turn.end``.
  The client closes the connection after turn.end.

The audio: a sine tone of ``tone_hz`` plus the SSML's pitch in Hz, with a syllable-like envelope per
word, lasting ``seconds_per_char`` per character of text divided by (1 + rate %/100): tests can check
that rate and pitch reached the "service" by the audio's length and frequency.

Modes (``mode``, settable from any thread): ``ok``; ``unauthorised`` (handshake refused with 403,
with a Date header, as Microsoft does: the SDK corrects its clock and tries once more);
``rate_limited`` (429); ``fail_times:N`` (the next N handshakes refused with 503, then ok);
``stall`` (accept, read the request, never answer); ``disconnect`` (send about half the audio, then
drop the TCP connection); ``close_early`` (half the audio, then a clean websocket close without
turn.end); ``no_audio`` (turn.start then turn.end). A request whose text contains ``[stall]``
stalls whatever the mode.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import parse_qsl

import av
import numpy as np
from aiohttp import WSMsgType, web

from tests.standins.server import STALL_MARK, StandInServer, pcm16, tone

PATH = "/consumer/speech/synthesize/readaloud/edge/v1"
TRUSTED_CLIENT_TOKEN = "6A5AA1D4EAFF4E9FB37E23D68491D6F4"
SAMPLE_RATE = 24000
TICKS = 10_000_000


def _headers_and_body(message: str) -> tuple[dict[str, str], str]:
    head, _, body = message.partition("\r\n\r\n")
    headers = dict(line.split(":", 1) for line in head.split("\r\n") if ":" in line)
    return headers, body


def _text_frame(request_id: str, path: str, body: dict) -> str:
    return (f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\n"
            f"Path:{path}\r\n\r\n{json.dumps(body)}")


def _audio_frame(request_id: str, stream_id: str, mp3: bytes) -> bytes:
    headers = f"X-RequestId:{request_id}\r\n"
    if mp3:  # the end-of-audio frame has no Content-Type
        headers += "Content-Type:audio/mpeg\r\n"
    headers += f"X-StreamId:{stream_id}\r\nPath:audio\r\n"
    raw = headers.encode()
    return len(raw).to_bytes(2, "big") + raw + mp3


def speech(text: str, seconds_per_char: float, tone_hz: float, rate_pct: int) -> tuple[np.ndarray, list]:
    """The tone for ``text`` and its word boundaries [(word, start_s, duration_s)]."""
    duration = max(0.3, seconds_per_char * len(text) / (1 + rate_pct / 100))
    n = int(duration * SAMPLE_RATE)
    envelope = np.full(n, 0.25)
    words = text.split() or [text]
    total = sum(len(w) + 1 for w in words)
    bounds, at = [], 0.0
    for word in words:
        length = duration * (len(word) + 1) / total
        a, b = int(at * SAMPLE_RATE), int((at + length * 0.85) * SAMPLE_RATE)
        envelope[a:b] = np.sin(np.linspace(0, np.pi, max(b - a, 1))) * 0.6 + 0.25
        bounds.append((word, at, length * 0.85))
        at += length
    return (envelope * tone(n, SAMPLE_RATE, tone_hz, amplitude=0.5)).astype(np.float32), bounds


def encode_mp3(samples: np.ndarray) -> bytes:
    """MP3, 24 kHz mono 48 kbit/s CBR (the format the SDK asks for), with PyAV's LAME encoder."""
    codec = av.CodecContext.create("libmp3lame", "w")
    codec.sample_rate, codec.layout, codec.format, codec.bit_rate = SAMPLE_RATE, "mono", "s16p", 48000
    codec.open()
    pcm = np.frombuffer(pcm16(samples), dtype="<i2")
    size, out = codec.frame_size, bytearray()
    for i in range(0, len(pcm), size):
        part = np.pad(pcm[i:i + size], (0, max(0, size - len(pcm[i:i + size]))))
        frame = av.AudioFrame.from_ndarray(part.reshape(1, -1), format="s16p", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, i
        out += b"".join(bytes(p) for p in codec.encode(frame))
    out += b"".join(bytes(p) for p in codec.encode(None))
    return bytes(out)


class EdgeTTSStandIn(StandInServer):
    """The server, on 127.0.0.1 in a thread and event loop of its own. ``requests`` holds one dict
    per connection (handshake query and headers, speech.config, SSML and what it asked for, the
    outcome, timings on time.monotonic()); ``disconnects`` counts connections the client closed
    before turn.end."""

    SCHEME, URL_PATH = "ws", f"{PATH}?TrustedClientToken={TRUSTED_CLIENT_TOKEN}"
    MODES = ("ok", "unauthorised", "rate_limited", "stall", "disconnect", "close_early", "no_audio",
             "fail_times:")

    def __init__(self, seconds_per_char: float = 0.06, tone_hz: float = 440.0,
                 frame_bytes: int = 1200, frame_interval_s: float = 0.04, mode: str = "ok"):
        super().__init__(mode)
        self.seconds_per_char, self.tone_hz = seconds_per_char, tone_hz
        self.frame_bytes, self.frame_interval_s = frame_bytes, frame_interval_s

    def routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self._handle)

    @property
    def disconnects(self) -> int:
        return sum(1 for r in self.requests if r.get("closed_early"))

    def wait_closed(self, index: int, timeout: float) -> dict | None:
        """Connection ``index``'s record once the server saw it end, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.requests
            if index < len(records) and records[index].get("closed_at") is not None:
                return records[index]
            time.sleep(0.01)
        return None

    # -- the server, in its own loop ------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = {"query": dict(parse_qsl(request.query_string)), "headers": dict(request.headers),
                  "opened_at": time.monotonic(), "closed_at": None, "closed_early": False,
                  "audio_bytes_sent": 0, "finished_sending_at": None}
        self._add_record(record)
        outcome = self.failure()
        refusals = {"unauthorised": 403, "rate_limited": 429, "transient": 503}
        if outcome in refusals:
            self._update(record, outcome=f"refused {refusals[outcome]}", closed_at=time.monotonic())
            return web.Response(status=refusals[outcome], text="refused by the stand-in")

        ws = web.WebSocketResponse(compress=True)
        await ws.prepare(request)
        closed = asyncio.Event()
        try:
            for _ in range(2):  # speech.config, then the SSML
                msg = await ws.receive(timeout=10)
                if msg.type != WSMsgType.TEXT:
                    self._update(record, outcome=f"client sent {msg.type.name}")
                    return ws
                self._take_request(record, msg.data)
            watcher = asyncio.create_task(self._watch(ws, record, closed))
            if outcome == "stall" or STALL_MARK in record.get("text", ""):
                self._update(record, outcome="stalled")
                await closed.wait()
            else:
                await self._answer(request, ws, record, outcome, closed)
            watcher.cancel()
        finally:
            if record["closed_at"] is None:
                self._update(record, closed_at=time.monotonic())
        return ws

    async def _watch(self, ws: web.WebSocketResponse, record: dict, closed: asyncio.Event) -> None:
        """Read until the client goes (aiohttp answers its close frame): marks when it did."""
        async for _ in ws:
            pass
        early = record.get("turn_end_sent_at") is None
        self._update(record, closed_at=time.monotonic(), closed_early=early)
        closed.set()

    def _take_request(self, record: dict, message: str) -> None:
        headers, body = _headers_and_body(message)
        if headers.get("Path") == "speech.config":
            self._update(record, speech_config_headers=headers, speech_config=json.loads(body))
        elif headers.get("Path") == "ssml":
            root = ET.fromstring(body)
            voice = root.find("{*}voice")
            prosody = voice.find("{*}prosody")
            self._update(record, ssml_headers=headers, ssml=body, voice=voice.get("name"),
                         rate=prosody.get("rate"), pitch=prosody.get("pitch"),
                         volume=prosody.get("volume"), text="".join(prosody.itertext()))

    async def _answer(self, request: web.Request, ws: web.WebSocketResponse, record: dict,
                      outcome: str, closed: asyncio.Event) -> None:
        request_id = record["ssml_headers"].get("X-RequestId", uuid.uuid4().hex)
        stream_id = uuid.uuid4().hex.upper()
        await ws.send_str(_text_frame(request_id, "turn.start", {"context": {"serviceTag": stream_id}}))
        await ws.send_str(_text_frame(request_id, "response", {
            "context": {"serviceTag": stream_id}, "audio": {"type": "inline", "streamId": stream_id}}))
        if outcome != "no_audio":
            rate_pct = int(re.sub(r"[^-+\d]", "", record["rate"]) or 0)
            pitch_hz = int(re.sub(r"[^-+\d]", "", record["pitch"]) or 0)
            samples, words = speech(record["text"], self.seconds_per_char, self.tone_hz + pitch_hz, rate_pct)
            mp3 = encode_mp3(samples)
            self._update(record, audio_seconds=len(samples) / SAMPLE_RATE, tone_hz=self.tone_hz + pitch_hz,
                         mp3_bytes=len(mp3))
            options = record["speech_config"]["context"]["synthesis"]["audio"]["metadataoptions"]
            kind = "WordBoundary" if options.get("wordBoundaryEnabled") == "true" else "SentenceBoundary"
            if kind == "SentenceBoundary":
                words = [(record["text"], 0.0, len(samples) / SAMPLE_RATE)]
            pieces = [mp3[i:i + self.frame_bytes] for i in range(0, len(mp3), self.frame_bytes)]
            cut = len(pieces) // 2 if outcome in ("disconnect", "close_early") else None
            sent_s = 0.0
            for number, piece in enumerate(pieces):
                if number == cut:
                    if outcome == "disconnect":
                        request.transport.abort()  # no close frame: the TCP connection just ends
                    else:
                        await ws.close()
                    self._update(record, outcome=outcome)
                    return
                await ws.send_bytes(_audio_frame(request_id, stream_id, piece))
                self._update(record, audio_bytes_sent=record["audio_bytes_sent"] + len(piece))
                sent_s += len(piece) * 8 / 48000
                while words and words[0][1] <= sent_s:  # a boundary once its audio has gone out
                    word, at, length = words.pop(0)
                    await ws.send_str(_text_frame(request_id, "audio.metadata", {"Metadata": [{
                        "Type": kind, "Data": {
                            "Offset": int(at * TICKS), "Duration": int(length * TICKS),
                            "text": {"Text": word, "Length": len(word), "BoundaryType": kind}}}]}))
                try:  # pace the frames; stop at once if the client goes
                    await asyncio.wait_for(closed.wait(), self.frame_interval_s)
                    self._update(record, outcome="client closed")
                    return
                except TimeoutError:
                    pass
            self._update(record, finished_sending_at=time.monotonic())
            await ws.send_bytes(_audio_frame(request_id, stream_id, b""))
        await ws.send_str(_text_frame(request_id, "turn.end", {}))
        self._update(record, turn_end_sent_at=time.monotonic(), outcome="ok")
        try:  # the client closes after turn.end
            await asyncio.wait_for(closed.wait(), 5)
        except TimeoutError:
            await ws.close()
