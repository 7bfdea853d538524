"""A stand-in for Qwen-Omni's OpenAI-compatible chat completions (DashScope compatible mode).

Protocol (what the ``openai`` SDK sends and reads):

- ``POST {base}/chat/completions`` with ``Authorization: Bearer <key>`` and a JSON body: ``model``,
  ``messages`` (system, history, then the user, whose content is text or a list holding
  ``{"type": "input_audio", "input_audio": {"data": "data:;base64,<WAV>", "format": "wav"}}``),
  ``modalities: ["text", "audio"]``, ``audio: {"voice", "format": "wav"}``, ``stream: true``,
  ``stream_options: {"include_usage": true}``, optionally ``max_tokens``, ``temperature``.
- The answer is ``text/event-stream``: ``data: {chunk}`` lines, each chunk
  ``{"id", "object": "chat.completion.chunk", "created", "model", "choices": [{"index": 0,
  "delta": {...}, "finish_reason": null, "logprobs": null}], "usage": null}``. The first delta is
  ``{"role": "assistant", "content": ""}``; then per word a ``{"content": word}`` delta (when
  ``text_field`` is "content" or "both"), a ``{"audio": {"transcript": word}}`` delta (when it is
  "transcript" or "both") and ``{"audio": {"data": base64 PCM16 mono 24 kHz, "id", "expires_at"}}``
  deltas; then ``finish_reason: "stop"`` with an empty delta, a chunk with ``choices: []`` and
  ``usage`` (prompt/completion tokens with audio/text details), and ``data: [DONE]``.
- Errors are HTTP statuses with OpenAI-style bodies ``{"error": {"message", "type", "param",
  "code"}}``: 401 invalid_api_key, 400 Arrearage (DashScope's "account in arrears"; mode
  "quota_429": 429 insufficient_quota), 429 limit_requests, 503 for a transient failure.

Modes (``mode``, settable while running): ok, unauthorised, quota, quota_429, rate_limited,
fail_times:N (the next N requests fail with 503), stall (never answers), disconnect (drops the
connection after a few chunks). A request whose typed text or history holds "[stall]" stalls
whatever the mode. The reply is ``reply`` (a sentence) spoken as a 440 Hz tone of 0.06 s a
character, sent in pieces ``pace_s`` apart so streaming can be seen. A request whose key is not
``key`` is refused as unauthorised. ``requests`` holds one record per request.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
import wave

from aiohttp import web

from tests.standins.server import STALL_MARK, StandInServer, pcm16, speech_samples, tone

_ERRORS = {
    "unauthorised": (401, {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                           "param": None, "code": "invalid_api_key"}),
    "quota": (400, {"message": "Access denied, please make sure your account is in good standing.",
                    "type": "Arrearage", "param": None, "code": "Arrearage"}),
    "quota_429": (429, {"message": "You exceeded your current quota.", "type": "insufficient_quota",
                        "param": None, "code": "insufficient_quota"}),
    "rate_limited": (429, {"message": "Requests rate limit exceeded, please try again later.",
                           "type": "limit_requests", "param": None, "code": "limit_requests"}),
    "transient": (503, {"message": "The service is temporarily unavailable.", "type": "server_error",
                        "param": None, "code": "ServiceUnavailable"}),
}


def _describe_messages(messages: list) -> list:
    """The messages as received, with input audio decoded to its length and sample rate."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "input_audio":
                    data = part["input_audio"]["data"]
                    wav = base64.b64decode(data.split(",", 1)[1])
                    with wave.open(io.BytesIO(wav)) as w:
                        parts.append({"type": "input_audio", "format": part["input_audio"].get("format"),
                                      "prefix": data.split(",", 1)[0], "samples": w.getnframes(),
                                      "sample_rate": w.getframerate(), "channels": w.getnchannels(),
                                      "width": w.getsampwidth()})
                else:
                    parts.append(part)
            content = parts
        out.append({"role": m.get("role"), "content": content})
    return out


class OpenAIOmniStandin(StandInServer):
    URL_PATH = "/compatible-mode/v1"
    MODES = ("ok", "unauthorised", "quota", "quota_429", "rate_limited", "stall", "disconnect",
             "fail_times:")

    def __init__(self, key: str = "sk-standin-key", reply: str = "Hello from the stand-in.",
                 pace_s: float = 0.03, text_field: str = "both"):
        super().__init__()
        self.key, self.reply, self.pace_s, self.text_field = key, reply, pace_s, text_field

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/compatible-mode/v1/chat/completions", self._completions)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record = {"auth": request.headers.get("Authorization"), "model": body.get("model"),
                  "modalities": body.get("modalities"), "audio": body.get("audio"),
                  "stream": body.get("stream"), "stream_options": body.get("stream_options"),
                  "max_tokens": body.get("max_tokens"), "temperature": body.get("temperature"),
                  "messages": _describe_messages(body.get("messages") or []),
                  "received_at": time.monotonic(), "first_audio_at": None, "finished_at": None,
                  "client_closed_at": None}
        self._add_record(record)
        texts = [m["content"] for m in body.get("messages") or [] if isinstance(m.get("content"), str)]
        stalled = any(STALL_MARK in t for t in texts)
        failure = "unauthorised" if record["auth"] != f"Bearer {self.key}" else self.failure()
        if failure in _ERRORS:
            status, error = _ERRORS[failure]
            return web.json_response({"error": error}, status=status)
        if failure == "stall" or stalled:
            await asyncio.sleep(3600)  # cancelled when the server stops

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), body.get("model")

        def chunk(delta=None, finish=None, usage=None, choices=True) -> bytes:
            data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": None, "usage": usage,
                    "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish,
                                 "logprobs": None}] if choices else []}
            return f"data: {json.dumps(data)}\n\n".encode()

        words = self.reply.split(" ")
        pieces = [chunk({"role": "assistant", "content": ""})]
        audio_id = f"audio_{uuid.uuid4().hex[:16]}"
        for i, word in enumerate(words):
            word = word if i == len(words) - 1 else word + " "
            if self.text_field in ("content", "both"):
                pieces.append(chunk({"content": word}))
            if self.text_field in ("transcript", "both"):
                pieces.append(chunk({"audio": {"transcript": word}}))
            samples = tone(speech_samples(word, 24000), 24000)
            for start in range(0, len(samples), 4800):  # 0.2 s of audio a chunk
                pieces.append(chunk({"audio": {"data": base64.b64encode(pcm16(samples[start:start + 4800])).decode(),
                                               "id": audio_id, "expires_at": created + 86400}}))
        pieces.append(chunk({}, finish="stop"))
        pieces.append(chunk(usage={"prompt_tokens": 120, "completion_tokens": 60, "total_tokens": 180,
                                   "prompt_tokens_details": {"audio_tokens": 100, "text_tokens": 20},
                                   "completion_tokens_details": {"audio_tokens": 45, "text_tokens": 15}},
                            choices=False))
        pieces.append(b"data: [DONE]\n\n")
        try:
            for n, piece in enumerate(pieces):
                if failure == "disconnect" and n == 4:
                    request.transport.close()  # drop the connection mid-reply, no end of stream
                    self._update(record, dropped_at=time.monotonic())
                    return response
                if b'"data"' in piece and record["first_audio_at"] is None:
                    self._update(record, first_audio_at=time.monotonic())
                await response.write(piece)
                await asyncio.sleep(self.pace_s)
            await response.write_eof()
            self._update(record, finished_at=time.monotonic())
        except (ConnectionError, RuntimeError):
            self._update(record, client_closed_at=time.monotonic())  # the client went away mid-reply
        return response
