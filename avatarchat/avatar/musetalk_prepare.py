"""A MuseTalk avatar prepared from a base video: face boxes, blending masks and VAE latents, once.

MuseTalk repaints the lower half of the face in every frame of a looping base video. What does not
depend on the speech is computed here, once per video, and cached in the avatar directory, so a
session only runs the UNet and the VAE decoder (as upstream's ``scripts/realtime_inference.py``
``--preparation`` does):

    python -m avatarchat.avatar.musetalk_prepare --video BASE.mp4 --out DIR [--model-dir DIR]
        [--box X1,Y1,X2,Y2] [--loop pingpong|forward] [--max-frames N] [--device auto|cuda|cpu]

The directory holds ``avatar.json`` (sizes, boxes, the loop order, a fingerprint of the VAE that
made the latents), ``frames/NNNNNN.png`` (the base frames, lossless), ``masks/NNNNNN.png`` (a
blending mask per frame, the size of its crop box) and ``latents.pt`` (float32 [N, 8, 32, 32]: the
VAE latents of the face crop with its lower half blanked, then of the whole crop: the UNet's input).

What differs from upstream MuseTalk (whose DWPose, S3FD and BiSeNet weights are not reachable here):

- face boxes come from ``--box`` (one box for every frame, for a steady framing) or OpenCV's bundled
  Haar cascade (largest face per frame; frames without one take the nearest frame's box; boxes are
  smoothed over 5 frames against jitter). Upstream takes them from DWPose face landmarks per frame;
  both add ``--extra-margin`` pixels below the chin (v1.5).
- the blending mask is geometric: the ellipse inscribed in the face box, below the face box's middle
  (upstream's ``upper_boundary_ratio`` 0.5 of the 1.5x crop box), feathered by the same Gaussian
  blur (kernel 0.1 of the crop). Upstream intersects that half with a BiSeNet face-parsing mask.
- latents are the VAE posterior's mean (upstream draws a sample), so a preparation is repeatable.
- the loop is the video then the video backwards (``pingpong``, as upstream) so it joins without a
  jump, without showing the turning frames twice (upstream repeats them); ``forward`` for a video
  that already loops. Only the distinct frames are stored.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from avatarchat.media_file import read_video
from avatarchat.models import resolve

log = logging.getLogger(__name__)

MODEL_NAME = "musetalk"
VAE_DIR = "sd-vae"
VAE_FILES = (f"{VAE_DIR}/config.json", f"{VAE_DIR}/diffusion_pytorch_model.bin")
FORMAT = 1
AVATAR_FILE = "avatar.json"
LATENTS_FILE = "latents.pt"
FACE_SIZE = 256          # MuseTalk's face crops: 256x256 pixels, 32x32 latents
CROP_EXPAND = 1.5        # the blending crop box: a square 1.5x the face box's longer side
MASK_TOP = 0.5           # the mask starts this far down the crop box (the face box's middle)
SMOOTH_FRAMES = 5        # moving average of detected boxes over this many frames
PREPARE_COMMAND = "python -m avatarchat.avatar.musetalk_prepare --video BASE.mp4 --out DIR"

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 (x2, y2 exclusive), in frame pixels


class AvatarNotPrepared(FileNotFoundError):
    """The avatar directory is missing, incomplete, or was made with another VAE."""

    def __init__(self, path: Path, why: str):
        self.path = path
        super().__init__(f"MuseTalk avatar {path}: {why}; prepare it with `{PREPARE_COMMAND}` "
                         f"(--out {path})")


# --- geometry -------------------------------------------------------------------------------------

def crop_box(box: Box, width: int, height: int) -> Box:
    """The square around ``box`` (CROP_EXPAND times its longer side) that blending may touch,
    clipped to the frame."""
    x1, y1, x2, y2 = box
    cx, cy, half = (x1 + x2) // 2, (y1 + y2) // 2, int(max(x2 - x1, y2 - y1) // 2 * CROP_EXPAND)
    return max(0, cx - half), max(0, cy - half), min(width, cx + half), min(height, cy + half)


def blend_mask(box: Box, crop: Box) -> np.ndarray:
    """uint8 mask over ``crop`` (255: the generated face): the face box's inscribed ellipse below the
    face box's middle, feathered."""
    import cv2

    x1, y1, x2, y2 = box
    cx1, cy1, cx2, cy2 = crop
    mask = np.zeros((cy2 - cy1, cx2 - cx1), np.uint8)
    centre = ((x1 + x2) // 2 - cx1, (y1 + y2) // 2 - cy1)
    cv2.ellipse(mask, centre, ((x2 - x1) // 2, (y2 - y1) // 2), 0, 0, 360, 255, -1)
    mask[: max(0, (y1 + y2) // 2 - cy1), :] = 0  # the upper face stays the base video's
    kernel = int(0.1 * mask.shape[0] // 2 * 2) + 1
    return cv2.GaussianBlur(mask, (kernel, kernel), 0)


def face_crop(frame: np.ndarray, box: Box) -> np.ndarray:
    """The face box's pixels at FACE_SIZE x FACE_SIZE (what the VAE sees and the UNet repaints)."""
    import cv2

    x1, y1, x2, y2 = box
    return cv2.resize(frame[y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LANCZOS4)


# --- finding faces --------------------------------------------------------------------------------

def detect_boxes(frames: list[np.ndarray]) -> list[Box]:
    """The largest face in each frame by OpenCV's Haar cascade; frames without one take the nearest
    frame's box; then a moving average over SMOOTH_FRAMES frames."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found: list[Box | None] = []
    for frame in frames:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                         minSize=(max(24, min(gray.shape) // 10),) * 2)
        if len(faces) == 0:
            found.append(None)
            continue
        x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
        found.append((int(x), int(y), int(x + w), int(y + h)))
    have = [i for i, b in enumerate(found) if b is not None]
    if not have:
        raise ValueError("no face found in any frame of the video; give one with --box X1,Y1,X2,Y2")
    filled = np.array([found[min(have, key=lambda j: abs(j - i))] for i in range(len(found))], float)
    half = SMOOTH_FRAMES // 2
    padded = np.pad(filled, ((half, half), (0, 0)), mode="edge")
    smooth = np.stack([padded[i:i + len(filled)] for i in range(SMOOTH_FRAMES)]).mean(axis=0)
    return [tuple(int(round(v)) for v in b) for b in smooth]


def with_margin(box: Box, extra_margin: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return x1, y1, x2, min(height, y2 + extra_margin)


# --- the VAE --------------------------------------------------------------------------------------

def vae_fingerprint(model_dir: Path) -> str:
    """Identifies the VAE whose latents an avatar holds: its config, its weights file's size and its
    first and last MiB (hashing all 335 MB at every start-up is not worth it)."""
    h = hashlib.sha256()
    config, weights = (model_dir / f for f in VAE_FILES)
    h.update(config.read_bytes())
    size = weights.stat().st_size
    h.update(str(size).encode())
    with weights.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:32]


def to_vae_input(crops: list[np.ndarray]):
    """uint8 RGB crops -> float32 tensor [N, 3, H, W] in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    return x * 2.0 - 1.0


def encode_latents(vae, crops: list[np.ndarray], batch: int = 16):
    """The UNet's fixed input for each crop: [masked crop latents, crop latents], float32
    [N, 8, 32, 32] on the CPU. The masked crop has its lower half black (upstream's half mask)."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(crops), batch):
            x = to_vae_input(crops[i:i + batch]).to(vae.device, vae.dtype)
            masked = x.clone()
            masked[:, :, FACE_SIZE // 2:, :] = -1.0  # black, as upstream zeroes pixels before scaling
            lat = [vae.encode(v).latent_dist.mode() * vae.config.scaling_factor for v in (masked, x)]
            out.append(torch.cat(lat, dim=1).float().cpu())
    return torch.cat(out)


# --- the prepared avatar --------------------------------------------------------------------------

@dataclass(frozen=True)
class PreparedAvatar:
    """What ``prepare`` wrote: ``frames[i]`` (RGB uint8) with ``boxes[i]``, ``crops[i]``,
    ``masks[i]`` (uint8 over the crop box) and ``latents[i]``; the loop shows ``frames[loop[j]]`` as
    its frame ``j``."""

    path: Path
    width: int
    height: int
    fps: float
    frames: list[np.ndarray]
    boxes: list[Box]
    crops: list[Box]
    masks: list[np.ndarray]
    latents: object  # torch.Tensor [N, 8, 32, 32] float32
    loop: list[int]
    vae: str

    @classmethod
    def load(cls, path: Path | str, vae: str | None = None) -> "PreparedAvatar":
        """Read a prepared avatar; ``vae`` (a ``vae_fingerprint``) must match the one that made it."""
        import cv2
        import torch

        path = Path(path).expanduser()
        if not (path / AVATAR_FILE).is_file():
            raise AvatarNotPrepared(path, f"{AVATAR_FILE} not found" if path.is_dir()
                                    else "no such directory")
        meta = json.loads((path / AVATAR_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise AvatarNotPrepared(path, f"format {meta.get('format')!r}, this code reads {FORMAT}")
        if vae is not None and meta["vae"] != vae:
            raise AvatarNotPrepared(path, "its latents were made by another VAE than the model's")
        n = meta["frames"]
        frames, masks = [], []
        for i in range(n):
            bgr = cv2.imread(str(path / "frames" / f"{i:06d}.png"), cv2.IMREAD_COLOR)
            mask = cv2.imread(str(path / "masks" / f"{i:06d}.png"), cv2.IMREAD_GRAYSCALE)
            if bgr is None or mask is None:
                raise AvatarNotPrepared(path, f"frame or mask {i} is missing or unreadable")
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            masks.append(mask)
        if not (path / LATENTS_FILE).is_file():
            raise AvatarNotPrepared(path, f"{LATENTS_FILE} not found")
        latents = torch.load(path / LATENTS_FILE, map_location="cpu", weights_only=True)
        if latents.shape[0] != n:
            raise AvatarNotPrepared(path, f"{LATENTS_FILE} holds {latents.shape[0]} frames, not {n}")
        return cls(path, meta["width"], meta["height"], meta["fps"], frames,
                   [tuple(b) for b in meta["boxes"]], [tuple(c) for c in meta["crops"]], masks,
                   latents, list(meta["loop"]), meta["vae"])


def prepare(video: Path | str, out: Path | str, model_dir: Path | str | None = None, *,
            box: Box | None = None, loop: Literal["pingpong", "forward"] = "pingpong",
            max_frames: int | None = None, extra_margin: int = 10, device: str = "auto") -> Path:
    """Prepare ``video`` into the avatar directory ``out`` (created or overwritten) and return it."""
    import cv2
    import torch
    from diffusers import AutoencoderKL

    model_path = resolve(model_dir, MODEL_NAME, VAE_FILES)
    frames, fps = read_video(Path(video), max_frames)
    height, width = frames[0].shape[:2]
    if box is not None:
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise ValueError(f"--box {box} is not inside the {width}x{height} frame")
        boxes = [tuple(box)] * len(frames)
    else:
        boxes = detect_boxes(frames)
    boxes = [with_margin(b, extra_margin, height) for b in boxes]
    crops = [crop_box(b, width, height) for b in boxes]

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = AutoencoderKL.from_pretrained(str(model_path / VAE_DIR), use_safetensors=(
        model_path / VAE_DIR / "diffusion_pytorch_model.safetensors").is_file()).to(device).eval()
    latents = encode_latents(vae, [face_crop(f, b) for f, b in zip(frames, boxes)])

    out = Path(out).expanduser()
    (out / AVATAR_FILE).unlink(missing_ok=True)  # a half-rewritten avatar must not load as whole
    (out / "frames").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i, (frame, b, c) in enumerate(zip(frames, boxes, crops)):
        cv2.imwrite(str(out / "frames" / f"{i:06d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "masks" / f"{i:06d}.png"), blend_mask(b, c))
    torch.save(latents, out / LATENTS_FILE)
    n = len(frames)
    # pingpong: 0 .. n-1 then n-2 .. 1, so no frame is shown twice in a row at either turn
    order = list(range(n)) + (list(range(n - 2, 0, -1)) if loop == "pingpong" else [])
    meta = {"format": FORMAT, "width": width, "height": height, "fps": fps, "frames": n,
            "boxes": [list(b) for b in boxes], "crops": [list(c) for c in crops], "loop": order,
            "vae": vae_fingerprint(model_path), "video": str(video),
            "faces": "given" if box is not None else "haar", "extra_margin": extra_margin}
    (out / AVATAR_FILE).write_text(json.dumps(meta), encoding="utf-8")  # last: marks it complete
    return out


def _box(text: str) -> Box:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError("a box is X1,Y1,X2,Y2")
    return tuple(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, required=True, help="the base video (any format "
                        "OpenCV reads); its frames loop while the avatar listens and speaks")
    parser.add_argument("--out", type=Path, required=True, help="the avatar directory to write")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help=f"the MuseTalk model directory (default <models dir>/{MODEL_NAME})")
    parser.add_argument("--box", type=_box, default=None,
                        help="the face box X1,Y1,X2,Y2 for every frame (default: found per frame)")
    parser.add_argument("--loop", choices=["pingpong", "forward"], default="pingpong",
                        help="pingpong: the video then backwards, so the loop has no jump")
    parser.add_argument("--max-frames", type=int, default=None, help="use the first N frames")
    parser.add_argument("--extra-margin", type=int, default=10,
                        help="pixels added below the face box (the chin), as MuseTalk 1.5")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    args = parser.parse_args(argv)
    print(prepare(args.video, args.out, args.model_dir, box=args.box, loop=args.loop,
                  max_frames=args.max_frames, extra_margin=args.extra_margin, device=args.device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
