"""Cut a stream of LLM text deltas into sentences, so TTS starts on the first sentence while the
LLM is still writing the rest."""

from __future__ import annotations

import re
from collections.abc import Iterator

# End punctuation followed by whitespace; the whitespace proves the sentence is over ("3.5" and
# "e.g." mid-token do not cut). CJK full stops end a sentence without a space.
_END = re.compile(r"([.!?…]+[\"')\]]*)\s+|([。！？])")
# Markdown the LLM may emit that TTS would read aloud. Only these symbols are removed: letters,
# accents, apostrophes and other scripts are always kept.
_MARKUP = re.compile(r"[*_#`~]+")


def clean_for_speech(text: str) -> str:
    return re.sub(r"\s+", " ", _MARKUP.sub("", text)).strip()


_CLAUSE = re.compile(r"[,;:—]\s+")


class SentenceChunker:
    """Feed deltas, get complete sentences; ``flush()`` returns what is left at the end.

    ``max_chars`` bounds a sentence that never ends (a run-on reply): it is cut at the last clause
    boundary (comma, semicolon, colon) or space before the limit.

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
                if m.start() + 1 >= self.first_clause_chars:
                    return m.end()
        limit = self.first_max_chars if self._first else self.max_chars
        if len(self._buf) > limit:
            head = self._buf[:limit]
            for sep in (";", ":", ",", " "):
                i = head.rfind(sep)
                if i > 0:
                    return i + 1
            return limit
        return None
