"""Lip sync measured on received streams: how far the mouth's movement lags the sound.

Used by the cluster tests (tests/helpers.py re-exports it) and by load_tests/bench_latency.py.
"""

from __future__ import annotations

import numpy as np


def envelope_lag(audio_times, audio_env, video_times, mouth_motion, step_s: float = 0.01,
                 max_lag_s: float = 0.3, highpass_s: float = 1.0) -> tuple[float, float]:
    """(lag in s, correlation) of ``mouth_motion`` (sampled at ``video_times``) behind
    ``audio_env`` (sampled at ``audio_times``): both are interpolated onto a common ``step_s`` grid
    over the time they overlap, each less its ``highpass_s`` moving average, normalised, and
    cross-correlated for lags up to ``max_lag_s`` either way. A positive lag means the mouth moves
    after the sound. The high-pass keeps syllables and drops what is slower: the idle head sway
    moves the mouth crop over seconds and, unfiltered, weighed as much as a short reply."""
    at, env = np.asarray(audio_times, float), np.asarray(audio_env, float)
    vt, mouth = np.asarray(video_times, float), np.asarray(mouth_motion, float)
    grid = np.arange(max(at[0], vt[0]), min(at[-1], vt[-1]), step_s)
    a, v = np.interp(grid, at, env), np.interp(grid, vt, mouth)
    if highpass_s > 0:
        width = max(1, int(round(highpass_s / step_s)))
        kernel = np.full(width, 1.0 / width)
        a, v = a - np.convolve(a, kernel, mode="same"), v - np.convolve(v, kernel, mode="same")
    a, v = (a - a.mean()) / a.std(), (v - v.mean()) / v.std()
    n = int(round(max_lag_s / step_s))
    lags = list(range(-n, n + 1))
    cc = [np.mean(a[max(0, -k):len(a) - max(0, k)] * v[max(0, k):len(v) - max(0, -k)]) for k in lags]
    best = int(np.argmax(cc))
    return lags[best] * step_s, float(cc[best])


def mouth_motion(mouth_crops) -> np.ndarray:
    """Per frame, the mean absolute difference of the mouth crop from the resting mouth (the median
    of the first 20 frames, which must show the idle face)."""
    m = np.stack(mouth_crops).astype(np.float32)
    return np.abs(m - np.median(m[:20], axis=0)).mean(axis=(1, 2))


def mouth_change(mouth_crops) -> np.ndarray:
    """Per pair of consecutive frames, the mean absolute change of the mouth crop. Speech reshapes
    the mouth from frame to frame; the idle head sway is slow and moves the crop by a fraction of a
    pixel per frame, so unlike the spread over a window this does not grow with the window's
    length."""
    m = np.stack(mouth_crops).astype(np.float32)
    return np.abs(np.diff(m, axis=0)).reshape(len(m) - 1, -1).mean(axis=1)


def sounding(received, times, level: float = 0.02, within_s: float = 0.06) -> np.ndarray:
    """Per time in ``times`` (client clock): whether audible sound, a received audio piece with an
    RMS over ``level``, arrived within ``within_s`` of it. Marks the frames shown while the voice is
    heard: a reply's pauses between sentences, its silent tail and a playout held by the user's
    voice show a resting mouth and would dilute a "the mouth moves while it speaks" measure."""
    at = np.asarray(received.audio_times)
    loud = at[np.array([float(np.sqrt(np.mean(a ** 2))) > level for a in received.audio], bool)]
    times = np.asarray(times)
    if not len(loud):
        return np.zeros(len(times), bool)
    i = np.searchsorted(loud, times)  # arrival times are in order
    before, after = loud[np.maximum(i - 1, 0)], loud[np.minimum(i, len(loud) - 1)]
    return np.minimum(np.abs(times - before), np.abs(times - after)) <= within_s


# aiortc's receiver holds audio until 4 packets are buffered (JitterBuffer(capacity=16, prefetch=4)
# in aiortc/rtcrtpreceiver.py): each 20 ms packet reaches recv() ~3 packets after it arrived, while
# video frames are released as soon as they are whole. A browser lines both up by their RTP/RTCP
# timestamps instead, so a sync measure meant to stand for what a person sees takes this off.
AIORTC_AUDIO_HOLD_S = 3 * 0.02


def sound_to_mouth_lag(received, since: float | None = None, audio_hold_s: float = 0.0) -> tuple[float, float]:
    """(lag in s, correlation) of the mouth's movement behind the sound, as an AvatarClient received
    them (``received.mouth`` needs a mouth box; its first frames must be the idle face). The sound
    envelope is the RMS of each received audio piece at its arrival time. ``since``: only what
    arrived from that time on (e.g. the reply after an interruption). ``audio_hold_s``: taken off
    each audio arrival time (``AIORTC_AUDIO_HOLD_S``: the receiver's own audio delay)."""
    env = np.array([float(np.sqrt(np.mean(a ** 2))) for a in received.audio])
    motion = mouth_motion(received.mouth)
    at = np.asarray(received.audio_times) - audio_hold_s
    vt = np.asarray(received.video_times[:len(motion)])
    if since is not None:
        keep_a, keep_v = at >= since, vt >= since
        at, env, vt, motion = at[keep_a], env[keep_a], vt[keep_v], motion[keep_v]
    return envelope_lag(at, env, vt, motion)


def sound_to_motion_lag(received, since: float | None = None) -> tuple[float, float]:
    """As :func:`sound_to_mouth_lag` for a render=browser session: the mouth is the received
    ``mouth_open`` values at their arrival times (the page draws each one then, after the audio's
    jitter-buffer delay, which the sound's arrival time does not include either)."""
    env = np.array([float(np.sqrt(np.mean(a ** 2))) for a in received.audio])
    at = np.asarray(received.audio_times)
    vt = np.array([t for t, _, _ in received.motions])
    opening = np.array([m.mouth_open for _, _, m in received.motions])
    if since is not None:
        keep_a, keep_v = at >= since, vt >= since
        at, env, vt, opening = at[keep_a], env[keep_a], vt[keep_v], opening[keep_v]
    return envelope_lag(at, env, vt, opening)


def lip_sync(received, since: float | None = None) -> tuple[float, float]:
    """(lag, correlation) of the mouth behind the sound, from video or from motion packets."""
    if received.motions and not received.video_times:
        return sound_to_motion_lag(received, since)
    return sound_to_mouth_lag(received, since)

