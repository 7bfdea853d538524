"""`avatar-chat speak` makes an utterance the ASR understands (real TTS and ASR)."""

import asyncio

import pytest

from avatarchat.audio import read_wav
from avatarchat.client.cli import main
from avatarchat.messages import AudioChunk
from tests.helpers import wer

pytestmark = pytest.mark.models


def test_speak_writes_a_wav_that_says_the_text(tmp_path, whisper_asr):
    out = tmp_path / "q.wav"
    assert main(["speak", "What is your name?", str(out)]) == 0
    samples, rate = read_wav(out)
    heard = asyncio.run(whisper_asr.transcribe(AudioChunk(samples, rate)))
    assert wer("What is your name?", heard.text) <= 0.2, heard.text
