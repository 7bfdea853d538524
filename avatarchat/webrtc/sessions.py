"""The registry of live sessions: the session limit, and the reaper that ends sessions that timed
out (no speech or text for ``idle_timeout_s``, older than ``max_duration_s``, no media from the
client for ``media_timeout_s``, or never connected within ``connect_timeout_s``).

The registry knows sessions only through the small ``Reapable`` protocol, so its rules are tested
without any WebRTC.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from avatarchat.config import Sessions as SessionOptions
from avatarchat.pacing import Clock, monotonic

log = logging.getLogger("ray.serve")


class Full(Exception):
    """No room for another session."""


class TooManyPending(Exception):
    """One client address already holds ``sessions.max_pending_per_client`` sessions that have not
    connected; ``retry_after_s`` is when one of them will have connected or been ended."""

    def __init__(self, reason: str, retry_after_s: int):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class Reapable(Protocol):
    id: str
    created_at: float        # clock time the session was created
    last_input_at: float     # last speech or text from the user
    connected_at: float | None   # when the peer connection connected (None: not yet)
    last_media_at: float | None  # last audio frame from the client (None: none yet)
    closed: bool

    async def close(self, reason: str) -> None: ...


# A session id names the process that holds the session, then 96 random bits: any ingress replica
# can route a request about it to that process (deployments/session_routing.py) without a table.
ID_SEPARATOR = "."


def new_session_id(owner: str = "local") -> str:
    """A new session id held by ``owner`` (a Media replica's name)."""
    return f"{owner}{ID_SEPARATOR}{secrets.token_urlsafe(12)}"


def owner_of(session_id: str) -> str | None:
    """The owner a session id names (None: not an id of this shape)."""
    owner, sep, rest = session_id.partition(ID_SEPARATOR)
    return owner if sep and owner and rest else None


def session_tag(session_id: str) -> str:
    """What logs and task names call a session instead of its id. The id is all DELETE needs and
    Ray's log files are readable by every local user; a hash of 96 random bits cannot be turned
    back into them, yet the tag still follows one session through the logs."""
    return hashlib.blake2b(session_id.encode(), digest_size=5).hexdigest()


class SessionRegistry:
    def __init__(self, options: SessionOptions, clock: Clock = monotonic,
                 on_count: Callable[[int], None] | None = None):
        self.options, self.clock, self._on_count = options, clock, on_count
        self._sessions: dict[str, Reapable] = {}
        self._reserved = 0
        # Client addresses, for max_pending_per_client: of each session, and of offers being answered.
        self._client_of: dict[str, str] = {}
        self._reserved_by: Counter[str] = Counter()
        self._reaper: asyncio.Task | None = None
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def occupied(self) -> int:
        """Sessions held plus places reserved for offers being answered."""
        return len(self._sessions) + self._reserved

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def get(self, session_id: str) -> Reapable | None:
        return self._sessions.get(session_id)

    def ids(self) -> list[str]:
        return list(self._sessions)

    # -- admission: reserve a place before the (slow) offer/answer, then add or release it ------
    def reserve(self, client: str | None = None) -> None:
        """Hold a place for one more session, from ``client`` (an address; None: not counted per
        client). Raises TooManyPending or Full."""
        if client is not None:
            self._check_pending(client)
        if len(self._sessions) + self._reserved >= self.options.max_sessions:
            raise Full(f"the server holds its maximum of {self.options.max_sessions} sessions; "
                       f"try again later")
        self._reserved += 1
        if client is not None:
            self._reserved_by[client] += 1

    def release(self, client: str | None = None) -> None:
        self._reserved = max(0, self._reserved - 1)
        if client is not None and self._reserved_by[client] > 0:
            self._reserved_by[client] -= 1
            if not self._reserved_by[client]:
                del self._reserved_by[client]

    def add(self, session: Reapable, client: str | None = None) -> None:
        """Add a session whose place was reserved (by ``client``)."""
        self.release(client)
        self._sessions[session.id] = session
        if client is not None:
            self._client_of[session.id] = client
        self._counted()

    def pending(self, client: str) -> list[Reapable]:
        """``client``'s sessions that have not connected yet (and are not closing)."""
        return [s for sid, c in self._client_of.items() if c == client
                and (s := self._sessions.get(sid)) is not None and s.connected_at is None and not s.closed]

    def _check_pending(self, client: str) -> None:
        # A session that never connects holds its place until connect_timeout_s: bounded per
        # client, so a few offers re-posted in a loop cannot keep the server full for everyone.
        waiting = self.pending(client)
        limit = self.options.max_pending_per_client
        if len(waiting) + self._reserved_by[client] < limit:
            return
        # The oldest is reaped by connect_timeout_s at the latest (connected, it frees sooner).
        now = self.clock()
        ends = [self.options.connect_timeout_s - (now - s.created_at) for s in waiting]
        retry = max(1, min(self.options.retry_after_s, math.ceil(min(ends, default=1.0))))
        raise TooManyPending(f"this address already has {limit} session(s) that have not connected yet "
                             f"(sessions.max_pending_per_client={limit}); connect or hang up one of them, "
                             f"or try again in {retry} s", retry)

    def _counted(self) -> None:
        if self._sessions:
            self._empty.clear()
        else:
            self._empty.set()
        if self._on_count is not None:
            self._on_count(len(self._sessions))

    def discard(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        self._client_of.pop(session_id, None)
        self._counted()

    async def end(self, session_id: str, reason: str) -> bool:
        session = self._sessions.get(session_id)
        if session is None:
            return False
        # Counted until its close has finished: the count says what the server still holds.
        try:
            await session.close(reason)
        finally:
            self._sessions.pop(session_id, None)
            self._client_of.pop(session_id, None)
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
            log.info("session %s ended: %s", session_tag(sid), reason)
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

    async def wait_empty(self, timeout_s: float) -> bool:
        """Wait until no session is held (at most ``timeout_s``); whether none is."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout_s)
        except TimeoutError:
            pass
        return not self._sessions

    async def close_all(self, reason: str = "server shutting down") -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for sid in list(self._sessions):
            await self.end(sid, reason)
