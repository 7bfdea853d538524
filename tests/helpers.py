"""Small helpers shared by tests: a real OpenAI-compatible SSE server, and (from avatarchat/, where
the benchmarks import them too) the word error rate and the lip-sync measures."""

import json
import socket
import threading
import time
import uuid

from load_tests.measures.lipsync import mouth_change, sound_to_mouth_lag
from load_tests.measures.wer import edit_distance, normalise_words, wer

__all__ = ["OpenAIServer", "edit_distance", "mouth_change", "normalise_words", "sound_to_mouth_lag", "wer"]

# -- a real OpenAI-compatible chat-completions server over any LLM backend ---------------------

class OpenAIServer:
    """``POST /v1/chat/completions`` (SSE streaming) and ``GET /v1/models`` on 127.0.0.1, served
    by FastAPI + uvicorn in a background thread and answered by ``llm`` (an LLMBackend).

    It stands in for ``python -m llama_cpp.server`` (whose extra dependencies are not installed):
    the same wire format, streamed from a real model when ``llm`` is the llama_cpp backend.
    ``requests`` records each request body; ``api_key`` makes it demand a Bearer token.
    """

    def __init__(self, llm, api_key: str | None = None, model: str = "smollm2"):
        self.llm, self.api_key, self.model = llm, api_key, model
        self.requests: list[dict] = []
        self.disconnects = 0
        self._server = None
        self._thread = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _app(self):
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse

        from avatarchat.messages import ChatMessage, LLMRequest

        app = FastAPI()

        def unauthorised(request: Request):
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": {"message": "invalid api key", "type": "auth"}}, 401)
            return None

        @app.get("/v1/models")
        async def models(request: Request):
            return unauthorised(request) or {"object": "list",
                                            "data": [{"id": self.model, "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            if (denied := unauthorised(request)) is not None:
                return denied
            body = await request.json()
            self.requests.append(body)
            history = tuple(ChatMessage(m["role"], m["content"]) for m in body["messages"]
                            if m["role"] != "system")  # the backend owns its fixed system prompt
            req = LLMRequest(history, max_tokens=body.get("max_tokens"))
            cid, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())

            def event(delta: dict, finish: str | None = None) -> str:
                chunk = {"id": cid, "object": "chat.completion.chunk", "created": created,
                         "model": body.get("model", self.model),
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                return f"data: {json.dumps(chunk)}\n\n"

            async def events():
                finished = False
                try:
                    yield event({"role": "assistant"})
                    async for d in self.llm.stream(req):
                        yield event({"content": d.text})
                    yield event({}, "stop")
                    yield "data: [DONE]\n\n"
                    finished = True
                finally:
                    if not finished:
                        self.disconnects += 1

            return StreamingResponse(events(), media_type="text/event-stream")

        return app

    def start(self) -> "OpenAIServer":
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app(), log_level="warning", lifespan="off", loop="asyncio")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="openai-test-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test OpenAI server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
