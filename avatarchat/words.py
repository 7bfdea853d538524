"""Words of a text, as people count them: what the ASR's repetition judge and the word error rate
compare."""

from __future__ import annotations

import re


def normalise_words(text: str) -> list[str]:
    """Lower case, punctuation dropped (apostrophes inside words kept), split on whitespace."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"[^\w\s']", " ", text)
    return [w.strip("'") for w in text.split() if w.strip("'")]
