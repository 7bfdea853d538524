"""The HTTP entry point: runs a turn through the stage deployments and streams its events back.

    POST /v1/turns   body: audio/wav (a recorded utterance) or JSON {text | audio_wav_b64,
                     history, realtime}; answers application/x-ndjson, one event per line
                     (see docs/api.md)
    POST /v1/sessions        a live WebRTC session (WHIP-shaped; see docs/protocol.md)
    DELETE /v1/sessions/{id} end it;  GET /v1/sessions: how many are live
    GET  /v1/avatar  the avatar pack for drawing the face in the browser (render=browser)
    GET  /v1/ice     the ICE (STUN/TURN) servers a browser should use, passwords resolved here
    GET  /           the web page (signaling/static/: plain HTML + JS + CSS); /static/{name}
    GET  /v1/info    stages, avatar pack, limits, sessions
    GET  /v1/stages  each stage deployment's call counters
    GET  /v1/diagnostics     this process's memory, threads, asyncio tasks, live peer connections
                             and each stage replica's memory (leak checks; no user content)
    GET  /healthz

The Gateway holds no session: it is stateless and autoscales. Live sessions (peer connections,
their VAD streams, the renderer that draws their frames) are held by the Media replicas
(deployments/media.py); the session routes reach the one holding a session through the Media
deployment's request router (deployments/media_plane.py, deployments/session_routing.py).
VAD for POST /v1/turns runs here, beside the request: a 32 ms chunk costs ~0.1 ms, a Ray hop more.
"""


import asyncio
import json
import logging

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from ray import serve

from avatarchat import wire
from avatarchat.access import check_access, load_policy
from avatarchat.backends.base import create_backend
from avatarchat.config import ServiceConfig
from avatarchat.errors import BadInput
from avatarchat.http_io import json_error, read_body
from avatarchat.events import ReplyDone, TurnFailed
from avatarchat.messages import AudioChunk, Transcript
from avatarchat.process_stats import process_stats
from avatarchat.recording import Recorder
from avatarchat.segmenter import find_speech
from avatarchat.turn import Turn, TurnOptions
from avatarchat.turn_request import TurnRequest, parse_turn_request
from deployments.handle_ports import HandlePorts
from signaling import routes as session_routes
from signaling import web
from deployments.media_plane import MediaPlane
from avatarchat.webrtc.service import check_ice_secrets, ice_servers

log = logging.getLogger("ray.serve")
api = FastAPI(title="avatar-chat", version="0.1.0")


api.middleware("http")(check_access)  # every route, /docs and /openapi.json included

# Audio kept before the first and after the last detected speech, so words are not clipped.
_SPEECH_MARGIN_S = 0.25


