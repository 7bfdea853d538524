"""Facial expressions: an emotion becomes a target (smile, surprise), reached and left smoothly.

The emotion of a turn comes from the ASR (SenseVoice reports one per utterance) or from a tag the
LLM puts in its reply (``[happy] Great to hear!``, see ``EmotionTagFilter``); the avatar stage
eases the face towards it, and the playout eases it back to neutral once the reply is over. Two
numbers carry the expression from frame to frame (FaceMotion.smile and .surprise); ``offsets``
turns them into what they do to brows, jaw and head, in one place for every caller.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

EMOTIONS = ("neutral", "happy", "sad", "surprised", "angry")


@dataclass(frozen=True, slots=True)
class Expression:
    smile: float = 0.0     # -1 corners down (sad) .. +1 corners up (happy)
    surprise: float = 0.0  # 0 .. 1: brows up, jaw a little open


TARGETS = {
    "neutral": Expression(),
    "happy": Expression(smile=0.8),
    "sad": Expression(smile=-0.7),
    "surprised": Expression(surprise=0.9),
    # A photo cannot frown convincingly with these warps; anger reads as a tight, lowered mouth.
    "angry": Expression(smile=-0.4),
}

# What other detectors call them (SenseVoice's emotion tokens, common synonyms) -> ours.
ALIASES = {
    "neutral": "neutral", "happy": "happy", "joy": "happy", "joyful": "happy", "excited": "happy",
    "sad": "sad", "sadness": "sad", "unhappy": "sad", "fearful": "sad", "fear": "sad",
    "surprised": "surprised", "surprise": "surprised", "angry": "angry", "anger": "angry",
    "disgusted": "angry", "disgust": "angry", "emo_unknown": "neutral", "unk": "neutral",
    # An LLM answering in Chinese tags its reply in Chinese: 【开心】 or （难过）.
    "开心": "happy", "高兴": "happy", "快乐": "happy", "难过": "sad", "伤心": "sad", "悲伤": "sad",
    "惊讶": "surprised", "吃惊": "surprised", "生气": "angry", "愤怒": "angry", "平静": "neutral",
    "中性": "neutral",
}

BLEND_IN_S = 0.35   # time constant towards a new expression
BLEND_OUT_S = 0.6   # time constant back to neutral once the reply is over


def normalise(emotion: str | None) -> str | None:
    """Our name for ``emotion`` (case and SenseVoice's ``<|HAPPY|>`` brackets ignored), or None."""
    if not emotion:
        return None
    key = emotion.strip().strip("<|>").lower()
    return ALIASES.get(key)


def target(emotion: str | None) -> Expression:
    return TARGETS.get(normalise(emotion) or "neutral", TARGETS["neutral"])


def ease(current: Expression, goal: Expression, dt: float, time_constant_s: float) -> Expression:
    """One step of a one-pole blend from ``current`` towards ``goal``."""
    a = 1.0 - math.exp(-dt / time_constant_s)
    smile = current.smile + (goal.smile - current.smile) * a
    surprise = current.surprise + (goal.surprise - current.surprise) * a
    # settle exactly, so a neutral face is exactly the photo again (the renderer's fast path)
    if abs(smile - goal.smile) < 0.005:
        smile = goal.smile
    if abs(surprise - goal.surprise) < 0.005:
        surprise = goal.surprise
    return Expression(smile, surprise)


@dataclass(frozen=True, slots=True)
class Offsets:
    brow: float
    head_pitch: float  # degrees; negative looks down
    mouth_open: float  # the least the jaw is open


def offsets(e: Expression) -> Offsets:
    """What an expression does besides the mouth corners: happy lifts the brows a little, sad
    lowers them and the head, surprise raises them high and drops the jaw."""
    happy, sad = max(e.smile, 0.0), max(-e.smile, 0.0)
    return Offsets(brow=0.15 * happy - 0.45 * sad + 0.9 * e.surprise,
                   head_pitch=-2.5 * sad, mouth_open=0.12 * e.surprise)


# Latin or full-width brackets around an English word or a short Chinese one.
_OPEN, _CLOSE = "[(<【（［", "])>】）］"
_TAG = re.compile(r"^\s*[\[(<【（［]\s*([A-Za-z_]{3,12}|[\u4e00-\u9fff]{1,4})\s*[\])>】）］]\s*")
_MAX_TAG_CHARS = 20


class EmotionTagFilter:
    """Takes an emotion tag off the start of a streamed LLM reply: ``[happy] Hi!`` -> ``Hi!`` and
    ``emotion == "happy"``. Text without a tag passes through unchanged (after at most
    ``_MAX_TAG_CHARS`` characters of look-ahead at the very start); an unknown word in brackets
    stays in the text. Full-width brackets and Chinese emotion words count too (``【开心】你好``)."""

    def __init__(self):
        self.emotion: str | None = None
        self._head = ""
        self._done = False
        self._after_tag = False  # the space after a tag goes with it

    def feed(self, text: str) -> str:
        if self._done:
            if self._after_tag:
                text = text.lstrip()
                self._after_tag = not text
            return text
        self._head += text
        stripped = self._head.lstrip()
        if stripped and stripped[0] not in _OPEN:
            return self._release(self._head)
        match = _TAG.match(self._head)
        if match and (name := normalise(match.group(1))) is not None:
            self.emotion = name
            rest = self._release(self._head[match.end():])
            self._after_tag = not rest
            return rest
        closed = any(c in self._head for c in _CLOSE)
        if closed or len(self._head) > _MAX_TAG_CHARS:
            return self._release(self._head)  # brackets, but not an emotion: keep them
        return ""  # maybe a tag still arriving

    def flush(self) -> str:
        return "" if self._done else self._release(self._head)

    def _release(self, text: str) -> str:
        self._done, self._head = True, ""
        return text
