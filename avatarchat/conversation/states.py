"""The states of a conversation, the moves allowed between them, and what the client is told.

A move not in ``TRANSITIONS`` is a bug in the conversation core and raises ``IllegalTransition``.
The client sees only the three states of the protocol (``{"type": "state"}`` events:
listening / thinking / speaking); ``WIRE_STATE`` is the one place that maps ours onto them.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum


class ConversationState(Enum):
    LISTENING = "listening"              # nothing to answer, nothing playing
    USER_SPEAKING = "user_speaking"      # an utterance has started; no reply runs or plays
    THINKING = "thinking"                # a turn runs; no reply audio yet
    SPEAKING = "speaking"                # the turn's reply plays (and is still being produced)
    PAUSED_BY_VOICE = "paused_by_voice"  # voice over the reply: held, until it resumes or is cut
    FINISHING = "finishing"              # the turn is over; the last of its audio still plays


S = ConversationState

TRANSITIONS: dict[ConversationState, frozenset[ConversationState]] = {
    S.LISTENING: frozenset({S.USER_SPEAKING, S.THINKING}),
    S.USER_SPEAKING: frozenset({S.THINKING, S.LISTENING}),
    S.THINKING: frozenset({S.SPEAKING, S.USER_SPEAKING, S.LISTENING}),
    S.SPEAKING: frozenset({S.PAUSED_BY_VOICE, S.FINISHING, S.THINKING, S.USER_SPEAKING, S.LISTENING}),
    S.PAUSED_BY_VOICE: frozenset({S.SPEAKING, S.FINISHING, S.USER_SPEAKING, S.THINKING, S.LISTENING}),
    S.FINISHING: frozenset({S.LISTENING, S.USER_SPEAKING, S.PAUSED_BY_VOICE, S.THINKING}),
}

# What the client is told on entering each state; None: nothing, it keeps what it was told (a
# pause is not shown: it ends as a resume, or as an interruption, which says so). The turn is
# reported over ("listening") when its reply is complete, lead_s before its sound ends.
WIRE_STATE: dict[ConversationState, str | None] = {
    S.LISTENING: "listening",
    S.USER_SPEAKING: "listening",
    S.THINKING: "thinking",
    S.SPEAKING: "speaking",
    S.PAUSED_BY_VOICE: None,
    S.FINISHING: "listening",
}


class IllegalTransition(RuntimeError):
    pass


class ConversationStates:
    """The current state; ``go`` moves it by the table and tells ``on_wire`` what the client
    should now see, when that changes."""

    def __init__(self, on_wire: Callable[[str], None]):
        self.current = S.LISTENING
        self.wire = "listening"
        self._on_wire = on_wire

    def go(self, to: ConversationState) -> None:
        if to is self.current:
            return
        if to not in TRANSITIONS[self.current]:
            raise IllegalTransition(f"{self.current.name} -> {to.name}")
        self.current = to
        wire = WIRE_STATE[to]
        if wire is not None and wire != self.wire:
            self.wire = wire
            self._on_wire(wire)
