"""Small shape functions the warps are built from. All vectorised over numpy arrays."""

from __future__ import annotations

import numpy as np


def smoothstep(e0: float, e1: float, x):
    """0 below e0, 1 above e1, a C1-smooth ramp between (no kinks, so warps have no creases)."""
    t = np.clip((np.asarray(x, dtype=np.float32) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def lens(z, power: float):
    """1 at z=0 falling to 0 at |z|=1: the horizontal profile of an opening lip. power < 1 gives
    rounder ends (an ellipse at 0.5), power > 1 pointed ones."""
    z = np.clip(np.asarray(z, dtype=np.float32), -1.0, 1.0)
    return np.power(np.maximum(1.0 - z * z, 0.0), power)


def contour_y(points: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """y of a corner-to-corner contour (n, 2) at columns ``xs``; flat beyond its ends."""
    order = np.argsort(points[:, 0], kind="stable")
    return np.interp(xs, points[order, 0], points[order, 1]).astype(np.float32)


def grid(x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (image frame) of the box [x0, x1) x [y0, y1), as float32 (H, W)."""
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)
    return np.meshgrid(xs, ys)


def support_box(fields: list[np.ndarray], x0: int, y0: int, eps: float, pad: int,
                limit: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box (image frame) outside which every field is below ``eps`` pixels, padded."""
    mask = np.zeros(fields[0].shape, dtype=bool)
    for f in fields:
        mask |= np.abs(f) > eps
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(rows) == 0:
        return x0, y0, x0 + 1, y0 + 1
    w, h = limit
    return (int(max(0, x0 + cols[0] - pad)), int(max(0, y0 + rows[0] - pad)),
            int(min(w, x0 + cols[-1] + 1 + pad)), int(min(h, y0 + rows[-1] + 1 + pad)))
