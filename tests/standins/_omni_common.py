"""What the two Qwen-Omni stand-ins share: an aiohttp server on 127.0.0.1 in a thread with its own
event loop, the failure modes a test sets at run time, and the reply's tone."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
from aiohttp import web

MODES = ("ok", "unauthorised", "quota", "rate_limited", "stall", "disconnect")  # + "fail_times:N"
STALL_MARK = "[stall]"
OUTPUT_RATE = 24000
SECONDS_PER_CHAR = 0.06


def tone(text: str, rate: int = OUTPUT_RATE) -> np.ndarray:
    """The stand-in's "speech" for ``text``: a 440 Hz tone, SECONDS_PER_CHAR a character."""
    n = int(round(len(text) * SECONDS_PER_CHAR * rate))
    return (0.3 * np.sin(2 * math.pi * 440.0 * np.arange(n) / rate)).astype(np.float32)


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


class ThreadedStandin:
    """Start with start() (or ``with``); ``url`` is where it listens; ``mode`` is read per request."""

    def __init__(self, key: str = "sk-standin-key", reply: str = "Hello from the stand-in.",
                 pace_s: float = 0.03):
        self.key, self.reply, self.pace_s = key, reply, pace_s
        self.mode = "ok"
        self.requests: list[dict] = []
        self._failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.port = 0

    # subclasses
    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    def failure(self) -> str:
        """The failure this request gets ("ok" when none): "fail_times:N" fails the first N."""
        mode = self.mode
        if mode.startswith("fail_times:"):
            if self._failures < int(mode.split(":", 1)[1]):
                self._failures += 1
                return "transient"
            return "ok"
        return mode

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def start(self) -> "ThreadedStandin":
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application()
        self.routes(app)
        runner = web.AppRunner(app, shutdown_timeout=0.2)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            # Handlers still waiting (a stalled reply) end here rather than warn at loop.close().
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
