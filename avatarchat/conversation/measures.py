"""The per-turn measures a conversation adds to a turn's timings: how long the user waited."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TurnClock:
    """When a turn's input ended (clock time), for the per-turn measures sent with its timings."""

    ended_at: float
    decision_s: float | None
    spoken: bool

    def measures(self, first_audio_at: float | None) -> dict[str, float]:
        out = {}
        if self.decision_s is not None:
            out["end_of_turn_decision"] = self.decision_s
        if first_audio_at is not None:
            # end of the user's speech (or the typed message's arrival) -> first reply audio sent
            out["voice_to_voice" if self.spoken else "text_to_voice"] = first_audio_at - self.ended_at
        return out
