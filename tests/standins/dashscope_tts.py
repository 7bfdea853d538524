"""A stand-in of DashScope's websocket inference endpoint for CosyVoice speech synthesis.

It speaks the protocol the ``dashscope`` SDK (tts_v2.SpeechSynthesizer) speaks with
wss://dashscope.aliyuncs.com/api-ws/v1/inference, so the real SDK runs against it:

* Handshake: a websocket upgrade carrying ``Authorization: Bearer <key>`` (plus the SDK's
  user-agent and x-dashscope-* headers). A refused key is answered as the real service answers it:
  HTTP 401 before the upgrade, with a JSON body ``{"code": "InvalidApiKey", "message": ...}``.
* Client text messages, JSON ``{"header": {"action", "task_id", "streaming": "duplex"}, "payload"}``:
  - ``run-task``: payload model, task_group "audio", task "tts", function "SpeechSynthesizer",
    parameters voice / format / sample_rate / volume / rate / pitch / ...; answered with
    ``{"header": {"event": "task-started", "task_id"}, "payload": {}}``.
  - ``continue-task``: payload.input.text; synthesized in order: a result-generated
    ``sentence-begin`` event, then binary frames of raw little-endian PCM16 mono (a sine tone of
    ``tone_hz`` at the requested sample rate, ``seconds_per_char`` per character), each frame after a
    ``sentence-synthesis`` event, paced at ``speed`` times real time, then ``sentence-end``.
  - ``finish-task``: once the texts are spoken, ``task-finished`` (payload.usage.characters).
    With payload.input.directive "cancel" synthesis stops at once and ``task-finished`` follows.
* Failures: ``{"header": {"event": "task-failed", "task_id", "error_code", "error_message"}}``.

Failure modes (``mode``, settable from any thread): "ok"; "unauthorised" (handshake 401
InvalidApiKey); "quota" (task-failed Arrearage); "rate_limited" (task-failed Throttling);
"fail_times:N" (the next N tasks fail with task-failed InternalError, then ok); "stall" (run-task is
taken and never answered); "disconnect" (``disconnect_after_s`` of audio, then the TCP connection is
dropped without a close frame); "task_failed:CODE" (task-failed with that error code). A task whose
text contains "[stall]" stalls on its own whatever the mode, so one session can hang while another
proceeds.

``requests`` lists one record per connection attempt / task (see ``_new_record``).
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import WSMsgType, web

from tests.standins.server import STALL_MARK, StandInServer, pcm16, speech_samples, tone


def _new_record(headers) -> dict:
    return {
        "authorization": headers.get("Authorization"),
        "user_agent": headers.get("User-Agent"),
        "headers": dict(headers),
        "refused": None,          # the HTTP status when the handshake was refused
        "task_id": None,
        "model": None,
        "parameters": None,       # run-task's payload.parameters
        "run_task": None,         # the whole run-task message
        "texts": [],              # every continue-task text, in order
        "finish_task": False,     # a finish-task came
        "cancelled": False,       # ... with directive "cancel"
        "task_finished": False,   # task-finished was sent
        "failed": None,           # the error_code sent in task-failed
        "stalled": False,
        "dropped": False,         # the stand-in dropped the connection ("disconnect")
        "closed_by_client": False,  # the client closed or went away before task-finished
        "audio_s": 0.0,           # seconds of audio sent
        "opened_at": time.monotonic(),
        "closed_at": None,
    }


_FAILURES = {
    "quota": ("Arrearage", "Access denied, please make sure your account is in good standing."),
    "rate_limited": ("Throttling", "Requests throttling triggered."),
    "transient": ("InternalError", "Internal server error, please retry."),
}


def _task_failure(failure: str) -> tuple[str, str] | None:
    """The task-failed (error_code, error_message) a task meeting ``failure`` gets, if any."""
    if failure.startswith("task_failed:"):
        return failure.split(":", 1)[1], "failed on request"
    return _FAILURES.get(failure)


class DashScopeTTSStandIn(StandInServer):
    """``with DashScopeTTSStandIn() as s: ... s.url ...``; ``s.mode = "quota"`` from any thread."""

    SCHEME, URL_PATH = "ws", "/api-ws/v1/inference"
    MODES = ("ok", "unauthorised", "quota", "rate_limited", "stall", "disconnect", "fail_times:",
             "task_failed:")

    def __init__(self, tone_hz: float = 440.0, seconds_per_char: float = 0.06, speed: float = 4.0,
                 frame_s: float = 0.04, disconnect_after_s: float = 0.4, amplitude: float = 0.5):
        super().__init__()
        self.tone_hz, self.seconds_per_char, self.speed = tone_hz, seconds_per_char, speed
        self.frame_s, self.disconnect_after_s, self.amplitude = frame_s, disconnect_after_s, amplitude

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api-ws/v1/inference", self._handle)
        app.router.add_get("/api-ws/v1/inference/", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = self._add_record(_new_record(request.headers))
        if self.mode == "unauthorised":
            self._update(record, refused=401, closed_at=time.monotonic())
            return web.json_response({"code": "InvalidApiKey", "message": "Invalid API-key provided.",
                                      "request_id": "standin"}, status=401)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = _Connection(self, ws, record, request)
        try:
            await conn.run()
        finally:
            with self._lock:
                if not record["task_finished"] and not record["dropped"] and record["failed"] is None:
                    record["closed_by_client"] = True
                record["closed_at"] = time.monotonic()
        return ws

    def _tone(self, start_sample: int, count: int, rate: int) -> bytes:
        return pcm16(tone(count, rate, self.tone_hz, self.amplitude, start=start_sample))


class _Connection:
    """One websocket: a reader taking client messages, a speaker turning queued texts into audio."""

    def __init__(self, server: DashScopeTTSStandIn, ws: web.WebSocketResponse, record: dict,
                 request: web.Request):
        self.server, self.ws, self.record, self.request = server, ws, record, request
        self.texts: asyncio.Queue = asyncio.Queue()
        self.send_lock = asyncio.Lock()
        self.speaker: asyncio.Task | None = None
        self.task_id = None
        self.rate = 24000
        self.cancelled = asyncio.Event()
        self.stalled = False

    async def send_event(self, event: str, payload: dict | None = None, **header) -> None:
        message = {"header": {"task_id": self.task_id, "event": event, "attributes": {}, **header},
                   "payload": payload or {}}
        async with self.send_lock:
            await self.ws.send_str(json.dumps(message))

    async def run(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if not await self.on_message(json.loads(msg.data)):
                    break
        except ConnectionError:
            pass  # the client went away mid-send
        finally:
            if self.speaker is not None:
                self.speaker.cancel()

    async def on_message(self, message: dict) -> bool:
        """Handle one client message; False ends the connection."""
        header, payload = message.get("header", {}), message.get("payload", {})
        action = header.get("action")
        server, record = self.server, self.record
        if action == "run-task":
            self.task_id = header.get("task_id")
            params = payload.get("parameters", {})
            self.rate = int(params.get("sample_rate") or 24000)
            server._update(record, task_id=self.task_id, model=payload.get("model"), parameters=params,
                           run_task=message)
            failure = server.failure()
            if failure == "stall":
                self.stall()
                return True
            if (error := _task_failure(failure)) is not None:
                code, text = error
                server._update(record, failed=code)
                await self.send_event("task-failed", error_code=code, error_message=text)
                return True  # the SDK closes after task-failed
            await self.send_event("task-started")
            self.speaker = asyncio.create_task(self.speak())
        elif action == "continue-task":
            text = payload.get("input", {}).get("text", "")
            with server._lock:
                record["texts"].append(text)
            if STALL_MARK in text:
                self.stall()
            if not self.stalled:
                self.texts.put_nowait(text)
        elif action == "finish-task":
            cancel = payload.get("input", {}).get("directive") == "cancel"
            server._update(record, finish_task=True, cancelled=record["cancelled"] or cancel)
            if self.stalled:
                return True
            if cancel:
                self.cancelled.set()
                if self.speaker is not None:
                    self.speaker.cancel()
                await self.finish()
            else:
                self.texts.put_nowait(None)
        return True

    def stall(self) -> None:
        self.stalled = True
        self.server._update(self.record, stalled=True)
        if self.speaker is not None:
            self.speaker.cancel()

    async def finish(self) -> None:
        chars = sum(len(t) for t in self.record["texts"])
        await self.send_event("task-finished", {"usage": {"characters": chars}})
        self.server._update(self.record, task_finished=True)

    async def speak(self) -> None:
        try:
            await self._speak()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, cancelled, or the task stalled

    async def _speak(self) -> None:
        server, index, sample = self.server, 0, 0
        frame = max(1, int(self.rate * server.frame_s))
        while True:
            text = await self.texts.get()
            if text is None:
                await self.finish()
                return
            sentence = {"index": index, "words": []}
            await self.send_event("result-generated", {"output": {"type": "sentence-begin",
                                                                  "sentence": sentence, "original_text": text}})
            total = speech_samples(text, self.rate, server.seconds_per_char)
            end = sample + total
            while sample < end:
                count = min(frame, end - sample)
                await self.send_event("result-generated", {"output": {"type": "sentence-synthesis",
                                                                      "sentence": sentence}})
                async with self.send_lock:
                    await self.ws.send_bytes(server._tone(sample, count, self.rate))
                sample += count
                with server._lock:
                    self.record["audio_s"] = sample / self.rate
                if server.mode == "disconnect" and sample / self.rate >= server.disconnect_after_s:
                    server._update(self.record, dropped=True)
                    self.request.transport.abort()  # no close frame: the socket just goes away
                    return
                await asyncio.sleep(count / self.rate / server.speed)
            await self.send_event("result-generated", {"output": {"type": "sentence-end", "sentence": sentence},
                                                       "usage": {"characters": len(text)}})
            index += 1
