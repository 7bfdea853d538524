"""What every stage deployment shares: loading its backend loudly, and counting its calls.

The counters let an operator (and the cancellation test) see that a cancelled turn really stopped
each stage: ``active`` drops back to zero and ``cancelled`` goes up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

from avatarchat.backends.base import create_backend
from avatarchat.config import Priority, StageConfig
from avatarchat.priority import lower_priority
from avatarchat.process_stats import process_stats

log = logging.getLogger("ray.serve")


@dataclass
class CallStats:
    started: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    active: int = 0


class StageDeployment:
    """Base of the stage deployments: holds the loaded backend and the call counters."""

    def __init__(self, config: StageConfig, priority: Priority = Priority()):
        # Before the backend starts its threads, so they inherit the lower priority.
        lower_priority(priority.stage_niceness, f"stage {config.stage}")
        # create_backend raises StageLoadError naming the stage; Serve then reports the deployment
        # as failed and `serve run` exits, instead of serving a half-working graph.
        self.backend = create_backend(config)
        self.config = config
        self.stats = CallStats()
        log.info("stage %s: backend %s loaded", config.stage, config.backend)

    @asynccontextmanager
    async def track(self):
        self.stats.started += 1
        self.stats.active += 1
        try:
            yield
            self.stats.finished += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.stats.cancelled += 1
            raise
        except Exception:
            self.stats.failed += 1
            raise
        finally:
            self.stats.active -= 1

    async def _stream(self, items: AsyncIterator) -> AsyncIterator:
        async with self.track():
            async for item in items:
                yield item

    def call_stats(self) -> dict:
        fallback = self.config.fallback.backend if self.config.fallback is not None else None
        return {"stage": self.config.stage, "backend": self.config.backend, "fallback": fallback,
                **asdict(self.stats),
                "process": process_stats()}

    def diagnostics(self) -> dict:
        """This replica's memory (heap trimmed first), threads: for leak checks."""
        return process_stats(trim=True)

    def check_health(self) -> None:
        """Serve calls this periodically; a backend that lost its model raises here."""
        self.backend.check_health()
