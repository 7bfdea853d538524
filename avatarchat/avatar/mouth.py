"""The mouth warp: opens, closes, spreads and rounds the lips of the photo.

The face is split along the *seam* (where the upper teeth meet the lower lip in the photo) into an
upper part (upper lip, teeth) and a lower part (lower lip, chin). Each part moves by its own smooth
displacement field: closing moves both lips over the teeth, opening drops the jaw and lifts the upper
lip a little. Drawing back to front: mouth interior, upper part, lower lip over the teeth. Where
neither part covers a pixel, it is the gap between the lips and gets a dark mouth interior. The
photo's own teeth come along with the upper lip, so an open mouth shows real teeth.

Fields are precomputed for the extreme poses; a frame mixes them linearly, remaps a small crop twice
and blends, so a frame costs well under a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatarchat.avatar.fields import contour_y, grid, lens, smoothstep, support_box


@dataclass(frozen=True)
class MouthShape:
    """How far the mouth moves; lengths are fractions of the mouth's width unless they say px."""

    aperture: float = 0.40  # gap between the lips at mouth_open=1
    upper_share: float = 0.08  # part of that gap made by the upper lip rising (the rest: the jaw)
    close_upper: float = 0.3  # part of closing a parted photo mouth done by the upper lip
    lens_power: float = 0.6  # horizontal profile of the opening (0.5 = ellipse)
    spread: float = 0.08  # each corner's outward travel at mouth_width=+1 ("ee")
    round: float = 0.11  # each corner's inward travel at mouth_width=-1 ("oo")
    smile_lift: float = 0.03  # corners rise this much at mouth_width=+1
    expression_lift: float = 0.13  # corners rise (smile=+1, happy) or fall (smile=-1, sad) this much
    seam_offset_px: float = 0.6  # the teeth end this far above the lower inner lip landmarks

    # mouth interior colours (RGB): the throat behind the teeth, and the tongue low in the mouth
    throat: tuple[float, float, float] = (52.0, 16.0, 18.0)
    tongue: tuple[float, float, float] = (150.0, 66.0, 70.0)
    teeth: tuple[float, float, float] = (200.0, 186.0, 175.0)  # the lower teeth's edge, in shadow
    lower_teeth_alpha: float = 0.55


