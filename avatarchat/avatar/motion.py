"""Face motion over time, as numbers: idle life and the mouth driven by speech. No Ray, no pixels.

``idle_motion(t, seed)`` is a pure function of time, so replicas need no shared state and any frame
can be recomputed. ``SpeechMouth`` turns speech audio into per-frame mouth values; it starts its
smoothing from the last frame already produced, so consecutive sentences join without a jump.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avatarchat.messages import AudioChunk, FaceMotion

_EPS = 1e-9  # frame boundaries are compared with this slack so float noise never drops a frame


def frame_range(start: float, end: float, fps: int) -> range:
    """The frames k whose time k/fps lies in [start, end)."""
    return range(math.ceil(start * fps - _EPS), math.ceil(end * fps - _EPS))


def chunk_spans(audio, chunk_s: float) -> list[tuple[int, int, float, float]]:
    """How an avatar backend cuts a request's ``audio`` (an AudioChunk) into the chunks it yields:
    (first sample, end sample, start time, end time) of pieces of ~``chunk_s``, a sliver at the end
    folded into the last piece. Both ends are computed the same way for every piece and the last end
    is ``audio.end``, so neighbouring chunks and requests share exact boundaries."""
    n, sr = len(audio.samples), audio.sample_rate
    step = max(1, round(chunk_s * sr))
    cuts = list(range(0, n, step)) + [n]
    if len(cuts) > 2 and cuts[-1] - cuts[-2] < step // 4:
        del cuts[-2]
    return [(a, b, audio.start + a / sr, audio.end if b == n else audio.start + b / sr)
            for a, b in zip(cuts, cuts[1:])]


# ---------------------------------------------------------------------------------------------
# Idle motion


def _unit(seed: int, n: int) -> float:
    """A deterministic number in [0, 1) from (seed, n): splitmix64, cheap and stateless."""
    z = (seed * 0x9E3779B97F4A7C15 + n * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return ((z ^ (z >> 31)) >> 11) / float(1 << 53)


BLINK_SLOT_S = 4.0  # one blink per slot, 1..3 s into it: blinks come 2..6 s apart
BLINK_CLOSE_S, BLINK_HOLD_S, BLINK_OPEN_S = 0.05, 0.04, 0.06  # 150 ms; the hold is one 25 fps frame


def blink_at(t: float, seed: int = 0) -> float:
    """Eyelid closure (0 open .. 1 closed) at time t."""
    slot = math.floor(t / BLINK_SLOT_S)
    start = slot * BLINK_SLOT_S + 1.0 + 2.0 * _unit(seed, slot)
    d = t - start
    if d < 0.0:
        return 0.0
    if d < BLINK_CLOSE_S:
        x = d / BLINK_CLOSE_S
        return x * x * (3 - 2 * x)
    d -= BLINK_CLOSE_S
    if d < BLINK_HOLD_S:
        return 1.0
    d -= BLINK_HOLD_S
    if d < BLINK_OPEN_S:
        x = 1.0 - d / BLINK_OPEN_S
        return x * x * (3 - 2 * x)
    return 0.0


# (amplitude in degrees, frequency in Hz) pairs: slow incommensurate sways never visibly repeat
_YAW = ((1.6, 0.071), (0.6, 0.163))
_PITCH = ((0.9, 0.093), (0.35, 0.211))
_ROLL = ((0.8, 0.057), (0.25, 0.187))
BREATH_PERIOD_S = 4.0


def _sway(t: float, seed: int, terms, tag: int) -> float:
    return sum(a * math.sin(2 * math.pi * (f * t + _unit(seed, tag + i)))
               for i, (a, f) in enumerate(terms))


def idle_motion(t: float, seed: int = 0, scale: float = 1.0) -> FaceMotion:
    """The face at rest at time ``t`` seconds: slow head sway, breathing, blinks. Deterministic in
    (t, seed); ``scale`` multiplies the head sway."""
    return FaceMotion(
        head_yaw=scale * _sway(t, seed, _YAW, 1 << 20),
        head_pitch=scale * _sway(t, seed, _PITCH, 2 << 20),
        head_roll=scale * _sway(t, seed, _ROLL, 3 << 20),
        breath=math.sin(2 * math.pi * (t / BREATH_PERIOD_S + _unit(seed, 4 << 20))),
        blink=blink_at(t, seed),
    )


# ---------------------------------------------------------------------------------------------
# Speech -> mouth


@dataclass(frozen=True)
class SpeechMouthOptions:
    gate_db: float = -50.0  # frames quieter than this (dBFS) close the mouth completely
    range_db: float = 24.0  # levels from (reference - range_db) up to the reference open 0 .. 1
    ref_floor_db: float = -32.0  # the reference level is the loud end of the speech, at least this
    gamma: float = 2.0  # >1 keeps quiet consonants nearly closed and vowels open
    attack_s: float = 0.035  # opening time constant
    release_s: float = 0.09  # closing time constant (mouths close slower than they open)
    width_s: float = 0.08  # spread/round time constant
    lookahead_s: float = 0.02  # the lips move slightly before the sound is heard
    window_s: float = 0.04  # analysis window, one 25 fps frame
    max_step: float = 0.45  # most the opening may change in one frame: no flicker
    ratio_mid: float = 0.05  # high-band energy ratio of a neutral vowel
    ratio_span_dec: float = 0.45  # decades of that ratio from neutral to fully spread/rounded


@dataclass(frozen=True)
class MouthTrack:
    """Mouth values for frames ``first_frame .. first_frame + len(open) - 1``."""

    first_frame: int
    open: np.ndarray
    width: np.ndarray
    brow: np.ndarray

    def __len__(self) -> int:
        return len(self.open)


class SpeechMouth:
    """Per-frame mouth opening, width and a brow lift from speech audio."""

    def __init__(self, fps: int = 25, options: SpeechMouthOptions = SpeechMouthOptions()):
        self.fps, self.o = fps, options

    def track(self, audio: AudioChunk, previous: FaceMotion | None = None) -> MouthTrack:
        """Mouth values for the frames whose times fall in ``[audio.start, audio.end)``."""
        frames = frame_range(audio.start, audio.end, self.fps)
        n = len(frames)
        if n == 0:
            empty = np.zeros(0, np.float32)
            return MouthTrack(frames.start, empty, empty, empty)
        db, ratio = self._features(audio, frames)
        o = self.o
        voiced = db >= o.gate_db
        ref = max(float(np.percentile(db[voiced], 95)) if voiced.any() else -np.inf, o.ref_floor_db)
        level = np.clip((db - (ref - o.range_db)) / o.range_db, 0.0, 1.0) ** o.gamma
        open_t = np.where(voiced, level, 0.0)
        shape = np.clip((np.log10(ratio + 1e-6) - math.log10(o.ratio_mid)) / o.ratio_span_dec,
                        -1.0, 1.0)
        width_t = shape * np.clip(open_t / 0.3, 0.0, 1.0)  # only an open mouth has a shape
        brow_t = np.where(voiced, 0.5 * np.clip((db - (ref - 4.0)) / 4.0, 0.0, 1.0), 0.0)
        start = previous or FaceMotion()
        return MouthTrack(frames.start,
                          self._smooth(open_t, start.mouth_open, o.attack_s, o.release_s, o.max_step),
                          self._smooth(width_t, start.mouth_width, o.width_s, o.width_s, 1.0),
                          self._smooth(brow_t, start.brow, 0.12, 0.35, 1.0))

    def _features(self, audio: AudioChunk, frames: range) -> tuple[np.ndarray, np.ndarray]:
        """Per frame: level in dBFS and the share of 1.5-4 kHz energy in 250 Hz-4 kHz."""
        x = audio.samples.astype(np.float64)
        sr = audio.sample_rate
        t = np.arange(frames.start, frames.stop) / self.fps - audio.start + self.o.lookahead_s
        centre = np.round(t * sr).astype(np.int64)
        half = max(1, int(round(self.o.window_s * sr / 2)))
        # level: mean square over the window via a cumulative sum, silence outside the audio
        cs = np.concatenate([[0.0], np.cumsum(x * x)])
        lo = np.clip(centre - half, 0, len(x))
        hi = np.clip(centre + half, 0, len(x))
        db = 10.0 * np.log10((cs[hi] - cs[lo]) / (2 * half) + 1e-12)
        # spectrum: one windowed FFT per frame
        nfft = 1 << max(6, int(math.ceil(math.log2(2 * half))))
        padded = np.concatenate([np.zeros(nfft), x, np.zeros(nfft)])
        idx = (centre[:, None] - nfft // 2 + nfft) + np.arange(nfft)[None, :]
        idx = np.clip(idx, 0, len(padded) - 1)
        spec = np.abs(np.fft.rfft(padded[idx] * np.hanning(nfft), axis=1)) ** 2
        freq = np.fft.rfftfreq(nfft, 1.0 / sr)
        top = min(4000.0, 0.95 * sr / 2)
        band = spec[:, (freq >= 250.0) & (freq < top)].sum(axis=1)
        high = spec[:, (freq >= 1500.0) & (freq < top)].sum(axis=1)
        return db, high / (band + 1e-12)

    def _smooth(self, target: np.ndarray, start: float, attack_s: float, release_s: float,
                max_step: float) -> np.ndarray:
        """One-pole attack/release smoothing (co-articulation): rises fast, falls slower, never
        jumps more than ``max_step`` a frame; settles to exactly 0 when the target is 0."""
        dt = 1.0 / self.fps
        up, down = 1.0 - math.exp(-dt / attack_s), 1.0 - math.exp(-dt / release_s)
        out = np.empty(len(target), np.float64)
        y = float(start)
        for i, goal in enumerate(target.tolist()):
            step = (goal - y) * (up if abs(goal) > abs(y) else down)
            y += max(-max_step, min(max_step, step))
            if goal == 0.0 and abs(y) < 0.01:
                y = 0.0
            out[i] = y
        return out
