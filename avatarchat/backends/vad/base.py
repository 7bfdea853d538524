"""Voice activity detection: speech probability for each fixed-size chunk of a session's audio.

VAD runs per session beside the session's audio, not as a Serve deployment: one chunk costs ~0.1 ms,
a Ray hop ~1.5 ms. A ``VADStream`` holds one session's recurrent state.
"""

from __future__ import annotations

import numpy as np

from avatarchat.backends.base import Backend


class VADStream:
    def probability(self, chunk: np.ndarray) -> float:
        """Speech probability of one chunk of exactly ``chunk_samples`` float32 samples."""
        raise NotImplementedError


class VADBackend(Backend):
    stage = "vad"
    sample_rate: int = 16000
    chunk_samples: int = 512

    def new_stream(self) -> VADStream:
        raise NotImplementedError
