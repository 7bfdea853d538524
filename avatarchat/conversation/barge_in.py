"""Talking over the avatar: pause it at the first voiced chunk, interrupt it once the voice has
lasted ``min_speech_s``, and let it go on if the sound stops before that (a cough, a click).

Pausing at once is what makes an interruption feel instant (the avatar goes quiet within a chunk
of the user starting to speak); waiting for ``min_speech_s`` before cancelling the reply is what
keeps a short noise from throwing the reply away. Fed one VAD probability per chunk, only while the
avatar is speaking; see avatarchat/conversation/core.py for what each decision does.
"""

from __future__ import annotations

from enum import Enum


class BargeIn(Enum):
    PAUSE = "pause"          # voice started: silence the avatar, keep its reply
    RESUME = "resume"        # it stopped before min_speech_s: the reply goes on where it paused
    INTERRUPT = "interrupt"  # min_speech_s of voice: cancel the reply


class BargeInDetector:
    def __init__(self, *, chunk_s: float, threshold: float, neg_threshold: float,
                 min_speech_s: float, resume_after_s: float):
        self.chunk_s, self.threshold, self.neg_threshold = chunk_s, threshold, neg_threshold
        self.min_speech_s, self.resume_after_s = min_speech_s, resume_after_s
        self.reset()

    def reset(self) -> None:
        self.paused = False
        self.decided = False  # an interruption was decided; nothing more until reset()
        self._voiced = self._quiet = 0.0

    def feed(self, probability: float) -> BargeIn | None:
        if self.decided:
            return None
        if not self.paused:
            if probability < self.threshold:
                return None
            self.paused, self._voiced, self._quiet = True, 0.0, 0.0
            action = BargeIn.PAUSE
        else:
            action = None
        if probability >= self.neg_threshold:
            self._voiced += self.chunk_s
            self._quiet = 0.0
        else:
            self._quiet += self.chunk_s
        if self._voiced >= self.min_speech_s - 1e-9:
            self.decided, self.paused = True, False
            return BargeIn.INTERRUPT
        if self._quiet >= self.resume_after_s - 1e-9:
            self.paused = False
            return BargeIn.RESUME
        return action
