"""Build an avatar pack (``avatars/<name>/``) from one portrait photo. Run once, offline.

The pack is what the portrait renderer animates: the photo, the 478 MediaPipe FaceMesh landmarks in
pixel coordinates with named, ordered contours (lips, eyes, brows, jaw), and ``pack.yaml`` with the
regions the renderer precomputes its warps for. Landmarks are computed here, once, and shipped as
data, so the service never needs MediaPipe (which pins numpy<2 and pulls in jax).

Usage: the tool runs in its own venv with ``mediapipe==0.10.21`` (the last release that ships the
legacy FaceMesh models) and ``scikit-image``, never in the service's ``.venv``.
``scripts/make_pack_venv.sh`` makes that venv once (``.venv-packtool/``) and prints its python::

    PY=$(bash scripts/make_pack_venv.sh)
    $PY avatars/tools/make_pack.py photo.jpg me --licence "mine, all rights reserved"
    # remake the bundled pack (--force replaces an existing avatars/<name>/)
    $PY avatars/tools/make_pack.py skimage:astronaut astronaut --force \
        --source "skimage.data.astronaut(): Eileen Collins, NASA portrait (scikit-image)" \
        --licence "public domain (NASA)"

``INPUT`` is an image file (any format OpenCV reads) or ``skimage:<name>`` for an image from
``skimage.data``. ``--framing head-and-shoulders`` (the default) crops a square around the head and
shoulders (the face ~36 % of its height; pack.yaml records the crop); ``--framing photo`` keeps the
whole photo, cropped to a square around the face only if it is not square. Either is then resized
to ``--size`` (512 by default). Replacing a pack (``--force``) keeps its voice section and clip.

The photo is checked first, and refused (exit status 2, one line on stderr starting ``make_pack:``
that says what is wrong) when it cannot be read, has no face or more than one, when the face is
under ``MIN_FACE_HEIGHT_PX`` from forehead to chin (in the photo, and in the pack once the photo is
cropped to its shorter side and resized), or when the head is turned (``MAX_YAW_DEG``) or tilted
(``MAX_ROLL_DEG``) too far. The pack is built in a temporary directory next to ``avatars/<name>/``
and renamed into place, so a failure never leaves a half-written pack; an existing pack is replaced
only with ``--force``. MediaPipe's own log lines are hidden unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

PACKS_DIR = Path(__file__).resolve().parents[1]

# What the photo must be. The bundled astronaut measures: face height 106 px, yaw -1 degree,
# roll 3 degrees (see the report of `make_pack.py skimage:astronaut`).
MIN_FACE_HEIGHT_PX = 80  # forehead (10) to chin (152): with fewer, the mouth is too small to warp
MAX_YAW_DEG = 25.0  # turned further, the far cheek is hidden and a symmetric mouth warp looks wrong
MAX_ROLL_DEG = 20.0  # the renderer's warps and head sway assume an upright head (eyes about level)
MAX_FACES_COUNTED = 4  # FaceMesh looks for up to this many faces, enough to say "found N faces"
MIN_DETECTION_SCORE = 0.5  # MediaPipe's own default for its face detector
MIN_TILE_SCORE = 0.7  # stricter for the small-face search on tiles, which sees less context
# Nose-tip offset per unit tan(yaw), as a fraction of half the outer-eye-corner distance: the nose
# tip stands this far in front of the eye corners in FaceMesh's 3-D landmarks (0.9, astronaut).
NOSE_DEPTH_RATIO = 0.9
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PHOTO_HINT = (f"use a sharp, well-lit photo of one person looking straight at the camera, "
              f"face at least {MIN_FACE_HEIGHT_PX} px from forehead to chin")

# Mouth corners and eye corners (MediaPipe FaceMesh indices) where each closed contour is split into
# its upper and lower halves. "left"/"right" are the subject's, as in MediaPipe: the subject's left
# eye is on the image's right.
SPLITS = {
    "lips_outer": (61, 291),
    "lips_inner": (78, 308),
    "right_eye": (33, 133),
    "left_eye": (362, 263),
}
POINTS = {"nose_tip": 1, "subnasale": 2, "chin": 152, "upper_lip_top": 0, "lower_lip_bottom": 17,
          "upper_lip_inner": 13, "lower_lip_inner": 14, "forehead": 10}


class PackError(Exception):
    """A photo or request the tool refuses; main() prints it as one ``make_pack:`` line, exit 2."""


def load_image(spec: str) -> np.ndarray:
    """RGB uint8 image from a path or ``skimage:<name>``."""
    if spec.startswith("skimage:"):
        name = spec.split(":", 1)[1]
        try:
            from skimage import data
        except ImportError as e:
            raise PackError(f"{spec} needs scikit-image, which this Python lacks ({e}): run the "
                            "tool with the python that scripts/make_pack_venv.sh prints") from None
        loader = getattr(data, name, None) if name and not name.startswith("_") else None
        if not callable(loader):
            raise PackError(f"skimage.data has no image {name!r}: try skimage:astronaut, or give a "
                            "photo file")
        img = np.asarray(loader())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        if img.ndim != 3 or img.dtype != np.uint8:
            raise PackError(f"{spec} is not an 8-bit picture: {PHOTO_HINT}")
        return np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    path = Path(spec)
    if not path.exists():
        raise PackError(f"no such file: {spec}; give a photo file (JPEG or PNG) or "
                        "skimage:astronaut")
    if not path.is_file():
        raise PackError(f"{spec} is not a file; give a photo file (JPEG or PNG)")
    bgr = cv2.imread(spec, cv2.IMREAD_COLOR)
    if bgr is None:
        raise PackError(f"cannot read {spec} as an image (OpenCV cannot decode it): give a JPEG or "
                        "PNG photo")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def mesh_faces(rgb: np.ndarray, max_faces: int) -> list[np.ndarray]:
    """FaceMesh landmarks of up to ``max_faces`` faces, each 478 x 3: x, y in pixels, z in
    MediaPipe's units scaled by the image width."""
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces,
                                         refine_landmarks=True,
                                         min_detection_confidence=0.5) as mesh:
        result = mesh.process(rgb)
    h, w = rgb.shape[:2]
    return [np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark])
            for face in result.multi_face_landmarks or []]


