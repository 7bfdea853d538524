"""The eye warp: blinks (the upper lid slides down over the eye) and brow raises.

The skin between the brow and the lid margin stretches down like a blind; the eye below the moving
lid margin is not squashed but covered, as a real lid covers it. The brow moves with a smooth bump
that fades out before the lid, so a raised brow never drags the eye with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatarchat.avatar.fields import contour_y, grid, lens, smoothstep


@dataclass(frozen=True)
class EyeShape:
    stretch: float = 0.7  # lid skin above the margin that stretches, in eye-opening heights
    lash_squeeze: float = 0.8  # keeps the lash line thin as the lid stretches (0 = plain stretch)
    brow_raise: float = 0.3  # brow travel at brow=+1, as a fraction of the brow-to-lid distance
    brow_lower: float = 0.15  # and at brow=-1


class EyeWarp:
    def __init__(self, image: np.ndarray, pack, side: str, shape: EyeShape = EyeShape()):
        self.image = image
        lm = pack.landmarks[:, :2] - 0.5  # MediaPipe's continuous coordinates -> pixel centres
        xy = lambda name: lm[list(pack.contours[name])]  # noqa: E731
        up, lo, brow = xy(f"{side}_eye_upper"), xy(f"{side}_eye_lower"), xy(f"{side}_brow")
        xl, xr = float(up[:, 0].min()), float(up[:, 0].max())
        bxl, bxr = float(brow[:, 0].min()), float(brow[:, 0].max())
        brow_fit = np.polyfit(brow[:, 0], brow[:, 1], 2)  # centre line through both brow edges
        eye_top = float(up[:, 1].min())
        opening = float((contour_y(lo, up[:, 0]) - up[:, 1]).max())
        brow_gap = max(eye_top - float(np.polyval(brow_fit, (xl + xr) / 2)), 3.0)

        h_img, w_img = image.shape[:2]
        x0 = int(max(0, np.floor(min(xl, bxl)) - 3))
        x1 = int(min(w_img, np.ceil(max(xr, bxr)) + 4))
        y0 = int(max(0, np.floor(float(brow[:, 1].min()) - 1.3 * brow_gap) - 2))
        y1 = int(min(h_img, np.ceil(float(lo[:, 1].max())) + 3))
        self.box = (x0, y0, x1, y1)
        X, Y = grid(x0, y0, x1, y1)
        xs = X[0]

        y_up = contour_y(up, xs)
        travel = np.clip(contour_y(lo, xs) - y_up, 0, None)
        travel = np.where((xs > xl) & (xs < xr), travel, 0.0).astype(np.float32)
        self.X, self.Y = X, Y
        self.y_up = y_up[None, :]
        self.travel = travel[None, :]
        self.reach = np.float32(max(shape.stretch * opening, 2.0))
        self.y_top = self.y_up - self.reach
        self.squeeze = shape.lash_squeeze

        # Brow bump: 1 along the brow, 0 at the lid and a little above the brow.
        by = np.polyval(brow_fit, xs).astype(np.float32)[None, :]
        above = 1.0 - smoothstep(0.0, 1.2 * brow_gap, by - Y)
        below = 1.0 - smoothstep(0.0, 0.9 * brow_gap, Y - by)
        across = lens((X - (bxl + bxr) / 2) / (0.65 * (bxr - bxl) + 2.0), 1.0)
        self.bump = (np.where(Y < by, above, below) * across).astype(np.float32)
        self.raise_px = shape.brow_raise * brow_gap
        self.lower_px = shape.brow_lower * brow_gap
        self.base = np.ascontiguousarray(image[y0:y1, x0:x1]).astype(np.float32)

    def apply(self, canvas: np.ndarray, blink: float, brow: float) -> None:
        b = float(np.clip(blink, 0.0, 1.0))
        br = float(np.clip(brow, -1.0, 1.0))
        if b == 0.0 and br == 0.0:
            return
        lid = self.y_up + b * self.travel  # where the lid margin is now
        # Between y_top and the lid the skin is stretched to reach the lid; above it, unchanged.
        # The stretch is uneven (a power curve): the smooth skin up top takes most of it, so the
        # dark lash line at the margin stays thin instead of smearing into a band.
        span = self.reach + b * self.travel
        s = np.clip((self.Y - self.y_top) / span, 0.0, 1.0)
        src = np.where(self.Y < self.y_top, self.Y,
                       self.y_top + self.reach * np.power(s, 1.0 + self.squeeze * b))
        src = src + (br * (self.raise_px if br > 0 else self.lower_px)) * self.bump
        skin = cv2.remap(self.image, self.X, src.astype(np.float32), cv2.INTER_LINEAR)
        cover = np.clip(lid - self.Y + 0.5, 0.0, 1.0)[..., None]  # soft lid edge
        out = cover * skin.astype(np.float32) + (1.0 - cover) * self.base
        x0, y0, x1, y1 = self.box
        canvas[y0:y1, x0:x1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
