"""Avatar packs: ``avatars/<name>/`` holds a portrait, its face landmarks and a small manifest.

A pack is data only (made once by ``avatars/tools/make_pack.py``); everything derived from it (warp
fields, masks) is computed when a renderer loads it, so packs stay small and tools stay simple.

A pack may carry its own voice for TTS that clones one (``cosyvoice``'s ``pack`` option), as an
optional section of ``pack.yaml``::

    voice:
      prompt_wav: voice.wav          # 3-30 s of the voice, in the pack directory
      prompt_text: "What the clip says, word for word."
      language: en                   # the clip's language code
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from avatarchat.languages import normalise

ENV_DIR = "AVATAR_CHAT_AVATARS_DIR"
N_LANDMARKS = 478  # MediaPipe FaceMesh with refined eyes and irises
REQUIRED_CONTOURS = ("lips_inner_upper", "lips_inner_lower", "lips_outer_upper", "lips_outer_lower",
                     "right_eye_upper", "right_eye_lower", "left_eye_upper", "left_eye_lower",
                     "right_brow", "left_brow", "jaw")


def avatars_dir() -> Path:
    """Where packs live: ``$AVATAR_CHAT_AVATARS_DIR``, else the repository's ``avatars/``."""
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "avatars"


def list_packs(directory: str | Path | None = None) -> list[str]:
    """Names of the packs (sub-directories with a ``pack.yaml``) in ``directory``."""
    root = Path(directory) if directory is not None else avatars_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "pack.yaml").is_file())


@dataclass(frozen=True)
class PackVoice:
    """A pack's own voice: a clip of it (``prompt_wav``, absolute), its transcript and language."""

    prompt_wav: Path
    prompt_text: str
    language: str | None = None


@dataclass(frozen=True, eq=False)
class AvatarPack:
    """One loaded pack. ``landmarks`` is (478, 3): x, y in pixels of ``image`` (pixel i covers
    [i, i+1)), z in MediaPipe's units. ``contours`` maps names to ordered landmark indices."""

    name: str
    path: Path
    image: np.ndarray  # (H, W, 3) uint8 RGB, read-only
    landmarks: np.ndarray
    contours: dict[str, tuple[int, ...]]
    points: dict[str, int]  # named single landmarks: chin, subnasale, ...
    meta: dict = field(repr=False)
    voice: PackVoice | None = None  # pack.yaml's optional voice section

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.shape[1], self.image.shape[0]

    @property
    def fps(self) -> int:
        return int(self.meta.get("fps", 25))

    @property
    def regions(self) -> dict[str, tuple[int, int, int, int]]:
        """Named boxes [x0, y0, x1, y1] from the manifest (mouth_box, eye boxes, face_box)."""
        return {k: tuple(int(v) for v in box) for k, box in (self.meta.get("regions") or {}).items()}

    def xy(self, name: str) -> np.ndarray:
        """The (n, 2) pixel coordinates of contour ``name``, in order."""
        return self.landmarks[list(self.contours[name]), :2]

    @classmethod
    def load(cls, name_or_path: str | Path) -> "AvatarPack":
        """Load a pack by name (from :func:`avatars_dir`) or by directory path."""
        path = _resolve(name_or_path)
        meta = yaml.safe_load(_need(path, "pack.yaml").read_text()) or {}
        image = _read_rgb(_need(path, meta.get("image", "image.png")))
        lm = json.loads(_need(path, meta.get("landmarks", "landmarks.json")).read_text())
        landmarks = np.asarray(lm["points"], dtype=np.float64)
        if landmarks.shape != (N_LANDMARKS, 3):
            raise ValueError(f"{path}: landmarks.json must hold {N_LANDMARKS} [x, y, z] points, "
                             f"got shape {landmarks.shape}")
        contours = {k: tuple(int(i) for i in v) for k, v in lm.get("contours", {}).items()}
        missing = [c for c in REQUIRED_CONTOURS if c not in contours]
        if missing:
            raise ValueError(f"{path}: landmarks.json lacks contours {', '.join(missing)}; "
                             "remake the pack with avatars/tools/make_pack.py")
        size = meta.get("image_size")
        if size and tuple(size) != (image.shape[1], image.shape[0]):
            raise ValueError(f"{path}: pack.yaml says image_size {size}, image is "
                             f"{image.shape[1]}x{image.shape[0]}")
        voice = _voice(path, meta)
        image.setflags(write=False)
        landmarks.setflags(write=False)
        return cls(name=str(meta.get("name", path.name)), path=path, image=image,
                   landmarks=landmarks, contours=contours,
                   points={k: int(v) for k, v in lm.get("points_named", {}).items()}, meta=meta,
                   voice=voice)


def load_voice(name_or_path: str | Path) -> PackVoice | None:
    """The voice section of a pack (by name or path), or None if it has none. Reads pack.yaml
    only: a TTS replica needs no image or landmarks."""
    path = _resolve(name_or_path)
    return _voice(path, yaml.safe_load(_need(path, "pack.yaml").read_text()) or {})


_VOICE_KEYS = ("prompt_wav", "prompt_text", "language")


def _voice(pack_dir: Path, meta: dict) -> PackVoice | None:
    section = meta.get("voice")
    if section is None:
        return None
    where = f"{pack_dir}: pack.yaml voice"
    if not isinstance(section, dict):
        raise ValueError(f"{where} must be a mapping with {', '.join(_VOICE_KEYS)}")
    unknown = sorted(set(section) - set(_VOICE_KEYS))
    if unknown:
        raise ValueError(f"{where} has unknown keys {', '.join(map(str, unknown))}; "
                         f"allowed: {', '.join(_VOICE_KEYS)}")
    if not section.get("prompt_wav") or not str(section.get("prompt_text") or "").strip():
        raise ValueError(f"{where} needs prompt_wav (a clip in the pack) and prompt_text (its "
                         "transcript, word for word)")
    language = section.get("language")
    if language is not None:
        language = normalise(str(language))
    return PackVoice(prompt_wav=_need(pack_dir, str(section["prompt_wav"])).resolve(),
                     prompt_text=str(section["prompt_text"]).strip(), language=language)


def _resolve(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    # A bare name is looked up in the packs directory; anything path-like is taken as it is.
    if isinstance(name_or_path, Path) or os.sep in str(name_or_path) or candidate.is_absolute():
        path = candidate
    else:
        path = avatars_dir() / str(name_or_path)
    if not (path / "pack.yaml").is_file():
        root = path.parent
        packs = ", ".join(list_packs(root)) or "(none)"
        raise FileNotFoundError(
            f"avatar pack {str(name_or_path)!r} not found: no pack.yaml at {path}. "
            f"Packs in {root}: {packs}. Set {ENV_DIR} to use another directory.")
    return path


def _need(pack_dir: Path, filename: str) -> Path:
    p = pack_dir / filename
    if not p.is_file():
        raise FileNotFoundError(f"avatar pack at {pack_dir} is missing {filename} (expected {p})")
    return p


def _read_rgb(path: Path) -> np.ndarray:
    import cv2  # imported here so listing packs needs no OpenCV

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
