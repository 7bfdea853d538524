"""Draws a FaceMotion onto the pack's photo: mouth and eye warps on small crops, then one head warp.

Everything that depends only on the pack (displacement fields, masks, the closed-mouth crop) is
built in ``__init__``; ``render`` mixes precomputed fields, so a 512x512 frame costs a few ms on one
core. A renderer keeps no per-frame state: frames can be drawn in any order.
"""

from __future__ import annotations

import cv2
import numpy as np

from avatarchat.avatar.eyes import EyeShape, EyeWarp
from avatarchat.avatar.head import head_matrix
from avatarchat.avatar.mouth import MouthShape, MouthWarp
from avatarchat.avatar.pack import AvatarPack
from avatarchat.messages import FaceMotion


class PortraitRenderer:
    def __init__(self, pack: AvatarPack, mouth: MouthShape = MouthShape(), eyes: EyeShape = EyeShape()):
        self.pack = pack
        self.image = np.ascontiguousarray(pack.image)
        self.mouth = MouthWarp(self.image, pack, mouth)
        self.eyes = [EyeWarp(self.image, pack, side, eyes) for side in ("right", "left")]
        boxes = [self.mouth.box] + [e.box for e in self.eyes]
        for i, a in enumerate(boxes):  # each warp reads the photo and writes its own box
            for b in boxes[i + 1:]:
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    raise ValueError(f"pack {pack.name}: warp regions overlap ({a} and {b})")
        lm = pack.landmarks
        chin = lm[pack.points.get("chin", 152), :2]
        forehead = lm[pack.points.get("forehead", 10), :2]
        self.face_height = float(np.linalg.norm(chin - forehead))
        self.pivot = (float(chin[0]), float(chin[1] + 0.35 * self.face_height))  # top of the neck

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames, in pixels."""
        return self.image.shape[1], self.image.shape[0]

    def render(self, motion: FaceMotion) -> np.ndarray:
        """The frame for ``motion``: (H, W, 3) uint8 RGB, a new array."""
        canvas = self.image.copy()
        self.mouth.apply(canvas, motion.mouth_open, motion.mouth_width, motion.smile)
        for eye in self.eyes:
            eye.apply(canvas, motion.blink, motion.brow)
        m = head_matrix(motion.head_yaw, motion.head_pitch, motion.head_roll, motion.breath,
                        pivot=self.pivot, face_height=self.face_height,
                        frame_height=canvas.shape[0])
        if m is None:
            return canvas
        return cv2.warpAffine(canvas, m, (canvas.shape[1], canvas.shape[0]),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
