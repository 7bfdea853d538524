"""The short-window ASR's check for a phrase said twice over (the start of a Whisper loop)."""

import pytest

from avatarchat.backends.asr.faster_whisper import is_repeated


@pytest.mark.parametrize("text", ["Hello? Hello?", "hello hello hello", "Bye bye.",
                                  "Where do you live? Where do you live?", "No, no, no."])
def test_a_phrase_said_over_again_is_repeated(text):
    assert is_repeated(text)


@pytest.mark.parametrize("text", ["", "Hello.", "Hello, hello there.", "Try again. Fail again.",
                                  "Where do you live? Where do you"])
def test_other_text_is_not(text):
    assert not is_repeated(text)


# -- the judge of a short-window decode: faster-whisper's thresholds, the token cap, the doubling --

from avatarchat.backends.asr.faster_whisper import ShortDecode, judge_short_decode  # noqa: E402

SURE = dict(tokens=8, max_tokens=124, avg_logprob=-0.2, no_speech_prob=0.01)


@pytest.mark.parametrize("text, changes, verdict", [
    ("Where do you live?", {}, ShortDecode.KEEP),
    ("Hello? Hello?", {}, ShortDecode.REDO),                                  # a doubled phrase
    ("What color is the sky? " * 6, {"tokens": 60}, ShortDecode.REDO),        # a loop (compression)
    ("the the the the", {"tokens": 124}, ShortDecode.REDO),                   # ran to the token cap
    ("I think so.", {"avg_logprob": -1.3}, ShortDecode.REDO),                 # unsure
    ("you", {"avg_logprob": -1.3, "no_speech_prob": 0.9}, ShortDecode.NO_SPEECH),
    ("Yes.", {"no_speech_prob": 0.9}, ShortDecode.KEEP),                      # sure of the words
])
def test_the_judge_of_a_short_decode(text, changes, verdict):
    assert judge_short_decode(text, **{**SURE, **changes}) is verdict
