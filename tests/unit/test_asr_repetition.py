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
