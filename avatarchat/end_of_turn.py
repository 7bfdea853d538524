"""End of turn: VAD hysteresis plus an end-of-turn model decide when the user has finished.

:class:`EndOfTurn` is a :class:`avatarchat.segmenter.SpeechSegmenter` (same ``feed(probability,
samples) -> events`` API, same :class:`SpeechStarted` / :class:`SpeechEnded` events) whose utterances
end by these rules instead of a single ``end_ms`` of silence:

1. after ``pause_ms`` of silence (default 200 ms) the turn model is asked, once per pause, with the
   utterance so far (from ``pre_roll_ms`` before its start up to now, the pause included);
2. if its completion probability is at or above ``turn_threshold`` (default 0.5) the utterance ends
   there: ``SpeechEnded(rule="model")``, a fast answer to a finished sentence;
3. otherwise it keeps listening: speech resuming continues the *same* utterance (the audio before and
   after the pause form one ``SpeechEnded.audio``), and the model is asked again at the next pause;
4. ``max_pause_ms`` of silence (default 1600 ms) ends it whatever the model said:
   ``SpeechEnded(rule="timeout")``, so a thinking pause is allowed but the user is never left hanging.

``SpeechEnded.at_s`` is where the silence began, ``decision_delay_s`` the silence waited before the
decision (stream time; the model's own compute time comes on top in a live session), ``completion``
the model's last probability. With no turn model (``turn=None``, or the ``vad_only`` backend) it is
exactly a SpeechSegmenter: the VAD's ``end_ms`` ends the utterance, ``rule="vad"``.

The model call is synchronous (one Smart Turn v3.2 call: ~60 ms at best on the 2-core test machine,
80-90 ms with other load, see docs/architecture.md) and happens inside the ``feed`` that completes ``pause_ms`` of silence,
once per pause. In an event loop use :meth:`EndOfTurn.afeed`, which runs only that one feed in a
worker thread.

``find_turns`` runs a VAD backend, a turn backend and an EndOfTurn over a whole recording.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from avatarchat.segmenter import (SegmenterEvent, SpeechEnded, SpeechSegmenter, SpeechStarted, scan_recording,
                                  segmenter_for)

__all__ = ["EndOfTurn", "SpeechEnded", "SpeechStarted", "TurnSpan", "end_of_turn_for", "find_turns"]


class EndOfTurn(SpeechSegmenter):
    """A SpeechSegmenter whose pauses are judged by a turn model (see the module doc).

    ``turn`` is a loaded turn backend (``completion(audio) -> float`` at ``turn.sample_rate``, which
    must equal ``sample_rate``) or None for VAD-only. The other keyword arguments are
    SpeechSegmenter's (``threshold``/``neg_threshold`` are the VAD's; ``end_ms`` is used only when
    there is no turn model).
    """

    def __init__(self, *, turn=None, turn_threshold: float = 0.5, pause_ms: float = 200.0,
                 max_pause_ms: float = 1600.0, **segmenter_kwargs):
        super().__init__(**segmenter_kwargs)
        if turn is not None and not getattr(turn, "uses_model", True):
            turn = None  # vad_only: the VAD's end_ms decides
        if turn is not None and getattr(turn, "sample_rate", self.sample_rate) != self.sample_rate:
            raise ValueError(f"turn model runs at {turn.sample_rate} Hz but the audio is {self.sample_rate} Hz")
        if not 0.0 <= turn_threshold <= 1.0:
            raise ValueError(f"turn_threshold must be in [0, 1], got {turn_threshold}")
        if pause_ms <= 0 or max_pause_ms < pause_ms:
            raise ValueError(f"need 0 < pause_ms ({pause_ms}) <= max_pause_ms ({max_pause_ms})")
        self.turn = turn
        self.turn_threshold = float(turn_threshold)
        self.pause_ms, self.max_pause_ms = float(pause_ms), float(max_pause_ms)

    def reset(self) -> None:
        super().reset()
        self._asked = False                       # the model was asked during the current pause
        self.last_completion: float | None = None  # the model's last answer in this utterance

    # -- the decision ------------------------------------------------------------------------
    def _silence_step(self) -> SpeechEnded | None:
        if self.turn is None:
            return super()._silence_step()
        if self._run_start is None:  # speaking (again): the next pause is asked about afresh
            self._asked = False
            return None
        silence_ms = self._ms(self.position - self._run_start)
        if not self._asked and silence_ms >= self.pause_ms - 1e-9:
            self._asked = True
            self.last_completion = float(self.turn.completion(self._audio_so_far()))
            if self.last_completion >= self.turn_threshold:
                return self._end(self._run_start, forced=False, rule="model")
        if silence_ms >= self.max_pause_ms - 1e-9:
            return self._end(self._run_start, forced=False, rule="timeout")
        return None

    def _audio_so_far(self) -> np.ndarray:
        lo = max(0, self._speech_start - self.pre_roll)
        audio = self._slice(lo, self.position)
        if len(audio) == 0:
            raise ValueError("EndOfTurn with a turn model needs each chunk's samples: feed(probability, samples)")
        return audio

    def _end(self, end: int, forced: bool, rule: str = "vad") -> SpeechEnded:
        completion = self.last_completion
        ev = super()._end(end, forced, rule)
        self._asked, self.last_completion = False, None
        if completion is None:
            return ev
        return SpeechEnded(ev.at_s, ev.audio, ev.forced, ev.rule, ev.decision_delay_s, completion)

    def flush(self) -> list[SegmenterEvent]:
        """End of the stream: with a turn model, an utterance still open ends as forced (its
        pause, if any, was not decided), at its silence's start if it is in one."""
        if self.turn is None or not self.in_speech:
            return super().flush()
        end = self._run_start if self._run_start is not None else self.position
        return [self._end(end, forced=True)]

    # -- async use ---------------------------------------------------------------------------
    def will_ask(self, probability: float, n_samples: int | None = None) -> bool:
        """Whether feeding this chunk calls the turn model (so it is worth a worker thread)."""
        if self.turn is None or not self.in_speech or self._asked or probability >= self.threshold:
            return False
        n = self.chunk_samples if n_samples is None else n_samples
        run_start = self._run_start
        if run_start is None:
            if probability >= self.neg_threshold:
                return False  # uncertain chunk: no silence run starts
            run_start = self.position
        return self._ms(self.position + n - run_start) >= self.pause_ms - 1e-9

    async def afeed(self, probability: float, samples: np.ndarray | None = None) -> list[SegmenterEvent]:
        """``feed`` for an event loop: the (rare) feed that asks the model runs in a worker thread."""
        if self.will_ask(probability, None if samples is None else len(samples)):
            return await asyncio.to_thread(self.feed, probability, samples)
        return self.feed(probability, samples)


