"""Joining two utterances of one audio stream: a question the user paused in, answered as one."""

from __future__ import annotations

import numpy as np

from avatarchat.messages import AudioChunk


def merge_utterances(first: AudioChunk | None, second: AudioChunk, max_s: float) -> AudioChunk:
    """``second`` preceded by ``first`` (an earlier utterance of the same stream), without the part
    they share (their pre- and post-roll may overlap); keeps at most the last ``max_s`` seconds."""
    if first is None or len(first.samples) == 0:
        return second
    rate = second.sample_rate
    overlap = max(0, int(round((first.end - second.start) * rate)))
    samples = np.concatenate([first.samples, second.samples[overlap:]])
    limit = int(max_s * rate)
    if len(samples) > limit:
        samples = samples[-limit:]
    return AudioChunk(samples, rate, second.end - len(samples) / rate)
