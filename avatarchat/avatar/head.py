"""Head motion as one small similarity warp of the whole frame.

A photo has no 3D head, so yaw and pitch become the shift a turning head's face makes (its centre
sits in front of the neck's pivot), roll a rotation about the neck, and breathing a slight rise of
everything above the frame's bottom edge. Kept to a few degrees, that reads as a living head.
"""

from __future__ import annotations

import math

import numpy as np


def head_matrix(yaw: float, pitch: float, roll: float, breath: float, *, pivot: tuple[float, float],
                face_height: float, frame_height: int) -> np.ndarray | None:
    """2x3 forward affine matrix (source -> frame), or None for no motion."""
    if yaw == 0.0 and pitch == 0.0 and roll == 0.0 and breath == 0.0:
        return None
    reach = 0.6 * face_height  # how far the face is in front of the neck's axis
    tx = reach * math.sin(math.radians(yaw))
    ty = reach * math.sin(math.radians(pitch))
    px, py = pivot
    a = math.radians(roll)
    c, s = math.cos(a), math.sin(a)
    # rotation by `roll` about the pivot, then the face's shift
    m = np.array([[c, s, (1 - c) * px - s * py + tx],
                  [-s, c, s * px + (1 - c) * py + ty]], dtype=np.float64)
    # breathing: a vertical scale about the frame's bottom edge (the chest), ~1.5 px at the face
    k = 1.0 + 0.004 * breath
    return np.array([[1.0, 0.0, 0.0], [0.0, k, (1.0 - k) * frame_height]]) @ np.vstack([m, [0, 0, 1]])
