"""The session server as a plain process beside Ray, calling the stage deployments by handle.

    RAY_ADDRESS=... python -m signaling.standalone serve_config.yaml --port 8001

It serves the same session routes and page as the Gateway replica, from an ordinary process (at the
priority it was started with, not Ray's worker niceness). load_tests/bench_sessions.py uses it to
compare the two placements; docs/architecture.md records the result and which one ships.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import ray
import uvicorn
from fastapi import FastAPI, Request, Response
from ray import serve

from avatarchat.access import check_access, load_policy
from avatarchat.avatar.media_avatar import media_avatar
from avatarchat.backends.base import create_backend
from avatarchat.config import app_args_from_serve_config, parse_config
from deployments.handle_ports import HandlePorts
from signaling import routes, web
from avatarchat.webrtc.service import SessionService, session_deps


def build(config_path: str, app_name: str = "avatar", host: str = "127.0.0.1") -> FastAPI:
    config = parse_config(app_args_from_serve_config(config_path), source=config_path)
    policy = load_policy(config.access, host, config_path)  # the Gateway's tokens and refusals
    names = {"asr": "ASR", "llm": "LLM", "tts": "TTS", "avatar": "Avatar", "speech_to_speech": "SpeechToSpeech"}
    handles = {stage: serve.get_deployment_handle(name, app_name) if stage in config.stages else None
               for stage, name in names.items()}
    here = asyncio.run(media_avatar(config.stage("avatar"), handles["avatar"]))
    service = SessionService(config.sessions, session_deps(
        config, HandlePorts(**handles, local_avatar=here.local), create_backend(config.stage("vad")),
        here.painter, create_backend(config.stage("end_of_turn"))))
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await service.close_all()

    api = FastAPI(title="avatar-chat sessions", lifespan=lifespan)
    api.state.access = policy
    api.middleware("http")(check_access)

    @api.post("/v1/sessions")
    async def create(request: Request) -> Response:
        return await routes.create_session(service, request)

    @api.delete("/v1/sessions/{session_id}")
    async def delete(session_id: str) -> Response:
        return await routes.delete_session(service, session_id)

    @api.get("/v1/sessions")
    async def count() -> dict:
        return await routes.count_sessions(service)

    @api.get("/v1/avatar")
    async def avatar() -> Response:
        return await routes.avatar_for_browser(service)

    @api.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.get("/")
    async def page() -> Response:
        return web.index()

    @api.get("/static/{name}")
    async def static(name: str) -> Response:
        return web.static_file(name)

    return api


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    ray.init(address="auto", namespace="serve", log_to_driver=False)
    uvicorn.run(build(args.config, host=args.host), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
