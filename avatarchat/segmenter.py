"""Turn per-chunk VAD probabilities into utterances: start/end hysteresis, pre-roll, typed events.

``SpeechSegmenter`` is a small state machine with two thresholds and two durations, in the manner of
Silero's own ``get_speech_timestamps``:

* a *speech run* starts at a chunk whose probability is at or above ``threshold`` and is broken by a
  chunk below ``neg_threshold``; once it has lasted ``start_ms`` the utterance starts (at the run's
  first chunk), so a short click or blip never starts one;
* a *silence run* starts at a chunk below ``neg_threshold`` and is broken by a chunk at or above
  ``threshold``; once it has lasted ``end_ms`` the utterance ends (at the run's first chunk), so a
  pause to breathe does not end it.

Chunks between the two thresholds neither start nor break a run. Times are seconds on the stream's
own timeline (samples fed so far), so ``at_s`` values are exact multiples of the chunk duration.

``find_speech`` runs a VAD backend and a segmenter over a whole recording.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import numpy as np

from avatarchat.audio import resample
from avatarchat.messages import AudioChunk


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began at ``at_s`` (decided ``start_ms`` later)."""

    at_s: float


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """Speech ended at ``at_s`` (decided ``end_ms`` later). ``audio`` is the utterance: from
    ``pre_roll_ms`` before its start to ``post_roll_ms`` after its end (``audio.start`` is where it
    begins on the stream's timeline). ``forced`` is true when the utterance was cut by
    ``max_utterance_s`` or by ``flush()`` rather than by silence.

    ``rule`` says what decided the end: ``"vad"`` (``end_ms`` of silence), ``"model"`` (the
    end-of-turn model, see avatarchat/end_of_turn.py), ``"timeout"`` (``max_pause_ms`` of silence
    although the model said the turn was not over) or ``"forced"``. ``decision_delay_s`` is the
    silence waited between ``at_s`` and the decision (0 when forced). ``completion`` is the
    end-of-turn model's last probability for this utterance (None when it was not asked)."""

    at_s: float
    audio: AudioChunk
    forced: bool = False
    rule: str = "vad"
    decision_delay_s: float = 0.0
    completion: float | None = None


SegmenterEvent = SpeechStarted | SpeechEnded


