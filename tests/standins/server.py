"""What every stand-in here shares: StandInServer, an aiohttp server on 127.0.0.1 (a free port) in a
thread with its own event loop, with the failure ``mode`` a test sets from its own thread, the
"fail_times:N" countdown and a lock-protected list of what was sent (``requests``); and the tone a
stand-in "speaks". Each service's protocol stays in its own module, a subclass of StandInServer."""

from __future__ import annotations

import asyncio
import copy
import math
import threading

import numpy as np
from aiohttp import web

STALL_MARK = "[stall]"  # a request whose text holds it stalls, whatever the mode
SECONDS_PER_CHAR = 0.06  # how long a stand-in takes to "say" a character, unless told otherwise


def speech_samples(text: str, rate: int, seconds_per_char: float = SECONDS_PER_CHAR) -> int:
    """How many samples at ``rate`` a stand-in's "speech" for ``text`` lasts."""
    return int(round(len(text) * seconds_per_char * rate))


def tone(count: int, rate: int, hz: float = 440.0, amplitude: float = 0.3, start: int = 0) -> np.ndarray:
    """``count`` samples of a sine of ``hz`` at ``rate``, from sample ``start`` on (so pieces made
    one after another join without a click), as float32."""
    t = (start + np.arange(count)) / rate
    return (amplitude * np.sin(2 * math.pi * hz * t)).astype(np.float32)


def pcm16(samples: np.ndarray) -> bytes:
    """Samples in [-1, 1] as little-endian PCM16."""
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


class StandInServer:
    """``with Sub() as s: ... s.url ...``, or start() and stop(). A subclass adds its handlers in
    routes(app) and says where it listens with SCHEME and URL_PATH (path, and query if any: ``url``
    is ``SCHEME://127.0.0.1:<port>URL_PATH``), and lists its failure modes in MODES (one ending in
    ":" takes an argument, e.g. "fail_times:" for "fail_times:N").

    ``mode`` is settable from any thread (an unknown one is a ValueError); handlers read it, or
    call failure(), which counts "fail_times:N" down. ``requests`` is a snapshot of the records
    handlers add with _add_record() and change with _update() (or under ``_lock``); reset() empties
    it."""

    SCHEME = "http"
    URL_PATH = ""
    MODES: tuple[str, ...] = ("ok", "fail_times:")

    def __init__(self, mode: str = "ok"):
        self._lock = threading.Lock()
        self._records: list[dict] = []
        self._mode, self._fail_left = "ok", 0
        self.mode = mode
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"{self.SCHEME}://127.0.0.1:{self.port}{self.URL_PATH}"

    # --- control, from the test's thread ---------------------------------------------------------

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in self.MODES and not any(m.endswith(":") and value.startswith(m) for m in self.MODES):
            raise ValueError(f"unknown {type(self).__name__} mode {value!r}")
        fail_left = int(value.split(":", 1)[1]) if value.startswith("fail_times:") else 0
        with self._lock:
            self._mode, self._fail_left = value, fail_left

    def failure(self) -> str:
        """The mode this request meets; under "fail_times:N" that is "transient" for the next N
        calls, then "ok"."""
        with self._lock:
            if not self._mode.startswith("fail_times:"):
                return self._mode
            if self._fail_left > 0:
                self._fail_left -= 1
                return "transient"
            return "ok"

    @property
    def requests(self) -> list[dict]:
        """A snapshot of the records, one per request / connection, as the stand-in's module says."""
        with self._lock:
            return copy.deepcopy(self._records)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    def start(self):
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=type(self).__name__,
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- for handlers, in the server's thread -----------------------------------------------------

    def _add_record(self, record: dict) -> dict:
        with self._lock:
            self._records.append(record)
        return record

    def _update(self, record: dict, **changes) -> None:
        with self._lock:
            record.update(changes)

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application()
        self.routes(app)
        runner = web.AppRunner(app, shutdown_timeout=0.2)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        self.port = runner.addresses[0][1]
        ready.set()
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
