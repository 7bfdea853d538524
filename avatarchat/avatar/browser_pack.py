"""What a browser needs to draw the same face as ``PortraitRenderer``: the photo and the warps'
precomputed fields, as one JSON document (``GET /v1/avatar``).

The page (signaling/static/face.js) mixes these fields per frame exactly as the Python warps do, so
a face drawn in the browser matches a server-rendered frame (tests/cluster/test_browser.py compares
them). Fields are float32, base64-encoded, row-major over their box.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np

from avatarchat.avatar.renderer import PortraitRenderer
from avatarchat.messages import FaceMotion

FORMAT = 1  # bumped when the document's shape changes


def _f32(a) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.float32).tobytes()).decode("ascii")


def _png(rgb: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the avatar image as PNG")
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def browser_pack(renderer: PortraitRenderer) -> dict:
    m = renderer.mouth
    mouth = {
        "box": list(m.box),
        "cx": m.cx, "hw": m.hw,
        "spread_px": m.spread_px, "round_px": m.round_px, "smile_px": m.smile_px,
        "expression_px": m.expression_px,
        "throat": m.throat.tolist(), "tongue": m.tongue.tolist(), "teeth": m.teeth.tolist(),
        "lower_teeth_alpha": float(m.lower_teeth_alpha),
        "cols_x": _f32(m.cols_x), "seam_line": _f32(m.seam_line), "jaw_line": _f32(m.jaw_line),
        **{name: _f32(getattr(m, name)) for name in (
            "seam_rel", "jaw_rel", "u", "fl_open", "fl_close", "fu_open", "fu_close",
            "corner_x", "corner_y")},
    }
    eyes = [{
        "box": list(e.box),
        "y_up": _f32(e.y_up[0]), "travel": _f32(e.travel[0]), "bump": _f32(e.bump),
        "reach": float(e.reach), "squeeze": float(e.squeeze),
        "raise_px": float(e.raise_px), "lower_px": float(e.lower_px),
    } for e in renderer.eyes]
    width, height = renderer.size
    return {
        "format": FORMAT,
        "name": renderer.pack.name,
        "width": width, "height": height, "fps": renderer.pack.fps,
        "motion_fields": list(FaceMotion.__dataclass_fields__),
        "image": _png(renderer.image),
        "mouth": mouth,
        "eyes": eyes,
        "head": {"pivot": list(renderer.pivot), "face_height": renderer.face_height},
    }
