"""Sends one turn to the service over HTTP and collects what comes back, with client-side timings."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from avatarchat import wire
from avatarchat.messages import AvatarChunk, ChatMessage, FaceMotion, Frame


class TurnError(RuntimeError):
    pass


@dataclass
class TurnResult:
    user_text: str = ""
    # What the ASR heard besides the words: language code, emotion, audio event (None if not reported)
    user_language: str | None = None
    user_emotion: str | None = None
    user_event: str | None = None
    reply_text: str = ""
    chunks: list[AvatarChunk] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    server_timings: dict = field(default_factory=dict)
    client_timings: dict = field(default_factory=dict)
    error: dict | None = None

    @property
    def sample_rate(self) -> int:
        return self.chunks[0].audio.sample_rate if self.chunks else 24000

    @property
    def fps(self) -> int:
        return self.chunks[0].fps if self.chunks else 25

    def audio(self) -> np.ndarray:
        return (np.concatenate([c.audio.samples for c in self.chunks]) if self.chunks
                else np.zeros(0, np.float32))

    def frames(self) -> list[Frame]:
        """Every frame of the reply in order (FaceMotion, or VideoFrame from an avatar that draws
        its own); a gap (never expected) repeats the previous frame."""
        by_index = {c.first_frame + i: f for c in self.chunks for i, f in enumerate(c.frames)}
        if not by_index:
            return []
        out, last = [], by_index[min(by_index)] if min(by_index) > 0 else FaceMotion()
        for k in range(max(by_index) + 1):
            last = by_index.get(k, last)
            out.append(last)
        return out


class TurnClient:
    def __init__(self, server: str = "http://127.0.0.1:8000", timeout_s: float = 300.0,
                 token: str | None = None):
        self.server = server.rstrip("/")
        self.timeout = httpx.Timeout(timeout_s, connect=10.0)
        # the service's user token (access.user_token_env), as "Authorization: Bearer"
        self.headers = {"authorization": f"Bearer {token}"} if token else {}

    def info(self) -> dict:
        r = httpx.get(f"{self.server}/v1/info", timeout=self.timeout, headers=self.headers)
        r.raise_for_status()
        return r.json()

    def turn(self, *, wav: str | Path | None = None, text: str | None = None,
             history: Sequence[ChatMessage] = (), realtime: bool = True,
             on_event: Callable[[dict], None] | None = None) -> TurnResult:
        body: dict = {"history": [{"role": m.role, "content": m.content} for m in history],
                      "realtime": realtime}
        if wav is not None:
            body["audio_wav_b64"] = base64.b64encode(Path(wav).read_bytes()).decode("ascii")
        else:
            body["text"] = text
        result = TurnResult()
        t0 = time.perf_counter()
        with httpx.stream("POST", f"{self.server}/v1/turns", json=body, timeout=self.timeout,
                          headers=self.headers) as r:
            if r.status_code != 200:
                r.read()
                raise TurnError(f"HTTP {r.status_code}: {r.text}")
            for line in r.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                now = time.perf_counter() - t0
                result.client_timings.setdefault("first_event_s", now)
                self._take(result, event, now)
                if on_event:
                    on_event(event)
        result.client_timings["total_s"] = time.perf_counter() - t0
        return result

    @staticmethod
    def _take(result: TurnResult, event: dict, now: float) -> None:
        kind = event["type"]
        if kind == "media":
            result.client_timings.setdefault("first_media_s", now)
            result.chunks.append(wire.decode_media(event))
            return
        result.events.append(event)
        if kind == "transcript" and event["role"] == "user":
            result.user_text = event["text"]
            result.user_language = event.get("language")
            result.user_emotion = event.get("emotion")
            result.user_event = event.get("event")
        elif kind == "transcript" and event["role"] == "avatar" and event["final"]:
            result.reply_text = event["text"]
        elif kind == "timings":
            result.server_timings = {k: v for k, v in event.items() if k != "type"}
        elif kind == "error":
            result.error = event