def detect(rgb: np.ndarray) -> np.ndarray | None:
    """478 x 3 landmarks of the one face (``mesh_faces`` for one face), or None if there is none."""
    faces = mesh_faces(rgb, 1)
    if not faces:
        return None
    if len(faces[0]) != 478:
        raise PackError(f"expected 478 landmarks (refined mesh), got {len(faces[0])}: use "
                        "mediapipe==0.10.21 (scripts/make_pack_venv.sh)")
    return faces[0]


def face_boxes(rgb: np.ndarray, min_score: float = MIN_DETECTION_SCORE) -> list[tuple[float, ...]]:
    """Faces found by MediaPipe's full-range face detector (faces up to ~5 m from the camera, so
    smaller ones than FaceMesh's own detector finds): (x0, y0, x1, y1, score) in pixels."""
    import mediapipe as mp

    h, w = rgb.shape[:2]
    with mp.solutions.face_detection.FaceDetection(model_selection=1,
                                                   min_detection_confidence=min_score) as det:
        result = det.process(np.ascontiguousarray(rgb))
    boxes = []
    for d in result.detections or []:
        b = d.location_data.relative_bounding_box
        boxes.append((b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h,
                      float(d.score[0])))
    return boxes


def small_face_height(rgb: np.ndarray) -> float | None:
    """Height in pixels of the largest face the detector finds on overlapping half-size tiles of the
    photo, or None. Only used to tell "too small" from "no face" when the whole photo shows none."""
    h, w = rgb.shape[:2]
    side = min(h, w) // 2
    if side < 32:
        return None
    step = side // 2
    ys = sorted(set(range(0, h - side + 1, step)) | {h - side})
    xs = sorted(set(range(0, w - side + 1, step)) | {w - side})
    heights = [b[3] - b[1] for y in ys for x in xs
               for b in face_boxes(rgb[y:y + side, x:x + side], MIN_TILE_SCORE)]
    return max(heights) if heights else None


