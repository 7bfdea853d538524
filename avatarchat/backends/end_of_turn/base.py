"""End of turn: does a pause in the user's speech end their turn?

The VAD finds pauses; a turn backend says how likely it is that the user has *finished* (a complete
sentence, a falling intonation) rather than paused to think. :class:`avatarchat.end_of_turn.EndOfTurn`
asks it after a short pause and ends the utterance there when it says yes, so a finished question is
answered fast and a thinking pause does not cut the user off.

Like VAD, the end-of-turn model runs beside the session's audio in the Media replica, not as a Serve deployment
(one call is ~10 ms; see docs/architecture.md, "End of turn").
"""

from __future__ import annotations

import numpy as np

from avatarchat.backends.base import Backend


class TurnBackend(Backend):
    stage = "end_of_turn"
    sample_rate: int = 16000
    # False for a backend that never decides (vad_only): then the VAD's own end_ms alone ends turns.
    uses_model: bool = True

    def completion(self, audio: np.ndarray) -> float:
        """Probability in [0, 1] that the user has finished their turn, given the utterance so far
        (float32 mono at ``sample_rate``, ending now: the trailing pause included)."""
        raise NotImplementedError
