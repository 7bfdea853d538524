"""Word error rate: how far a transcript is from the words said. Used by the tests (tests/helpers.py
re-exports it) and by load_tests/bench_asr.py."""

from __future__ import annotations

from avatarchat.words import normalise_words


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance between two sequences (substitutions, insertions, deletions)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` after normalising both."""
    ref, hyp = normalise_words(reference), normalise_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