def head_pose(pts: np.ndarray) -> tuple[float, float]:
    """(yaw, roll) in degrees of a face from its (478, 3) FaceMesh landmarks; only x, y are used.

    Roll is the slope of the line through the outer eye corners (33 and 263). Yaw comes from where
    the nose tip (1) falls along that line: midway when the face is frontal, and offset by
    NOSE_DEPTH_RATIO * tan(yaw) half eye distances when it turns (the nose stands in front of the
    eyes). Signs: positive yaw moves the nose towards the image's right, positive roll turns the
    eye line clockwise on screen (image y grows downwards).
    """
    pts = np.asarray(pts, dtype=np.float64)
    right_eye, left_eye, nose = pts[33, :2], pts[263, :2], pts[1, :2]
    eye_line = left_eye - right_eye
    dist = float(np.hypot(*eye_line))
    if dist < 1e-6:
        return 90.0, 0.0  # both eye corners on one spot: a full profile
    along = float((nose - right_eye) @ eye_line) / dist**2  # 0 at the right eye, 1 at the left eye
    offset = 2.0 * along - 1.0  # in half eye distances from the midpoint
    yaw = float(np.degrees(np.arctan(offset / NOSE_DEPTH_RATIO)))
    roll = float(np.degrees(np.arctan2(eye_line[1], eye_line[0])))
    return yaw, roll


def check_pose(pts: np.ndarray, where: str = "the photo") -> tuple[float, float]:
    """Raise PackError if the face is turned or tilted too far; else return (yaw, roll)."""
    yaw, roll = head_pose(pts)
    if abs(yaw) > MAX_YAW_DEG:
        raise PackError(f"the face in {where} is turned {abs(yaw):.0f} degrees to the side (a "
                        f"profile; at most {MAX_YAW_DEG:.0f} is accepted): use a photo of the face "
                        "looking straight at the camera")
    if abs(roll) > MAX_ROLL_DEG:
        raise PackError(f"the head in {where} is tilted {abs(roll):.0f} degrees (at most "
                        f"{MAX_ROLL_DEG:.0f} is accepted): use a photo with the head upright, or "
                        "rotate the photo so the eyes are level")
    return yaw, roll


def face_height(pts: np.ndarray) -> float:
    """Forehead (10) to chin (152), in pixels."""
    return float(pts[152, 1] - pts[10, 1])


