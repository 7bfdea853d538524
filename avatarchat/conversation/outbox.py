"""A turn's events on their way to the playout and the client: bounded, in order, and cut by type.

The turn's task puts its events here; the conversation takes them out and delivers them (media to
the playout, the rest to the client). An interruption empties it by each event's class
(``dropped_on_interrupt``, avatarchat/messages.py): what belongs to the reply being cut (media,
partial text) is dropped, what describes what already happened (transcripts, timings, errors) is
handed back to be delivered.
"""

from __future__ import annotations

import asyncio
from collections import deque

from avatarchat.messages import Message, TurnTimings

TurnEvent = Message | TurnTimings

# Far more than a turn ever has in flight: it releases media paced to real time.
DEFAULT_MAXSIZE = 64


class ReplyOutbox:
    """One producer (the turn), one consumer (the conversation)."""

    def __init__(self, maxsize: int = DEFAULT_MAXSIZE):
        self.maxsize = maxsize
        self._items: deque[TurnEvent] = deque()
        self._finished = False
        self._has_items = asyncio.Event()
        self._has_room = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, event: TurnEvent) -> None:
        """Waits while full."""
        while len(self._items) >= self.maxsize:
            self._has_room.clear()
            await self._has_room.wait()
        self._items.append(event)
        self._has_items.set()

    def finish(self) -> None:
        """The turn has nothing more to say: ``get`` returns None once the rest is taken."""
        self._finished = True
        self._has_items.set()

    async def get(self) -> TurnEvent | None:
        """The next event, or None when the turn is over and all was taken."""
        while not self._items:
            if self._finished:
                return None
            self._has_items.clear()
            await self._has_items.wait()
        self._has_room.set()
        return self._items.popleft()

    def interrupt(self) -> list[TurnEvent]:
        """Empty it: the events an interruption keeps, in order (the rest are dropped)."""
        kept = [e for e in self._items if not type(e).dropped_on_interrupt]
        self._items.clear()
        self._has_room.set()
        return kept
