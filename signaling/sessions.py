"""The registry of live sessions: the session limit, and the reaper that ends sessions that timed
out (no speech or text for ``idle_timeout_s``, older than ``max_duration_s``, no media from the
client for ``media_timeout_s``, or never connected within ``connect_timeout_s``).

The registry knows sessions only through the small ``Reapable`` protocol, so its rules are tested
without any WebRTC.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Protocol

from avatarchat.config import Sessions as SessionOptions
from avatarchat.pacing import Clock, monotonic

log = logging.getLogger("ray.serve")


class Full(Exception):
    """No room for another session."""


class Reapable(Protocol):
    id: str
    created_at: float        # clock time the session was created
    last_input_at: float     # last speech or text from the user
    connected_at: float | None   # when the peer connection connected (None: not yet)
    last_media_at: float | None  # last audio frame from the client (None: none yet)
    closed: bool

    async def close(self, reason: str) -> None: ...


def new_session_id() -> str:
    return secrets.token_urlsafe(12)


class SessionRegistry:
    def __init__(self, options: SessionOptions, clock: Clock = monotonic,
                 on_count: Callable[[int], None] | None = None):
        self.options, self.clock, self._on_count = options, clock, on_count
        self._sessions: dict[str, Reapable] = {}
        self._reserved = 0
        self._reaper: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def get(self, session_id: str) -> Reapable | None:
        return self._sessions.get(session_id)

    def ids(self) -> list[str]:
        return list(self._sessions)

    # -- admission: reserve a place before the (slow) offer/answer, then add or release it ------
    def reserve(self) -> None:
        if len(self._sessions) + self._reserved >= self.options.max_sessions:
            raise Full(f"the server holds its maximum of {self.options.max_sessions} sessions; "
                       f"try again later")
        self._reserved += 1

    def release(self) -> None:
        self._reserved = max(0, self._reserved - 1)

    def add(self, session: Reapable) -> None:
        """Add a session whose place was reserved."""
        self.release()
        self._sessions[session.id] = session
        self._counted()

    def _counted(self) -> None:
        if self._on_count is not None:
            self._on_count(len(self._sessions))

    def discard(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def end(self, session_id: str, reason: str) -> bool:
        session = self._sessions.get(session_id)
        if session is None:
            return False
        # Counted until its close has finished: the count says what the server still holds.
        try:
            await session.close(reason)
        finally:
            self._sessions.pop(session_id, None)
            self._counted()
        return True

    # -- timeouts ---------------------------------------------------------------------------
    def expired(self) -> list[tuple[str, str]]:
        """(session id, reason) for every session that should end now."""
        now, o = self.clock(), self.options
        out = []
        for sid, s in self._sessions.items():
            if s.closed:
                out.append((sid, "closed"))
            elif now - s.created_at >= o.max_duration_s:
                out.append((sid, f"max_duration_s={o.max_duration_s} reached"))
            elif s.connected_at is None:
                if now - s.created_at >= o.connect_timeout_s:
                    out.append((sid, f"not connected within connect_timeout_s={o.connect_timeout_s}"))
            elif now - max(s.last_media_at or 0.0, s.connected_at) >= o.media_timeout_s:
                out.append((sid, f"no media from the client for media_timeout_s={o.media_timeout_s}"))
            elif now - s.last_input_at >= o.idle_timeout_s:
                out.append((sid, f"idle for idle_timeout_s={o.idle_timeout_s}"))
        return out

    async def reap(self) -> list[str]:
        ended = []
        for sid, reason in self.expired():
            log.info("session %s ended: %s", sid, reason)
            await self.end(sid, reason)
            ended.append(sid)
        return ended

    def start_reaper(self, interval_s: float = 0.5) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever(interval_s))

    async def _reap_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reap()
            except Exception:  # noqa: BLE001 - the reaper must outlive one bad session
                log.exception("session reaper")
            # Ray's metrics export drops a gauge not set for a while: report the count each round.
            self._counted()

    async def close_all(self, reason: str = "server shutting down") -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for sid in list(self._sessions):
            await self.end(sid, reason)