def check_photo(rgb: np.ndarray, where: str, size: int) -> np.ndarray:
    """The landmarks of the photo's one face, or PackError saying why the photo does not fit."""
    h, w = rgb.shape[:2]
    boxes = face_boxes(rgb)
    meshes = mesh_faces(rgb, MAX_FACES_COUNTED)
    n = max(len(boxes), len(meshes))
    if n > 1:
        more = "or more " if n == MAX_FACES_COUNTED and len(boxes) < n else ""
        raise PackError(f"found {n} faces {more}in {where}, the pack needs exactly one: use a "
                        "photo of one person alone, or crop it to one face")
    if n == 0:
        small = small_face_height(rgb)
        if small is None:
            raise PackError(f"no face found in {where}: {PHOTO_HINT}")
        if small < MIN_FACE_HEIGHT_PX:
            raise PackError(f"face too small in {where}: about {small:.0f} px from forehead to "
                            f"chin, the minimum is {MIN_FACE_HEIGHT_PX} px: use a larger photo, or "
                            "one taken closer to the face")
        raise PackError(f"the face in {where} is about {small:.0f} px tall but fills too little of "
                        f"the {w}x{h} photo for the face models: crop the photo to a square of "
                        f"about {min(4 * small, min(h, w)):.0f} px around the face")
    height = face_height(meshes[0]) if meshes else boxes[0][3] - boxes[0][1]
    about = "" if meshes else "about "
    if height < MIN_FACE_HEIGHT_PX:
        raise PackError(f"face too small in {where}: {about}{height:.0f} px from forehead to chin, "
                        f"the minimum is {MIN_FACE_HEIGHT_PX} px: use a larger photo, or one taken "
                        "closer to the face")
    short = min(h, w)
    in_pack = height * size / short
    crop = f"crop the photo to a square of about {min(4 * height, short):.0f} px around the face"
    if not meshes:
        # The full-range detector sees a big enough face that FaceMesh cannot find: it fills too
        # little of the picture for FaceMesh's detector, which looks for faces close to the camera.
        raise PackError(f"the face in {where} is {about}{height:.0f} px tall but fills too little "
                        f"of the {w}x{h} photo for the landmark model: {crop}")
    if in_pack < MIN_FACE_HEIGHT_PX:
        raise PackError(f"face too small for the pack: {height:.0f} px from forehead to chin in "
                        f"{where}, whose {short} px shorter side becomes the {size} px pack, "
                        f"leaves {in_pack:.0f} px (the minimum is {MIN_FACE_HEIGHT_PX} px): {crop}")
    check_pose(meshes[0], where)
    return meshes[0]


# Head and shoulders: the square's side is this many face heights (forehead to chin), so the face
# fills ~36 % of the frame's height (the whole-photo framing of the NASA portrait left 20 %), with
# this many face heights of room above the forehead for the hair.
HEAD_AND_SHOULDERS_SIDE = 2.8
HEAD_ROOM = 0.55


def head_and_shoulders_box(shape: tuple[int, ...], pts: np.ndarray) -> tuple[int, int, int, int]:
    """The square [x0, y0, x1, y1] of the photo that shows the head and shoulders of the face with
    landmarks ``pts``: centred on the face across, the forehead ``HEAD_ROOM`` face heights below
    its top edge, shifted (never shrunk) to stay inside the photo; the whole photo's shorter side
    if the square would not fit."""
    h, w = shape[:2]
    face_h = face_height(pts)
    side = int(round(min(HEAD_AND_SHOULDERS_SIDE * face_h, h, w)))
    cx = float(pts[:, 0].mean())
    top = float(pts[10, 1]) - HEAD_ROOM * face_h
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    y0 = int(np.clip(round(top), 0, h - side))
    return x0, y0, x0 + side, y0 + side


