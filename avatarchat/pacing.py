"""Clocks and pacing, in one place.

Serve streams have no backpressure: a producer faster than real time piles up seconds of media in
the consumer, which adds latency and makes an interruption flush more. So the turn pipeline paces
itself: it releases media no more than ``lead_s`` ahead of the playout clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

Clock = Callable[[], float]


def monotonic() -> float:
    return time.monotonic()


class Stopwatch:
    """Seconds since a start point, on one monotonic clock shared by a turn's timings."""

    def __init__(self, clock: Clock = monotonic):
        self.clock = clock
        self.t0 = clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0


class PlayoutPacer:
    """Holds a producer back so it stays at most ``lead_s`` ahead of real-time playout.

    Playout starts when the first piece of media is released (``wait_until(0.0)``). With
    ``realtime=False`` it never waits (offline rendering).
    """

    def __init__(self, lead_s: float, realtime: bool = True, clock: Clock = monotonic):
        self.lead_s, self.realtime, self.clock = lead_s, realtime, clock
        self._start: float | None = None

    @property
    def started(self) -> bool:
        return self._start is not None

    def position(self) -> float:
        """Seconds of media that have played out so far (0 before the first release)."""
        return 0.0 if self._start is None else self.clock() - self._start

    async def wait_until(self, media_time: float) -> None:
        """Return when the media at ``media_time`` (seconds on the reply's timeline) may be released."""
        if self._start is None:
            self._start = self.clock() - media_time
            return
        if not self.realtime:
            return
        delay = media_time - self.position() - self.lead_s
        if delay > 0:
            await asyncio.sleep(delay)


class MediaClock:
    """Session media time: starts at the first ``wait``; ``wait(t)`` returns at media time ``t``."""

    def __init__(self, clock: Clock = monotonic):
        self.clock = clock
        self.t0: float | None = None

    def now(self) -> float:
        if self.t0 is None:
            self.t0 = self.clock()
        return self.clock() - self.t0

    async def wait(self, media_t: float) -> float:
        """Sleep until ``media_t``; returns how late (s) the caller is, >= 0."""
        delay = media_t - self.now()
        if delay > 0:
            await asyncio.sleep(delay)
            return 0.0
        return -delay