def serve_http_host() -> str:
    """The address Serve's HTTP proxies bind (``http_options.host``), as the controller has it.
    Local testing mode starts no Ray and serves no HTTP: loopback."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    if not ray.is_initialized():
        return "127.0.0.1"
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    return ray.get(controller.get_http_config.remote(), timeout=60).host


@serve.deployment(
    name="Gateway",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
    graceful_shutdown_timeout_s=130,  # > limits.turn_timeout_s: a POST /v1/turns in progress finishes
    max_constructor_retry_count=3,  # a missing model file does not fix itself
)
@serve.ingress(api)
class Gateway:
    def __init__(self, config: ServiceConfig, media, asr, llm, tts, avatar, speech_to_speech=None):
        self.config = config
        # before anything loads: a token variable that is unset, or an open API beyond loopback,
        # fails the start here, naming the key
        api.state.access = load_policy(config.access, serve_http_host(), "Serve config applications[].args")
        # the stage deployments this graph has (speech to speech: no llm or tts)
        self.handles = {name: h for name, h in (("asr", asr), ("llm", llm), ("tts", tts),
                                                ("speech_to_speech", speech_to_speech), ("avatar", avatar))
                        if h is not None}
        self.ports = HandlePorts(asr, llm, tts, avatar, speech_to_speech=speech_to_speech)
        self.vad = create_backend(config.stage("vad"))
        self.recorder = Recorder(config.record_dir) if config.record_dir else None
        check_ice_secrets(config.sessions, "Serve config applications[].args")  # GET /v1/ice resolves them
        self.sessions = MediaPlane(media, config.sessions)

    @api.post("/v1/sessions")
    async def create_session(self, request: Request) -> Response:
        return await session_routes.create_session(self.sessions, request)

    @api.delete("/v1/sessions/{session_id}")
    async def delete_session(self, session_id: str) -> Response:
        return await session_routes.delete_session(self.sessions, session_id)

    @api.get("/v1/sessions")
    async def count_sessions(self) -> dict:
        return await session_routes.count_sessions(self.sessions)

    @api.get("/v1/avatar")
    async def avatar_for_browser(self) -> Response:
        """The avatar pack for render=browser sessions: photo and warp fields (docs/protocol.md)."""
        return await session_routes.avatar_for_browser(self.sessions)

    @api.get("/v1/ice")
    async def ice(self) -> dict:
        """ICE servers for the browser's RTCPeerConnection ([] by default: host candidates only)."""
        return {"iceServers": ice_servers(self.config.sessions)}

    @api.get("/", include_in_schema=False)
    async def page(self) -> Response:
        return web.index()

    @api.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> Response:
        return web.static_file(name)

    @api.get("/v1/diagnostics")
    async def diagnostics(self) -> dict:
        names = tuple(self.handles)
        stages, media = await asyncio.gather(
            asyncio.gather(*(self.handles[n].diagnostics.remote() for n in names)),
            self.sessions.each_replica("diagnostics"))
        return {"gateway": process_stats(trim=True), "media": media, "stages": dict(zip(names, stages))}

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/info")
    async def info(self) -> dict:
        avatar = await self.handles["avatar"].describe.remote()
        return {"avatar": avatar,
                "stages": {name: s.backend for name, s in self.config.stages.items()},
                "limits": self.config.limits.model_dump(),
                "pacing": self.config.pacing.model_dump(),
                "sessions": await self.sessions.summary()}

    @api.get("/v1/stages")
    async def stages(self) -> dict:
        return await self.stage_stats()

    async def stage_stats(self) -> dict:
        """Each stage deployment's call counters (one replica's view per stage)."""
        names = tuple(self.handles)
        stats = await asyncio.gather(*(self.handles[n].call_stats.remote() for n in names))
        return dict(zip(names, stats))

    @api.post("/v1/turns")
    async def turns(self, request: Request):
        try:
            body = await read_body(request, self.config.limits.max_upload_bytes)
            realtime = request.query_params.get("realtime")
            parsed = parse_turn_request(
                request.headers.get("content-type", ""), body, self.config.limits,
                None if realtime is None else realtime.lower() in ("1", "true", "yes"))
            user, speech_end = await self._user_input(parsed)
        except BadInput as err:
            return json_error(err.status, err.reason)
        lines = (json.dumps(event) + "\n" async for event in self._events(parsed, user, speech_end))
        return StreamingResponse(lines, media_type="application/x-ndjson")

    async def run_turn(self, parsed: TurnRequest):
        """The same turn as POST /v1/turns, for handle callers: yields the wire events (dicts).
        Bad input yields one error event instead of raising."""
        try:
            user, speech_end = await self._user_input(parsed)
        except BadInput as err:
            yield {"type": "error", "stage": "input", "reason": err.reason}
            return
        async for event in self._events(parsed, user, speech_end):
            yield event

    async def _user_input(self, parsed: TurnRequest) -> tuple[AudioChunk | str, float | None]:
        if parsed.audio is None:
            return parsed.text, None
        audio = parsed.audio
        spans = await asyncio.to_thread(find_speech, audio.samples, audio.sample_rate, self.vad)
        if not spans:
            raise BadInput("no speech found in the audio", 422)
        start = max(0.0, spans[0][0] - _SPEECH_MARGIN_S)
        end = min(audio.duration, spans[-1][1] + _SPEECH_MARGIN_S)
        a, b = int(start * audio.sample_rate), int(end * audio.sample_rate)
        return AudioChunk(audio.samples[a:b], audio.sample_rate), spans[-1][1]

    async def _events(self, parsed: TurnRequest, user, speech_end: float | None):
        limits, pacing = self.config.limits, self.config.pacing
        options = TurnOptions(lead_s=pacing.lead_s,
                              realtime=pacing.realtime if parsed.realtime is None else parsed.realtime,
                              max_history_messages=limits.max_history_messages)
        turn = Turn(self.ports, parsed.history, options)
        turn.timings.speech_end_in_input = speech_end
        user_text, reply_text = parsed.text or "", ""
        events = turn.run(user)
        try:
            async with asyncio.timeout(limits.turn_timeout_s):
                async for event in events:
                    if isinstance(event, Transcript):
                        user_text = event.text
                    elif isinstance(event, ReplyDone):
                        reply_text = event.text
                    yield wire.encode(event)
        except TimeoutError:
            yield wire.encode(TurnFailed("turn", f"turn exceeded turn_timeout_s={limits.turn_timeout_s}"))
        finally:
            await events.aclose()
            if self.recorder is not None:
                await asyncio.to_thread(self.recorder.save, parsed.audio, user_text, reply_text)