def square_around_face(rgb: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """The largest square of the photo centred (as far as it fits) on landmarks ``pts``."""
    h, w = rgb.shape[:2]
    if h == w:
        return rgb
    side = min(h, w)
    cx, cy = pts[:, 0].mean(), pts[:, 1].mean()
    x0 = int(np.clip(cx - side / 2, 0, w - side))
    y0 = int(np.clip(cy - side / 2, 0, h - side))
    return rgb[y0:y0 + side, x0:x0 + side]


@contextlib.contextmanager
def native_logs_hidden(hide: bool = True):
    """Hide what MediaPipe's C++ side (TFLite, absl) writes to file descriptor 2 meanwhile, so a
    refusal is one readable line; the hidden log is replayed if anything but PackError escapes."""
    if not hide:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        replay = False
        try:
            yield
        except PackError:
            raise
        except BaseException:
            replay = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if replay:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace"))
                sys.stderr.flush()


def write_atomically(dest: Path, force: bool, write) -> None:
    """Call ``write(directory)`` to fill a fresh directory, then rename it to ``dest``.

    The directory is built inside a hidden temporary directory next to ``dest`` (same file system,
    so the rename is atomic; and never listed as a pack, having no pack.yaml of its own). An
    existing ``dest`` is replaced only with ``force``. On any failure nothing changes at ``dest``.
    """
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".make_pack-{dest.name}-", dir=parent))
    try:
        build = work / dest.name
        build.mkdir()
        write(build)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(build, 0o777 & ~umask)
        if dest.is_symlink() or dest.exists():
            if not force:
                raise PackError(f"{dest} already exists: pass --force to replace it, or choose "
                                "another name")
            if dest.is_symlink() or not dest.is_dir():
                raise PackError(f"{dest} exists and is not a directory: remove it yourself")
            old = work / "replaced"
            os.rename(dest, old)
            try:
                os.rename(build, dest)
            except BaseException:
                os.rename(old, dest)
                raise
        else:
            os.rename(build, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def chain_loop(edges: frozenset, start: int) -> list[int]:
    """Order the closed contour through ``start`` given its undirected edges."""
    adj: dict[int, list[int]] = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    loop, prev, cur = [start], None, start
    while True:
        nxt = [n for n in adj[cur] if n != prev]
        if not nxt:
            raise PackError(f"contour through {start} is not closed")
        prev, cur = cur, nxt[0]
        if cur == start:
            return loop
        loop.append(cur)
        if len(loop) > len(adj):
            raise PackError(f"contour through {start} does not close")


def split_loop(loop: list[int], a: int, b: int, pts: np.ndarray) -> tuple[list[int], list[int]]:
    """Split a closed contour at corners a and b into (upper, lower), each running a -> b."""
    i, j = loop.index(a), loop.index(b)
    rolled = loop[i:] + loop[:i]
    j = rolled.index(b)
    one = rolled[:j + 1]
    other = [a] + rolled[j:][::-1]
    # "upper" has the smaller mean y (image y grows downwards)
    if pts[one[1:-1], 1].mean() < pts[other[1:-1], 1].mean():
        return one, other
    return other, one


def contours(pts: np.ndarray) -> dict[str, list[int]]:
    from mediapipe.python.solutions import face_mesh_connections as fc

    loops = {
        "lips_outer": chain_loop(_component(fc.FACEMESH_LIPS, 61), 61),
        "lips_inner": chain_loop(_component(fc.FACEMESH_LIPS, 78), 78),
        "right_eye": chain_loop(fc.FACEMESH_RIGHT_EYE, 33),
        "left_eye": chain_loop(fc.FACEMESH_LEFT_EYE, 362),
        "face_oval": chain_loop(fc.FACEMESH_FACE_OVAL, 10),
    }
    out: dict[str, list[int]] = {}
    for name, loop in loops.items():
        out[name] = loop
        if name in SPLITS:
            upper, lower = split_loop(loop, *SPLITS[name], pts)
            out[f"{name}_upper"], out[f"{name}_lower"] = upper, lower
    out["right_brow"] = sorted({i for e in fc.FACEMESH_RIGHT_EYEBROW for i in e})
    out["left_brow"] = sorted({i for e in fc.FACEMESH_LEFT_EYEBROW for i in e})
    out["right_iris"] = sorted({i for e in fc.FACEMESH_RIGHT_IRIS for i in e})
    out["left_iris"] = sorted({i for e in fc.FACEMESH_LEFT_IRIS for i in e})
    # The jaw: the lower part of the face oval, ear to ear through the chin (below the mouth corners).
    oval = loops["face_oval"]
    mouth_y = pts[[61, 291], 1].mean()
    out["jaw"] = _lower_arc(oval, pts, mouth_y - 0.25 * (pts[152, 1] - mouth_y))
    return out


def _component(edges: frozenset, seed: int) -> frozenset:
    """The connected part of ``edges`` that contains ``seed``."""
    keep, frontier = {seed}, [seed]
    while frontier:
        cur = frontier.pop()
        for a, b in edges:
            for x, y in ((a, b), (b, a)):
                if x == cur and y not in keep:
                    keep.add(y)
                    frontier.append(y)
    return frozenset(e for e in edges if e[0] in keep)


def _lower_arc(oval: list[int], pts: np.ndarray, y_min: float) -> list[int]:
    """The run of the oval through the chin (152) that stays below ``y_min``, ordered from the
    image's left to its right."""
    i, n = oval.index(152), len(oval)
    below = lambda seq: list(itertools.takewhile(lambda j: pts[j, 1] >= y_min, seq))  # noqa: E731
    forward = below(oval[(i + k) % n] for k in range(n))
    backward = below(oval[(i - k) % n] for k in range(n))
    arc = backward[::-1] + forward[1:]
    return arc if pts[arc[0], 0] < pts[arc[-1], 0] else arc[::-1]


def box(pts: np.ndarray, idx: list[int], pad_x: float, pad_y_top: float, pad_y_bottom: float,
        size: int) -> list[int]:
    """[x0, y0, x1, y1] around points ``idx``, padded by fractions of the box's width/height."""
    p = pts[idx, :2]
    x0, y0 = p.min(axis=0)
    x1, y1 = p.max(axis=0)
    w, h = x1 - x0, y1 - y0
    b = [x0 - pad_x * w, y0 - pad_y_top * h, x1 + pad_x * w, y1 + pad_y_bottom * h]
    return [int(np.clip(round(v), 0, size)) for v in b]


def kept_voice(pack_dir: Path) -> tuple[str, list[Path]]:
    """A replaced pack's voice (its ``voice:`` section of pack.yaml, with the comment lines just
    above it, verbatim, and the clip it names): remaking the picture keeps the voice."""
    meta_path = pack_dir / "pack.yaml"
    if not meta_path.is_file():
        return "", []
    lines = meta_path.read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith("voice:")), None)
    if start is None:
        return "", []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() and not lines[i][0].isspace()),
               len(lines))
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    section = "".join(lines[start:end])
    clip = re.search(r"^\s+prompt_wav:\s*\"?([^\"\n]+?)\"?\s*$", section, re.M)
    files = [pack_dir / clip.group(1)] if clip and (pack_dir / clip.group(1)).is_file() else []
    return section, files


