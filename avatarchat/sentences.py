"""Cut a stream of LLM text deltas into sentences, so TTS starts on the first sentence while the
LLM is still writing the rest."""

from __future__ import annotations

import re
from collections.abc import Iterator

# End punctuation followed by whitespace; the whitespace proves the sentence is over ("3.5" and
# "e.g." mid-token do not cut). CJK full stops end a sentence without a space (with any closing
# quotes or brackets that follow them).
_END = re.compile(r"([.!?…]+[\"')\]]*)\s+|([。！？]+[”’」』）】]*)")
# Markdown the LLM may emit that TTS would read aloud. Only these symbols are removed: letters,
# accents, apostrophes and other scripts are always kept.
_MARKUP = re.compile(r"[*_#`~]+")


def clean_for_speech(text: str) -> str:
    return re.sub(r"\s+", " ", _MARKUP.sub("", text)).strip()


# Clause boundaries: Latin ones need the space after them; CJK commas, enumeration commas,
# semicolons and colons stand alone.
_CLAUSE = re.compile(r"[,;:—]\s+|[，、；：]")
# Where a run-on chunk may be cut, best first.
_FALLBACK_CUTS = ("；", ";", "：", ":", "，", ",", "、", " ")


def _is_wide(ch: str) -> bool:
    """A CJK character (ideograph, kana, hangul): one spoken syllable, so it counts as ~3 Latin
    letters when the chunker measures how long a clause is to say."""
    o = ord(ch)
    return (0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF
            or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF)


def spoken_length(text: str) -> int:
    """Length in Latin-letter equivalents: CJK characters count 3, everything else 1. The chunk
    limits below are in these units, so a Chinese reply is cut at the same spoken length as an
    English one rather than after 3x as much speech."""
    return sum(3 if _is_wide(ch) else 1 for ch in text)


def _index_at_length(text: str, limit: int) -> int:
    """The largest index ``i`` with ``spoken_length(text[:i]) <= limit``."""
    total = 0
    for i, ch in enumerate(text):
        total += 3 if _is_wide(ch) else 1
        if total > limit:
            return i
    return len(text)


class SentenceChunker:
    """Feed deltas, get complete sentences; ``flush()`` returns what is left at the end.

    ``max_chars`` bounds a sentence that never ends (a run-on reply): it is cut at the last clause
    boundary (semicolon, colon, comma, in Latin or CJK form) or space before the limit.

    Lengths are spoken lengths (``spoken_length``: a CJK character counts as 3 letters), so the
    same limits fit Chinese, Japanese and Korean replies, which have no spaces between words.

    The first chunk of a reply decides when the avatar starts speaking, so it may end early: at a
    clause boundary once it has ``first_clause_chars`` characters, or at a space once it has
    ``first_max_chars``. A long first sentence then does not hold the voice back until the LLM
    has written all of it.
    """

    def __init__(self, min_chars: int = 2, max_chars: int = 240,
                 first_clause_chars: int = 30, first_max_chars: int = 100):
        self.min_chars, self.max_chars = min_chars, max_chars
        self.first_clause_chars, self.first_max_chars = first_clause_chars, first_max_chars
        self._first = True
        self._buf = ""

    def feed(self, delta: str) -> Iterator[str]:
        self._buf += delta
        while True:
            cut = self._next_cut()
            if cut is None:
                return
            sentence, self._buf = self._buf[:cut], self._buf[cut:]
            sentence = clean_for_speech(sentence)
            if len(sentence) >= self.min_chars:
                self._first = False
                yield sentence

    def flush(self) -> str | None:
        rest, self._buf = clean_for_speech(self._buf), ""
        return rest if len(rest) >= self.min_chars else None

    def _next_cut(self) -> int | None:
        for m in _END.finditer(self._buf):
            if m.end() - (len(m.group(0)) - len(m.group(0).rstrip())) >= self.min_chars:
                return m.end()
        if self._first:
            for m in _CLAUSE.finditer(self._buf):
                if spoken_length(self._buf[:m.start() + 1]) >= self.first_clause_chars:
                    return m.end()
        limit = self.first_max_chars if self._first else self.max_chars
        if spoken_length(self._buf) > limit:
            end = _index_at_length(self._buf, limit)
            head = self._buf[:end]
            for sep in _FALLBACK_CUTS:
                i = head.rfind(sep)
                if i > 0:
                    return i + 1
            return max(end, 1)
        return None