class SpeechSegmenter:
    """Feed one chunk's speech probability (and its samples) at a time; get events back.

    The defaults match ``avatarchat.backends.vad.silero.SileroVAD.Options``; pass those options'
    values as plain numbers. ``samples`` may be omitted (``None``) when only times are needed: then
    each chunk counts as ``chunk_samples`` long and ``SpeechEnded.audio`` is empty.
    """

    def __init__(self, *, sample_rate: int = 16000, chunk_samples: int = 512,
                 threshold: float = 0.5, neg_threshold: float = 0.35,
                 start_ms: float = 96.0, end_ms: float = 600.0,
                 pre_roll_ms: float = 200.0, post_roll_ms: float = 200.0,
                 max_utterance_s: float | None = None):
        if not 0.0 < neg_threshold <= threshold < 1.0:
            raise ValueError(f"need 0 < neg_threshold ({neg_threshold}) <= threshold ({threshold}) < 1")
        if end_ms <= 0 or start_ms < 0 or pre_roll_ms < 0 or post_roll_ms < 0:
            raise ValueError("start_ms, pre_roll_ms and post_roll_ms must be >= 0, end_ms > 0")
        self.sample_rate, self.chunk_samples = sample_rate, chunk_samples
        self.threshold, self.neg_threshold = threshold, neg_threshold
        self.start_ms, self.end_ms = float(start_ms), float(end_ms)
        self.pre_roll = int(round(pre_roll_ms * sample_rate / 1000))
        self.post_roll = int(round(post_roll_ms * sample_rate / 1000))
        self.max_utterance = (None if max_utterance_s is None
                              else int(round(max_utterance_s * sample_rate)))
        self.reset()

    # -- state -------------------------------------------------------------------------------
    def reset(self) -> None:
        self.position = 0                    # samples fed so far
        self.in_speech = False
        self._run_start: int | None = None   # first sample of the current speech (idle) / silence run
        self._speech_start = 0               # first sample of the current utterance's speech
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # (start sample, samples)

    @property
    def now_s(self) -> float:
        return self.position / self.sample_rate

    def _ms(self, samples: int) -> float:
        return samples * 1000.0 / self.sample_rate

    # -- feeding -----------------------------------------------------------------------------
    def feed(self, probability: float, samples: np.ndarray | None = None) -> list[SegmenterEvent]:
        """Advance by one chunk with speech probability ``probability``. Returns 0..2 events."""
        n = self.chunk_samples if samples is None else len(samples)
        start = self.position
        self.position += n
        if samples is not None:
            self._chunks.append((start, np.asarray(samples, dtype=np.float32)))
        events: list[SegmenterEvent] = []
        is_speech = probability >= self.threshold
        is_silence = probability < self.neg_threshold

        if not self.in_speech:
            if is_speech and self._run_start is None:
                self._run_start = start
            elif is_silence:
                self._run_start = None
            if self._run_start is not None and self._ms(self.position - self._run_start) >= self.start_ms - 1e-9:
                self.in_speech = True
                self._speech_start = self._run_start
                self._run_start = None
                events.append(SpeechStarted(self._speech_start / self.sample_rate))
            else:
                self._trim_idle()
        else:
            if is_silence and self._run_start is None:
                self._run_start = start
            elif is_speech:
                self._run_start = None
            ended = self._silence_step()
            if ended is not None:
                events.append(ended)
            elif (self.max_utterance is not None
                  and self.position - self._speech_start >= self.max_utterance):
                events.append(self._end(self.position, forced=True))
        return events

    def _silence_step(self) -> SpeechEnded | None:
        """In speech, after the silence run was updated: end the utterance if its silence says so.
        Here ``end_ms`` of silence does; avatarchat.end_of_turn.EndOfTurn overrides this."""
        if self._run_start is not None and self._ms(self.position - self._run_start) >= self.end_ms - 1e-9:
            return self._end(self._run_start, forced=False)
        return None

    def flush(self) -> list[SegmenterEvent]:
        """End of the stream: end an utterance still open (at its silence run's start, if any)."""
        if not self.in_speech:
            return []
        end = self._run_start if self._run_start is not None else self.position
        return [self._end(end, forced=self._run_start is None)]

    def _trim_idle(self) -> None:
        # While idle keep only what a start could still need: the pre-roll before the current
        # speech run (or before the next chunk, when there is no run).
        keep_from = (self._run_start if self._run_start is not None else self.position) - self.pre_roll
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= keep_from:
            self._chunks.popleft()

    def _end(self, end: int, forced: bool, rule: str = "vad") -> SpeechEnded:
        lo = max(0, self._speech_start - self.pre_roll)
        hi = min(self.position, end + self.post_roll)
        audio = self._slice(lo, hi)
        self.in_speech = False
        self._run_start = None
        self._trim_idle()
        delay = 0.0 if forced else (self.position - end) / self.sample_rate
        return SpeechEnded(end / self.sample_rate, AudioChunk(audio, self.sample_rate, lo / self.sample_rate),
                           forced, "forced" if forced else rule, delay)

    def _slice(self, lo: int, hi: int) -> np.ndarray:
        parts = []
        for start, chunk in self._chunks:
            a, b = max(lo, start), min(hi, start + len(chunk))
            if a < b:
                parts.append(chunk[a - start:b - start])
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def segmenter_for(vad_backend, **overrides) -> SpeechSegmenter:
    """A segmenter with the VAD backend's rate, chunk size and (where its options have them) its
    hysteresis settings; keyword arguments override."""
    opts = getattr(vad_backend, "options", None)
    kwargs = {"sample_rate": vad_backend.sample_rate, "chunk_samples": vad_backend.chunk_samples}
    for key in ("threshold", "neg_threshold", "start_ms", "end_ms", "pre_roll_ms"):
        if hasattr(opts, key):
            kwargs[key] = getattr(opts, key)
    kwargs.update(overrides)
    return SpeechSegmenter(**kwargs)


def find_speech(samples: np.ndarray, sample_rate: int, vad_backend, **overrides) -> list[tuple[float, float]]:
    """Speech segments ``(start_s, end_s)`` in a whole recording, oldest first.

    The recording is resampled to the backend's rate and scored chunk by chunk with a fresh VAD
    stream; ``overrides`` (``threshold``, ``end_ms``, ...) replace the backend's options. A segment
    still open at the end of the recording ends there. Times are seconds from the recording's start.
    """
    segments = scan_recording(samples, sample_rate, vad_backend, segmenter_for(vad_backend, **overrides),
                              keep_audio=False)  # times only: no audio kept
    return [(start, end.at_s) for start, end in segments]


def scan_recording(samples: np.ndarray, sample_rate: int, vad_backend, segmenter: SpeechSegmenter,
                   keep_audio: bool = True) -> list[tuple[float, SpeechEnded]]:
    """Run ``segmenter`` over a whole recording with a fresh VAD stream of ``vad_backend``: each
    utterance as (its start, its SpeechEnded), ``at_s`` clamped to the recording's end (an utterance
    still open there ends there). Shared by find_speech and end_of_turn.find_turns."""
    x = resample(np.asarray(samples, dtype=np.float32), sample_rate, vad_backend.sample_rate)
    n = vad_backend.chunk_samples
    if len(x) % n:
        x = np.concatenate([x, np.zeros(n - len(x) % n, np.float32)])
    stream = vad_backend.new_stream()
    duration = len(samples) / sample_rate
    out: list[tuple[float, SpeechEnded]] = []
    start: float | None = None

    def handle(events):
        nonlocal start
        for ev in events:
            if isinstance(ev, SpeechStarted):
                start = ev.at_s
            elif start is not None:
                out.append((start, dataclasses.replace(ev, at_s=min(ev.at_s, duration))))
                start = None

    for i in range(0, len(x), n):
        chunk = x[i:i + n]
        handle(segmenter.feed(stream.probability(chunk), chunk if keep_audio else None))
    handle(segmenter.flush())
    return out