def to_yaml(value, indent: int = 0) -> str:
    """A minimal YAML writer for nested dicts of strings, numbers and flat lists (no PyYAML here)."""
    pad = "  " * indent
    lines = []
    for key, val in value.items():
        if isinstance(val, dict):
            lines.append(f"{pad}{key}:")
            lines.append(to_yaml(val, indent + 1))
        elif isinstance(val, (list, tuple)):
            lines.append(f"{pad}{key}: [{', '.join(json.dumps(v) for v in val)}]")
        else:
            lines.append(f"{pad}{key}: {json.dumps(val)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make_pack", description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="image file, or skimage:<name> (e.g. skimage:astronaut)")
    ap.add_argument("name", help="pack name: writes avatars/<name>/")
    ap.add_argument("--size", type=int, default=512, help="square output size in pixels")
    ap.add_argument("--fps", type=int, default=25, help="video frame rate the pack is made for")
    ap.add_argument("--framing", choices=("head-and-shoulders", "photo"), default="head-and-shoulders",
                    help="head-and-shoulders (default): a square around the head and shoulders, "
                         "the face ~36%% of its height; photo: the whole photo, squared around the face")
    ap.add_argument("--source", default="", help="where the image comes from")
    ap.add_argument("--licence", required=True, help="the image's licence")
    ap.add_argument("--out-dir", type=Path, default=PACKS_DIR, help="directory holding packs")
    ap.add_argument("--force", action="store_true", help="replace an existing pack of that name")
    ap.add_argument("--verbose", action="store_true", help="show MediaPipe's own log lines")
    args = ap.parse_args(argv)
    try:
        make_pack(args)
    except PackError as e:
        print(f"make_pack: {e}", file=sys.stderr)
        return 2
    return 0


