"""Shared fixtures. Add fixtures by appending; keep each small."""

import os
import tempfile
from pathlib import Path

import pytest

# No test reaches a Ray cluster it did not start. Ray resolves a missing address from RAY_ADDRESS,
# then from the "most recent cluster" file in its temp dir (scripts/serve.sh's, a dead one, anyone's):
# the suite gets a temp dir of its own, so that file names only clusters the suite started, and
# every cluster test passes its cluster's address explicitly (avatarchat/local_cluster.py).
os.environ.pop("RAY_ADDRESS", None)
os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="avatar-chat-tests-ray-")

from avatarchat.audio import read_wav
from avatarchat.backends.base import create_backend, package_dir
from avatarchat.config import parse_stage

BECKETT_TEXT = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."


@pytest.fixture(scope="session")
def speech_assets() -> Path:
    """moonshine-voice's real human recordings: beckett.wav, two_cities.wav."""
    pkg = package_dir("moonshine_voice")
    if pkg is None or not (pkg / "assets" / "beckett.wav").exists():
        pytest.skip("moonshine-voice (real speech recordings) is not installed")
    return pkg / "assets"


@pytest.fixture(scope="session")
def beckett(speech_assets):
    """(samples, sample_rate, text) of beckett.wav, ~10 s of a real voice."""
    samples, rate = read_wav(speech_assets / "beckett.wav")
    return samples, rate, BECKETT_TEXT


def _backend(stage: str, name: str, **options):
    return create_backend(parse_stage("test", stage, {"backend": name, **options}))


@pytest.fixture(scope="session")
def silero_vad():
    return _backend("vad", "silero")


@pytest.fixture(scope="session")
def whisper_asr():
    backend = _backend("asr", "faster_whisper")
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def llama_llm():
    backend = _backend("llm", "llama_cpp")
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def hibari_tts():
    """hibari with its noise seeded: the same text is the same audio every run, so a test that
    transcribes it passes or fails the same way every time (unseeded, a rare "Hello!" came back
    "Hello? Hello?" from Whisper and failed CI by chance)."""
    backend = _backend("tts", "hibari", seed=0)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def smart_turn():
    """Smart Turn v3.2 end-of-turn model from the pipecat-ai wheel."""
    backend = _backend("end_of_turn", "smart_turn")
    yield backend
    backend.close()
