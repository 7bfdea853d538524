"""Draw a contact sheet of a pack's face in a few poses, to look at what the renderer does.

    python avatars/tools/contact_sheet.py [PACK] [OUT.png]

Defaults: the astronaut pack, ``docs/images/portrait_mouth_shapes.png``. Each tile is the face
region of one rendered frame, enlarged 2x; the last tile is a whole frame at its own size.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from avatarchat.avatar import expression
from avatarchat.avatar.pack import AvatarPack
from avatarchat.avatar.renderer import PortraitRenderer
from avatarchat.messages import FaceMotion

POSES = [
    ("photo (not rendered)", None),
    ("closed (silence)", FaceMotion()),
    ("mouth_open 0.3", FaceMotion(mouth_open=0.3)),
    ("mouth_open 0.6", FaceMotion(mouth_open=0.6)),
    ("mouth_open 1.0", FaceMotion(mouth_open=1.0)),
    ("open 0.6, width +1 (ee)", FaceMotion(mouth_open=0.6, mouth_width=1.0)),
    ("open 0.6, width -1 (oo)", FaceMotion(mouth_open=0.6, mouth_width=-1.0)),
    ("blink 0.5", FaceMotion(blink=0.5)),
    ("blink 1.0", FaceMotion(blink=1.0)),
    ("brow +1, open 0.4", FaceMotion(brow=1.0, mouth_open=0.4)),
    ("yaw +4, roll -3, open 0.5", FaceMotion(head_yaw=4.0, head_roll=-3.0, mouth_open=0.5)),
    ("pitch +4, breath 1", FaceMotion(head_pitch=4.0, breath=1.0)),
]


def _expression(emotion: str, mouth_open: float = 0.0) -> FaceMotion:
    """The face at full ``emotion``, as the avatar stage composes it (avatarchat/avatar/expression.py)."""
    e = expression.target(emotion)
    extra = expression.offsets(e)
    return FaceMotion(mouth_open=max(mouth_open, extra.mouth_open), brow=extra.brow,
                      head_pitch=extra.head_pitch, smile=e.smile, surprise=e.surprise)


POSES += [
    ("happy", _expression("happy")),
    ("sad", _expression("sad")),
    ("surprised", _expression("surprised")),
    ("happy, open 0.5", _expression("happy", 0.5)),
]


def main(argv: list[str]) -> int:
    pack = AvatarPack.load(argv[0] if argv else "astronaut")
    out = Path(argv[1]) if len(argv) > 1 else Path("docs/images/portrait_mouth_shapes.png")
    renderer = PortraitRenderer(pack)
    x0, y0, x1, y1 = pack.regions["face_box"]
    pad = int(0.1 * (x1 - x0))
    x0, y0 = max(0, x0 - pad), max(0, y0 - pad)
    x1, y1 = min(pack.size[0], x1 + pad), min(pack.size[1], y1 + pad)
    tiles = []
    for label, motion in POSES:
        frame = pack.image.copy() if motion is None else renderer.render(motion)
        tile = cv2.resize(frame[y0:y1, x0:x1], None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
        tile = cv2.copyMakeBorder(tile, 26, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        cv2.putText(tile, label, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    cols = 4
    rows = [np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)]
    write_sheet(np.vstack(rows), out)
    return 0


def write_sheet(sheet: np.ndarray, out: Path) -> None:
    """Save an RGB sheet as a PNG (folders made as needed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {out} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