class MouthWarp:
    def __init__(self, image: np.ndarray, pack, shape: MouthShape = MouthShape()):
        self.image = image
        self.shape = shape
        lm = pack.landmarks[:, :2] - 0.5  # MediaPipe's continuous coordinates -> pixel centres
        xy = lambda name: lm[list(pack.contours[name])]  # noqa: E731
        up_in, lo_in = xy("lips_inner_upper"), xy("lips_inner_lower")
        up_out, lo_out = xy("lips_outer_upper"), xy("lips_outer_lower")
        chin = lm[pack.points.get("chin", 152)]
        subnasale = lm[pack.points.get("subnasale", 2)]
        jaw = xy("jaw")

        xl, xr = float(lo_in[:, 0].min()), float(lo_in[:, 0].max())
        cx, hw = (xl + xr) / 2, (xr - xl) / 2
        width = 2 * hw
        h_img, w_img = image.shape[:2]

        # Work on a generous box first, then crop to where anything moves.
        bx0, bx1 = int(max(0, cx - 3.5 * hw)), int(min(w_img, cx + 3.5 * hw + 1))
        seam_cx = float(contour_y(lo_in, np.array([cx]))[0]) - shape.seam_offset_px
        L = float(chin[1] - seam_cx)  # seam to chin
        if L <= 2:
            raise ValueError("mouth landmarks are below the chin; the pack's landmarks are wrong")
        by0, by1 = int(max(0, subnasale[1] - 0.6 * L)), int(min(h_img, chin[1] + 2.5 * L))
        X, Y = grid(bx0, by0, bx1, by1)
        xs = X[0]

        seam = contour_y(lo_in, xs) - shape.seam_offset_px
        t0 = np.clip(contour_y(lo_in, xs) - contour_y(up_in, xs), 0, None)
        t0 = np.where((xs > xl) & (xs < xr), t0, 0.0).astype(np.float32)  # photo's lip gap
        t0max = float(t0.max())
        upper_edge = contour_y(up_out, xs)
        lip_low = float(contour_y(lo_out, np.array([cx]))[0])

        u = (X - cx) / hw
        seam_rel = Y - seam[None, :]
        v = seam_rel / L
        vp = np.maximum(v, 0.0)
        v_lip = max((lip_low - seam_cx) / L, 0.05)

        # Jaw: how wide the moving part is at chin level, from the jaw line there.
        below = jaw[jaw[:, 1] >= chin[1] - 0.3 * L]
        a_chin = float(np.clip((below[:, 0].max() - below[:, 0].min()) / 2 / hw, 1.2, 3.0)) \
            if len(below) >= 2 else 1.8

        aperture = shape.aperture * width
        self.lift_px = shape.upper_share * aperture
        self.drop_px = max(aperture - t0max - self.lift_px, 0.0)
        close_lower = 1.0 - shape.close_upper

        # The jaw line: the chin is drawn over the neck, so when it drops it covers the neck (which
        # stays still) instead of squashing it. Beyond the jaw contour's ends there is no neck.
        jaw_line = np.interp(xs, jaw[np.argsort(jaw[:, 0]), 0], jaw[np.argsort(jaw[:, 0]), 1],
                             left=1e6, right=1e6).astype(np.float32)
        jaw_rel = Y - jaw_line[None, :]

        # Lower part: the jaw profile widens from the lip line to the chin and stays rigid a little
        # past it (the chin's outline moves as one), then fades out.
        v_end = 1.0 + (self.drop_px + 2.0) / L
        a = 1.0 + (a_chin - 1.0) * smoothstep(v_lip, 1.0, vp)
        jaw_prof = lens(u / a, shape.lens_power) * (1.0 - smoothstep(v_end, v_end + 0.6, v))
        fl_open = self.drop_px * jaw_prof
        # Closing: exactly the photo's lip gap at the seam, blending into the jaw profile lower down;
        # only the lip rises, the chin stays where the photo has it.
        s = smoothstep(0.0, 1.5 * v_lip, vp)
        close_prof = t0[None, :] * (1.0 - s) + t0max * jaw_prof * s
        fl_close = -close_lower * close_prof * (1.0 - smoothstep(v_lip, 1.0, vp))

        # Upper part: rigid from the seam to the lip's outer edge, fading out towards the nose.
        reach = max(1.5 * (float(contour_y(up_out, np.array([cx]))[0]) - subnasale[1]), 6.0)
        w_up = smoothstep(0.0, 1.0, (Y - (upper_edge[None, :] - reach)) / reach)
        fu_close = shape.close_upper * t0[None, :] * w_up
        fu_open = -self.lift_px * lens(u, shape.lens_power) * w_up

        # Corners: a horizontal stretch of the lips, fading out over the cheeks.
        k = np.where(np.abs(u) <= 1.0, u, np.sign(u) * (1.0 - smoothstep(1.0, 2.0, np.abs(u))))
        g = np.where(seam_rel < 0,
                     1.0 - smoothstep(0.0, max(seam_cx - subnasale[1], 4.0), -seam_rel),
                     1.0 - smoothstep(0.0, 0.8 * L, seam_rel))
        corner_x = (k * g).astype(np.float32)
        corner_y = (np.abs(k) * g).astype(np.float32)
        self.spread_px = shape.spread * width
        self.round_px = shape.round * width
        self.smile_px = shape.smile_lift * width
        self.expression_px = shape.expression_lift * width

        # Crop to where a visible part moves: lower fields matter between the closing distance above
        # the seam and the drop below the jaw line, upper ones down to the widest opening.
        lower_zone = (seam_rel >= -(close_lower * t0max + 2.0)) & (jaw_rel <= self.drop_px + 2.0)
        upper_zone = seam_rel <= aperture + 2.0
        x0, y0, x1, y1 = support_box(
            [np.where(lower_zone, fl_open, 0), np.where(lower_zone, fl_close, 0),
             np.where(upper_zone, fu_open, 0), np.where(upper_zone, fu_close, 0),
             corner_x * max(self.spread_px, self.round_px),
             corner_y * (self.smile_px + self.expression_px)],
            bx0, by0, eps=0.02, pad=2, limit=(w_img, h_img))
        self.box = (x0, y0, x1, y1)
        c = (slice(y0 - by0, y1 - by0), slice(x0 - bx0, x1 - bx0))
        cols = slice(x0 - bx0, x1 - bx0)
        f32 = lambda a_: np.ascontiguousarray(a_[c], dtype=np.float32)  # noqa: E731
        self.X, self.Y = f32(X), f32(Y)
        self.cx, self.hw = cx, hw
        self.cols_x = np.ascontiguousarray(xs[cols])
        self.seam_line, self.jaw_line = seam[cols].copy(), jaw_line[cols].copy()
        self.seam_rel, self.jaw_rel, self.u = f32(seam_rel), f32(jaw_rel), f32(u)
        self.fl_open, self.fl_close = f32(fl_open), f32(fl_close)
        self.fu_open, self.fu_close = f32(fu_open), f32(fu_close)
        self.corner_x, self.corner_y = f32(corner_x), f32(corner_y)
        self.base = np.ascontiguousarray(image[y0:y1, x0:x1]).astype(np.float32)
        self.throat = np.array(shape.throat, np.float32)
        self.tongue = np.array(shape.tongue, np.float32)
        self.teeth = np.array(shape.teeth, np.float32)
        self.lower_teeth_alpha = np.float32(shape.lower_teeth_alpha)
        self._rest = self._draw(0.0, 0.0, 0.0)  # silence is the commonest frame: draw it once

    def apply(self, canvas: np.ndarray, mouth_open: float, mouth_width: float,
              smile: float = 0.0) -> None:
        """Draw the mouth pose into ``canvas`` (a copy of the photo) in place."""
        o = float(np.clip(mouth_open, 0.0, 1.0))
        w = float(np.clip(mouth_width, -1.0, 1.0))
        e = float(np.clip(smile, -1.0, 1.0))
        x0, y0, x1, y1 = self.box
        rest = o == 0.0 and w == 0.0 and e == 0.0
        canvas[y0:y1, x0:x1] = self._rest if rest else self._draw(o, w, e)

    def _draw(self, o: float, w: float, e: float) -> np.ndarray:
        fu = self.fu_close * (1.0 - o) + self.fu_open * o  # downward travel of the upper part
        fl = self.fl_close * (1.0 - o) + self.fl_open * o  # downward travel of the lower part
        seam_rel, jaw_rel, u = self.seam_rel, self.jaw_rel, self.u
        qx, qy = self.X, self.Y
        # Corners: spreading or rounding (speech), lifted or dropped (expression); a smile also
        # widens the mouth a little.
        dx = w * (self.spread_px if w > 0 else self.round_px) + 0.5 * max(e, 0.0) * self.spread_px
        lift = max(w, 0.0) * self.smile_px + e * self.expression_px
        if dx != 0.0 or lift != 0.0:
            # Corners first (the outermost warp), then the open/close fields at the moved point.
            qx = self.X - np.float32(dx) * self.corner_x
            qy = self.Y + np.float32(lift) * self.corner_y
            x0, y0 = self.box[:2]
            moved = cv2.remap(cv2.merge([fu, fl]), qx - x0, qy - y0, cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
            fu, fl = moved[..., 0], moved[..., 1]
            seam_rel = qy - np.interp(qx, self.cols_x, self.seam_line).astype(np.float32)
            jaw_rel = qy - np.interp(qx, self.cols_x, self.jaw_line).astype(np.float32)
            u = (qx - self.cx) / self.hw
        lower = cv2.remap(self.image, qx, qy - fl, cv2.INTER_LINEAR).astype(np.float32)
        upper = cv2.remap(self.image, qx, qy - fu, cv2.INTER_LINEAR).astype(np.float32)
        # Coverage of each pixel, front to back, from where each layer's source lies (px, with a
        # one-pixel soft edge that antialiases the lip and chin lines): the lower face (its source
        # between the seam and the jaw line), the still neck below the jaw line, the upper lip and
        # teeth (source above the seam), and whatever is left is the gap between the lips.
        rl, ru, rj = seam_rel - fl, seam_rel - fu, jaw_rel - fl
        c_low = np.clip(rl + 0.5, 0.0, 1.0) * np.clip(0.5 - rj, 0.0, 1.0)
        c_neck = np.clip(rj + 0.5, 0.0, 1.0)  # the neck below the (possibly dropped) chin
        rest = np.maximum(1.0 - c_low - c_neck, 0.0)
        c_up = np.minimum(rest, np.clip(0.5 - ru, 0.0, 1.0))
        c_gap = rest - c_up
        out = (c_low[..., None] * lower + c_neck[..., None] * self.base
               + c_up[..., None] * upper)
        if c_gap.max() > 0.0:
            out += c_gap[..., None] * self._interior(rl, ru, u)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def _interior(self, rl: np.ndarray, ru: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Colour of the mouth's inside: a shadow under the upper teeth, the tongue's top showing
        low in a wide-open mouth with the edge of the lower teeth just behind the lip, darker
        towards the corners."""
        gap = np.maximum(ru - rl, 1e-3)  # lip gap height at this column, px
        t = np.clip(ru / gap, 0.0, 1.0)  # 0 just under the upper teeth .. 1 at the lower lip
        wide = smoothstep(3.0, 12.0, gap)
        tongue = smoothstep(0.45, 0.95, t) * wide
        col = self.throat + (self.tongue - self.throat) * tongue[..., None]
        # lower teeth: a thin, soft band right above the lower lip, only in the middle of the mouth
        lower_teeth = (smoothstep(1.0 - 2.5 / gap, 1.0 - 1.0 / gap, t) * wide
                       * (1.0 - smoothstep(0.2, 0.6, np.abs(u))) * self.lower_teeth_alpha)
        col = col + (self.teeth - col) * lower_teeth[..., None]
        shade = 1.0 - 0.55 * np.clip(u * u, 0.0, 1.0)
        return col * shade[..., None]