def end_of_turn_for(vad_backend, turn_backend=None, **overrides) -> EndOfTurn:
    """An EndOfTurn for a session: the VAD backend's rate, chunk size and hysteresis (as
    ``segmenter_for``), the turn backend's ``threshold``, ``pause_ms`` and ``max_pause_ms`` where its
    options have them; keyword arguments (e.g. ``max_utterance_s=...``) override. ``turn_backend``
    None or ``vad_only`` gives today's VAD-only behaviour."""
    base = segmenter_for(vad_backend)
    kwargs = {"sample_rate": base.sample_rate, "chunk_samples": base.chunk_samples,
              "threshold": base.threshold, "neg_threshold": base.neg_threshold,
              "start_ms": base.start_ms, "end_ms": base.end_ms,
              "pre_roll_ms": base.pre_roll * 1000.0 / base.sample_rate}
    if turn_backend is not None and getattr(turn_backend, "uses_model", True):
        opts = getattr(turn_backend, "options", None)
        kwargs["turn"] = turn_backend
        for key, name in (("threshold", "turn_threshold"), ("pause_ms", "pause_ms"),
                          ("max_pause_ms", "max_pause_ms")):
            if hasattr(opts, key):
                kwargs[name] = getattr(opts, key)
    kwargs.update(overrides)
    return EndOfTurn(**kwargs)


@dataclass(frozen=True, slots=True)
class TurnSpan:
    """One user turn found in a recording: seconds from its start, what decided its end."""

    start_s: float
    end_s: float
    rule: str
    decision_delay_s: float
    completion: float | None


def find_turns(samples: np.ndarray, sample_rate: int, vad_backend, turn_backend=None,
               **overrides) -> list[TurnSpan]:
    """The user turns in a whole recording, oldest first: like ``find_speech`` but each utterance
    ends by the EndOfTurn rules. ``overrides`` go to ``end_of_turn_for`` (``pause_ms``,
    ``max_pause_ms``, ``turn_threshold``, ``end_ms``, ...). A turn still open at the end of the
    recording ends there (``rule="forced"``; ``"vad"`` in a pause when there is no turn model)."""
    eot = end_of_turn_for(vad_backend, turn_backend, **overrides)
    return [TurnSpan(start, end.at_s, end.rule, end.decision_delay_s, end.completion)
            for start, end in scan_recording(samples, sample_rate, vad_backend, eot)]
