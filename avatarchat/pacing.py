"""Clocks and pacing, in one place.

Serve streams have no backpressure: a producer faster than real time piles up seconds of media in
the consumer, which adds latency and makes an interruption flush more. So the turn pipeline paces
itself: it releases media no more than ``lead_s`` ahead of the playout clock.

Two kinds of clock: a ``Clock`` only tells the time (stamps, timeouts that are checked); an
``AsyncClock`` also sleeps on it, and is what anything that waits for time takes (the pacer, the
media clock, the conversation's turn timeout). ``REAL_CLOCK`` is time.monotonic and asyncio.sleep;
``VirtualClock`` is time that moves only when a test says, so a conversation's timeline runs in
milliseconds. An AsyncClock is callable, so it goes wherever a Clock does.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

Clock = Callable[[], float]


def monotonic() -> float:
    return time.monotonic()


class AsyncClock(Protocol):
    """A clock that also sleeps: ``now()`` (also its call) in seconds, ``sleep(s)`` on that time."""

    def __call__(self) -> float: ...

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def __call__(self) -> float:
        return time.monotonic()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


REAL_CLOCK = RealClock()


class VirtualClock:
    """Time that moves only when a test says (``advance``, ``run_until``): ``sleep`` returns once
    the clock reaches its deadline. Each sleeper wakes at its own time, in order, and everything it
    sets going runs before time moves on, so a scripted timeline runs as it would in real time,
    without waiting. Runs on asyncio's own event loop (it reads the loop's run queue to know when
    every task waits)."""

    def __init__(self, start: float = 0.0):
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []  # (deadline, order, future): a heap
        self._order = itertools.count()

    def __call__(self) -> float:
        return self._now

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), woken))
        await woken

    async def advance(self, seconds: float) -> None:
        await self.run_until(self._now + seconds)

    async def run_until(self, t: float) -> None:
        """Move time to ``t``, waking each sleeper due by then at its deadline."""
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= t:
            deadline, _, woken = heapq.heappop(self._sleepers)
            if woken.done():  # its sleeper was cancelled
                continue
            self._now = max(self._now, deadline)
            woken.set_result(None)
            await self.settle()
        self._now = max(self._now, t)

    async def settle(self) -> None:
        """Run every task that can run at this time, until each one waits."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)  # asyncio's run queue: what runs at the next step
        if ready is None:
            raise RuntimeError("VirtualClock needs asyncio's own event loop")
        await asyncio.sleep(0)
        while ready:
            await asyncio.sleep(0)


@asynccontextmanager
async def deadline(clock: AsyncClock, seconds: float) -> AsyncIterator[None]:
    """``asyncio.timeout(seconds)`` on ``clock``: the block is cancelled once ``seconds`` have
    passed and TimeoutError raised in its place. asyncio's Timeout does the cancelling (and tells
    its cancellation from any other); the clock only says when."""
    async with asyncio.timeout(None) as timeout:
        alarm = asyncio.get_running_loop().create_task(
            _ring(clock, seconds, timeout), name=f"{asyncio.current_task().get_name()}-deadline")
        try:
            yield
        finally:
            alarm.cancel()


async def _ring(clock: AsyncClock, seconds: float, timeout: asyncio.Timeout) -> None:
    await clock.sleep(seconds)
    timeout.reschedule(asyncio.get_running_loop().time())  # expire now


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

    def __init__(self, lead_s: float, realtime: bool = True, clock: AsyncClock = REAL_CLOCK):
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
            await self.clock.sleep(delay)


class MediaClock:
    """Session media time: starts at the first ``wait``; ``wait(t)`` returns at media time ``t``."""

    def __init__(self, clock: AsyncClock = REAL_CLOCK):
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
            await self.clock.sleep(delay)
            return 0.0
        return -delay
