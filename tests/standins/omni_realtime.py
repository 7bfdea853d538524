"""A stand-in for the Qwen-Omni realtime websocket (DashScope), as dashscope's
``OmniRealtimeConversation`` speaks it.

Protocol:

- The client opens ``{url}?model=<model>`` with ``Authorization: Bearer <key>``. A refused key is an
  HTTP 401 answer to the handshake (no websocket); a transient failure 503, rate limiting 429.
- On connect the server sends ``session.created`` ``{"session": {"id", "model", "modalities",
  "voice", "input_audio_format", "output_audio_format", ...}}``.
- Client events (JSON text frames, each with ``event_id`` and ``type``): ``session.update``
  ``{"session": {"modalities", "voice", "input_audio_format", "output_audio_format",
  "input_audio_transcription": {"model"} | null, "turn_detection": {...} | null, "instructions",
  ...}}`` -> ``session.updated``; ``conversation.item.create`` ``{"item": {...}}`` ->
  ``conversation.item.created``; ``input_audio_buffer.append`` ``{"audio": base64 PCM16 16 kHz}``;
  ``input_audio_buffer.commit`` -> ``input_audio_buffer.committed`` ``{"item_id"}``,
  ``conversation.item.created``, and (transcription on) ``conversation.item.input_audio_
  transcription.completed`` ``{"item_id", "content_index": 0, "transcript"}``; ``response.create``
  -> ``response.created`` ``{"response": {"id", "status": "in_progress"}}``,
  ``response.output_item.added``, ``response.content_part.added``, per word
  ``response.audio_transcript.delta`` ``{"delta": text}`` and ``response.audio.delta``
  ``{"delta": base64 PCM16 mono 24 kHz}``, then ``response.audio_transcript.done``,
  ``response.audio.done``, ``response.content_part.done``, ``response.output_item.done`` and
  ``response.done`` ``{"response": {"status": "completed", "usage"}}``; ``response.cancel`` ->
  ``response.done`` with status "cancelled"; ``session.finish`` -> ``session.finished``.
- Errors after connecting: ``{"type": "error", "error": {"type", "code", "message"}}`` (the quota
  failure is one, code "Arrearage", sent in answer to session.update).

Modes as in openai_omni.py (ok, unauthorised, quota, rate_limited, fail_times:N, stall: answers
nothing after session.updated, disconnect: drops the connection after a few deltas); a session
whose instructions (where the client puts the history) or text items hold "[stall]" gets the
user's transcript but never a response, whatever the mode. ``requests`` holds one record per
connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

from aiohttp import WSMsgType, web

from tests.standins.server import STALL_MARK, StandInServer, pcm16, speech_samples, tone

_HANDSHAKE = {"unauthorised": 401, "rate_limited": 429, "transient": 503}


class OmniRealtimeStandin(StandInServer):
    SCHEME, URL_PATH = "ws", "/api-ws/v1/realtime"
    MODES = ("ok", "unauthorised", "quota", "rate_limited", "stall", "disconnect", "fail_times:")

    def __init__(self, key: str = "sk-standin-key", reply: str = "Hello from the stand-in.",
                 pace_s: float = 0.03, transcript: str = "what is the weather"):
        super().__init__()
        self.key, self.reply, self.pace_s, self.transcript = key, reply, pace_s, transcript

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api-ws/v1/realtime", self._session)

    async def _session(self, request: web.Request):
        record = {"auth": request.headers.get("Authorization"), "model": request.query.get("model"),
                  "session": None, "items": [], "audio_bytes": 0, "appends": 0, "commits": 0,
                  "responses": 0, "cancels": 0, "events": [], "connected_at": time.monotonic(),
                  "first_audio_at": None, "finished_at": None, "cancelled_at": None, "closed_at": None}
        self._add_record(record)
        failure = "unauthorised" if record["auth"] != f"Bearer {self.key}" else self.failure()
        if failure in _HANDSHAKE:
            self._update(record, refused=_HANDSHAKE[failure])
            return web.json_response({"code": failure, "message": "refused"}, status=_HANDSHAKE[failure])
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session_id = f"sess_{uuid.uuid4().hex[:16]}"
        session = {"id": session_id, "object": "realtime.session", "model": record["model"],
                   "modalities": ["text", "audio"], "voice": "Chelsie", "input_audio_format": "pcm16",
                   "output_audio_format": "pcm24", "input_audio_transcription": {"model": "gummy-realtime-v1"},
                   "turn_detection": {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 800},
                   "instructions": ""}
        send_lock = asyncio.Lock()

        async def send(kind: str, **fields) -> None:
            async with send_lock:
                await ws.send_str(json.dumps({"event_id": f"event_{uuid.uuid4().hex[:20]}", "type": kind, **fields}))

        responding: asyncio.Task | None = None
        item_id = None
        try:
            await send("session.created", session=session)
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                event = json.loads(msg.data)
                kind = event.get("type")
                with self._lock:
                    record["events"].append(kind)
                if kind == "session.update":
                    self._update(record, session=event.get("session"))
                    if failure == "quota":
                        await send("error", error={"type": "invalid_request_error", "code": "Arrearage",
                                                   "message": "Access denied, please make sure your "
                                                              "account is in good standing."})
                        continue
                    session.update(event.get("session") or {})
                    await send("session.updated", session=session)
                elif failure == "stall" and kind != "input_audio_buffer.append":
                    continue  # the service went silent
                elif kind == "conversation.item.create":
                    with self._lock:
                        record["items"].append(event.get("item"))
                    await send("conversation.item.created", item={"id": f"item_{uuid.uuid4().hex[:12]}",
                                                                   **(event.get("item") or {})})
                elif kind == "input_audio_buffer.append":
                    audio = base64.b64decode(event.get("audio", ""))
                    self._update(record, appends=record["appends"] + 1,
                                 audio_bytes=record["audio_bytes"] + len(audio))
                elif kind == "input_audio_buffer.commit":
                    self._update(record, commits=record["commits"] + 1)
                    item_id = f"item_{uuid.uuid4().hex[:12]}"
                    await send("input_audio_buffer.committed", previous_item_id=None, item_id=item_id)
                    await send("conversation.item.created", item={
                        "id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
                        "role": "user", "content": [{"type": "input_audio"}]})
                    if session.get("input_audio_transcription"):
                        await send("conversation.item.input_audio_transcription.completed",
                                   item_id=item_id, content_index=0, transcript=self.transcript)
                elif kind == "response.create":
                    self._update(record, responses=record["responses"] + 1)
                    texts = [session.get("instructions") or ""] + [
                        c.get("text", "") for it in record["items"] for c in (it.get("content") or [])]
                    if any(STALL_MARK in t for t in texts):
                        continue  # never answers
                    responding = asyncio.create_task(self._respond(ws, send, record, failure, request))
                elif kind == "response.cancel":
                    self._update(record, cancels=record["cancels"] + 1, cancelled_at=time.monotonic())
                    if responding is not None and not responding.done():
                        responding.cancel()
                        await send("response.done", response={"id": "resp", "status": "cancelled"})
                elif kind == "session.finish":
                    await send("session.finished")
                    break
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._update(record, closed_at=time.monotonic())
            if responding is not None:
                responding.cancel()
        return ws

    async def _respond(self, ws, send, record: dict, failure: str, request: web.Request) -> None:
        response_id = f"resp_{uuid.uuid4().hex[:16]}"
        item = {"id": f"item_{uuid.uuid4().hex[:12]}", "object": "realtime.item", "type": "message",
                "status": "in_progress", "role": "assistant", "content": []}
        try:
            await send("response.created", response={"id": response_id, "object": "realtime.response",
                                                     "status": "in_progress", "output": []})
            await send("response.output_item.added", response_id=response_id, output_index=0, item=item)
            await send("response.content_part.added", response_id=response_id, item_id=item["id"],
                       output_index=0, content_index=0, part={"type": "audio", "transcript": ""})
            words = self.reply.split(" ")
            deltas = 0
            for i, word in enumerate(words):
                word = word if i == len(words) - 1 else word + " "
                await send("response.audio_transcript.delta", response_id=response_id, item_id=item["id"],
                           output_index=0, content_index=0, delta=word)
                samples = tone(speech_samples(word, 24000), 24000)
                for start in range(0, len(samples), 4800):
                    if failure == "disconnect" and deltas == 2:
                        self._update(record, dropped_at=time.monotonic())
                        request.transport.close()  # no close frame: the connection just drops
                        return
                    if record["first_audio_at"] is None:
                        self._update(record, first_audio_at=time.monotonic())
                    await send("response.audio.delta", response_id=response_id, item_id=item["id"],
                               output_index=0, content_index=0,
                               delta=base64.b64encode(pcm16(samples[start:start + 4800])).decode())
                    deltas += 1
                    await asyncio.sleep(self.pace_s)
            for kind in ("response.audio_transcript.done", "response.audio.done",
                         "response.content_part.done", "response.output_item.done"):
                await send(kind, response_id=response_id, item_id=item["id"], output_index=0, content_index=0)
            await send("response.done", response={
                "id": response_id, "object": "realtime.response", "status": "completed",
                "usage": {"total_tokens": 180, "input_tokens": 120, "output_tokens": 60}})
            self._update(record, finished_at=time.monotonic())
        except (ConnectionError, RuntimeError):
            pass
