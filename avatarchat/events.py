"""What a turn reports to its caller besides media: state changes, the finished reply, errors.

Together with the stage messages (Transcript, TextDelta, AvatarChunk, TurnTimings) these are the
events a turn yields, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from avatarchat.messages import Message

State = Literal["listening", "thinking", "speaking"]


@dataclass(frozen=True, slots=True)
class StateChanged(Message):
    state: State


@dataclass(frozen=True, slots=True)
class ReplyDone(Message):
    """The reply is complete; ``text`` is everything the avatar said (for the history)."""

    text: str
    audio_s: float


@dataclass(frozen=True, slots=True)
class TurnFailed(Message):
    """A stage failed during this turn. The turn ends; the session and other sessions carry on."""

    stage: str
    reason: str
    # A remote service's failure kind (avatarchat/remote.py: unreachable, unauthorised, quota,
    # rate_limited, timeout, ...), so a client can tell "try later" from "fix the key"; else None.
    code: str | None = None
    dropped_on_interrupt: ClassVar[bool] = False
