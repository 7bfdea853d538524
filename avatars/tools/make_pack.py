"""Build an avatar pack (``avatars/<name>/``) from one portrait photo. Run once, offline.

The pack is what the portrait renderer animates: the photo, the 478 MediaPipe FaceMesh landmarks in
pixel coordinates with named, ordered contours (lips, eyes, brows, jaw), and ``pack.yaml`` with the
regions the renderer precomputes its warps for. Landmarks are computed here, once, and shipped as
data, so the service never needs MediaPipe (which pins numpy<2 and pulls in jax).

Usage (in a throwaway venv with ``mediapipe==0.10.21``, the last release that ships the legacy
FaceMesh models, plus ``scikit-image`` when the input is the bundled astronaut)::

    python -m venv /tmp/mpvenv && /tmp/mpvenv/bin/pip install mediapipe==0.10.21 scikit-image
    /tmp/mpvenv/bin/python avatars/tools/make_pack.py skimage:astronaut astronaut \
        --source "skimage.data.astronaut(): Eileen Collins, NASA portrait" \
        --licence "public domain (NASA)"

``INPUT`` is an image file (any format OpenCV reads) or ``skimage:<name>`` for an image from
``skimage.data``. The image is cropped to a square around the face only if it is not square and is
then resized to ``--size`` (512 by default). The script fails if it finds no face.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import cv2
import numpy as np

PACKS_DIR = Path(__file__).resolve().parents[1]

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


def load_image(spec: str) -> np.ndarray:
    """RGB uint8 image from a path or ``skimage:<name>``."""
    if spec.startswith("skimage:"):
        from skimage import data

        img = getattr(data, spec.split(":", 1)[1])()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        return np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    bgr = cv2.imread(spec, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read image {spec}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def detect(rgb: np.ndarray) -> np.ndarray:
    """478 x 3 landmarks: x, y in pixels, z in MediaPipe's units scaled by the image width."""
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                         refine_landmarks=True,
                                         min_detection_confidence=0.5) as mesh:
        result = mesh.process(rgb)
    if not result.multi_face_landmarks:
        raise SystemExit("no face found in the image")
    h, w = rgb.shape[:2]
    pts = np.array([(p.x * w, p.y * h, p.z * w) for p in result.multi_face_landmarks[0].landmark])
    if len(pts) != 478:
        raise SystemExit(f"expected 478 landmarks (refined mesh), got {len(pts)}")
    return pts


def square_around_face(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    if h == w:
        return rgb
    pts = detect(rgb)
    side = min(h, w)
    cx, cy = pts[:, 0].mean(), pts[:, 1].mean()
    x0 = int(np.clip(cx - side / 2, 0, w - side))
    y0 = int(np.clip(cy - side / 2, 0, h - side))
    return rgb[y0:y0 + side, x0:x0 + side]


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
            raise SystemExit(f"contour through {start} is not closed")
        prev, cur = cur, nxt[0]
        if cur == start:
            return loop
        loop.append(cur)
        if len(loop) > len(adj):
            raise SystemExit(f"contour through {start} does not close")


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="image file, or skimage:<name> (e.g. skimage:astronaut)")
    ap.add_argument("name", help="pack name: writes avatars/<name>/")
    ap.add_argument("--size", type=int, default=512, help="square output size in pixels")
    ap.add_argument("--fps", type=int, default=25, help="video frame rate the pack is made for")
    ap.add_argument("--source", default="", help="where the image comes from")
    ap.add_argument("--licence", required=True, help="the image's licence")
    ap.add_argument("--out-dir", type=Path, default=PACKS_DIR, help="directory holding packs")
    args = ap.parse_args(argv)

    import mediapipe as mp

    rgb = square_around_face(load_image(args.input))
    if rgb.shape[0] != args.size:
        rgb = cv2.resize(rgb, (args.size, args.size), interpolation=cv2.INTER_AREA)
    pts = detect(rgb)
    named = contours(pts)

    size = args.size
    face_h = pts[152, 1] - pts[10, 1]
    mouth_w = pts[291, 0] - pts[61, 0]
    regions = {
        # mouth box: the lips plus room for the lower lip to drop and the corners to spread
        "mouth_box": box(pts, named["lips_outer"], 0.25, 0.3, 1.0, size),
        "right_eye_box": box(pts, named["right_eye"], 0.3, 1.2, 0.6, size),
        "left_eye_box": box(pts, named["left_eye"], 0.3, 1.2, 0.6, size),
        "face_box": box(pts, named["face_oval"], 0.05, 0.05, 0.05, size),
    }

    out = args.out_dir / args.name
    out.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out / "image.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])
    landmarks = {
        "model": f"mediapipe {mp.__version__} FaceMesh (refine_landmarks=True)",
        "image_size": [size, size],
        "units": "x, y in pixels of image.png; z in MediaPipe units scaled by the image width",
        "points": [[round(float(v), 2) for v in p] for p in pts],
        "contours": named,
        "points_named": POINTS,
    }
    (out / "landmarks.json").write_text(json.dumps(landmarks, separators=(",", ":")) + "\n")
    meta = {
        "name": args.name,
        "source": args.source or args.input,
        "licence": args.licence,
        "image": "image.png",
        "landmarks": "landmarks.json",
        "image_size": [size, size],
        "fps": args.fps,
        "measures": {"face_height_px": round(float(face_h), 1),
                     "mouth_width_px": round(float(mouth_w), 1)},
        "regions": regions,
    }
    header = "# Made by avatars/tools/make_pack.py; boxes are [x0, y0, x1, y1] in pixels.\n"
    (out / "pack.yaml").write_text(header + to_yaml(meta) + "\n")
    print(f"wrote {out}: face height {face_h:.0f} px, mouth width {mouth_w:.0f} px", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
