"""Latency measures on sampled audio, as a client sends and receives it (pure numpy).

Used by load_tests/bench_latency.py; tested in tests/unit/test_latency_measures.py. Audio is judged
in short windows (10 ms by default): a window is *sounding* when its RMS is above ``threshold``.
"""

from __future__ import annotations

import numpy as np

THRESHOLD = 0.01  # RMS, full scale 1.0: about -40 dBFS
WINDOW_S = 0.01


def window_rms(x: np.ndarray, win: int) -> np.ndarray:
    """RMS of each whole, non-overlapping window of ``win`` samples (a partial tail is dropped)."""
    n = len(x) // win
    if n == 0:
        return np.zeros(0)
    w = np.asarray(x[:n * win], np.float64).reshape(n, win)
    return np.sqrt((w ** 2).mean(axis=1))


def sound_span(samples: np.ndarray, rate: int, threshold: float = THRESHOLD,
               window_s: float = WINDOW_S) -> tuple[int, int] | None:
    """(first sample of the first sounding window, one past the last sample of the last sounding
    window) of an utterance, or None when no window sounds."""
    win = max(1, int(round(window_s * rate)))
    loud = np.flatnonzero(window_rms(samples, win) > threshold)
    if len(loud) == 0:
        return None
    return int(loud[0] * win), int((loud[-1] + 1) * win)


def received_windows(pieces: list[np.ndarray], arrival_times: list[float], rate: int = 48000,
                     window_s: float = WINDOW_S) -> tuple[np.ndarray, np.ndarray]:
    """(RMS, start time) of each window of a received stream. ``arrival_times[i]`` is when piece
    ``i`` arrived, the time of its *last* sample; a sample ``d`` samples before the end of its
    piece is timed ``d / rate`` earlier. A window's time is that of its first sample."""
    if not pieces:
        return np.zeros(0), np.zeros(0)
    x = np.concatenate(pieces)
    win = max(1, int(round(window_s * rate)))
    rms = window_rms(x, win)
    ends = np.cumsum([len(p) for p in pieces])  # one past each piece's last sample
    starts = np.arange(len(rms)) * win
    piece = np.searchsorted(ends, starts, side="right")
    times = np.asarray(arrival_times, np.float64)[piece] - (ends[piece] - 1 - starts) / rate
    return rms, times


def sound_onset(rms: np.ndarray, times: np.ndarray, after: float,
                threshold: float = THRESHOLD) -> float | None:
    """Time of the first sounding window that starts at or after ``after``; None if none."""
    hit = np.flatnonzero((times >= after) & (rms > threshold))
    return float(times[hit[0]]) if len(hit) else None


def silence_onset(rms: np.ndarray, times: np.ndarray, after: float, threshold: float = THRESHOLD,
                  window_s: float = WINDOW_S, silent_s: float = 0.1, hold_s: float = 0.5) -> float | None:
    """Start time of the first run of silent windows (RMS at or below ``threshold``) that starts at
    or after ``after`` and lasts at least ``silent_s`` (the silence criterion) and at least
    ``hold_s`` (so that a pause between two sentences of a reply that goes on is not taken for the
    reply stopping). A run still open at the end of the data counts if it is long enough."""
    need = int(round(max(silent_s, hold_s) / window_s))
    idx = np.flatnonzero(times >= after)
    if len(idx) == 0:
        return None
    quiet = rms[idx[0]:] <= threshold
    t = times[idx[0]:]
    run = 0
    for i, q in enumerate(quiet):
        run = run + 1 if q else 0
        if run >= need:
            return float(t[i - need + 1])
    return None