def make_pack(args: argparse.Namespace) -> None:
    if not NAME_RE.match(args.name):
        raise PackError(f"pack name {args.name!r} is not a plain directory name: use letters, "
                        "digits, '.', '_' and '-'")
    if not 64 <= args.size <= 4096:
        raise PackError(f"--size {args.size} is out of range: use 64 to 4096 (default 512)")
    if args.fps <= 0:
        raise PackError(f"--fps {args.fps} must be positive")
    dest = args.out_dir / args.name
    if (dest.exists() or dest.is_symlink()) and not args.force:
        raise PackError(f"{dest} already exists: pass --force to replace it, or choose another "
                        "name")

    rgb = load_image(args.input)
    with native_logs_hidden(not args.verbose):
        try:
            import mediapipe as mp
        except ImportError as e:
            raise PackError(f"mediapipe is not importable in {sys.executable} ({e}): run the tool "
                            "with the python that scripts/make_pack_venv.sh prints") from None
        found = check_photo(rgb, args.input, args.size)
        if args.framing == "head-and-shoulders":
            crop = head_and_shoulders_box(rgb.shape, found)
            rgb = rgb[crop[1]:crop[3], crop[0]:crop[2]]
        else:  # the photo as it is, squared around the face
            rgb = square_around_face(rgb, found)
            crop = None
        if rgb.shape[0] != args.size:
            shrink = rgb.shape[0] > args.size
            rgb = cv2.resize(rgb, (args.size, args.size),
                             interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        pts = detect(rgb)
        if pts is None:
            raise PackError(f"the face in {args.input} is lost once the photo is cropped and "
                            f"resized to {args.size}x{args.size}: crop the photo to a square "
                            "around the face yourself and try again")
        named = contours(pts)

    size = args.size
    face_h = face_height(pts)
    mouth_w = pts[291, 0] - pts[61, 0]
    regions = {
        # mouth box: the lips plus room for the lower lip to drop and the corners to spread
        "mouth_box": box(pts, named["lips_outer"], 0.25, 0.3, 1.0, size),
        "right_eye_box": box(pts, named["right_eye"], 0.3, 1.2, 0.6, size),
        "left_eye_box": box(pts, named["left_eye"], 0.3, 1.2, 0.6, size),
        "face_box": box(pts, named["face_oval"], 0.05, 0.05, 0.05, size),
    }
    landmarks = {
        "model": f"mediapipe {mp.__version__} FaceMesh (refine_landmarks=True)",
        "image_size": [size, size],
        "units": "x, y in pixels of image.png; z in MediaPipe units scaled by the image width",
        "points": [[round(float(v), 2) for v in p] for p in pts],
        "contours": named,
        "points_named": POINTS,
    }
    meta = {
        "name": args.name,
        "source": args.source or args.input,
        "licence": args.licence,
        "image": "image.png",
        "landmarks": "landmarks.json",
        "image_size": [size, size],
        "fps": args.fps,
        "framing": args.framing,
        **({"crop": list(crop)} if crop else {}),  # in the photo's pixels
        "measures": {"face_height_px": round(float(face_h), 1),
                     "mouth_width_px": round(float(mouth_w), 1)},
        "regions": regions,
    }
    header = "# Made by avatars/tools/make_pack.py; boxes are [x0, y0, x1, y1] in pixels.\n"

    voice_text, voice_files = kept_voice(dest) if args.force else ("", [])

    def write(out: Path) -> None:
        if not cv2.imwrite(str(out / "image.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            raise PackError(f"cannot write {out / 'image.png'}")
        (out / "landmarks.json").write_text(json.dumps(landmarks, separators=(",", ":")) + "\n")
        (out / "pack.yaml").write_text(header + to_yaml(meta) + "\n" + voice_text)
        for f in voice_files:
            shutil.copy2(f, out / f.name)

    try:
        write_atomically(dest, args.force, write)
    except OSError as e:
        raise PackError(f"cannot write the pack to {dest}: {e}") from None
    yaw, roll = head_pose(pts)
    print(f"wrote {dest}: face height {face_h:.0f} px, mouth width {mouth_w:.0f} px, "
          f"yaw {yaw:.1f} degrees, roll {roll:.1f} degrees", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
