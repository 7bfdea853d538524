"""No end-of-turn model: the VAD's hysteresis alone ends a turn after its ``end_ms`` of silence.

This is the behaviour before end-of-turn detection existed: every pause of ``stages.vad.end_ms``
(600 ms by default) ends the turn, whatever was said. ``completion`` always returns 1.0.
"""

from __future__ import annotations

import numpy as np

from avatarchat.backends.end_of_turn.base import TurnBackend
from avatarchat.config import Options


class VADOnlyTurn(TurnBackend):
    """End of turn decided by VAD silence alone (``stages.vad.end_ms``)."""

    class Options(Options):
        pass

    uses_model = False

    def completion(self, audio: np.ndarray) -> float:
        return 1.0


BACKEND = VADOnlyTurn
