// The avatar's face drawn in the browser (render=browser sessions, docs/protocol.md).
//
// GET /v1/avatar gives the photo and the warp fields the server's renderer precomputes
// (avatarchat/avatar/browser_pack.py); draw(motion) mixes them exactly as avatarchat/avatar/mouth.py
// and eyes.py do, on small crops, then turns the head with one canvas transform (head.py). The
// server sends each frame's motion when it sends the audio that goes with it; FacePlayer shows it
// once that audio plays (after the receiver's jitter-buffer delay), so mouth and sound match.
"use strict";

(() => {
  const f32 = (b64) => {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  };
  const clip = (x, lo, hi) => (x < lo ? lo : x > hi ? hi : x);
  const smoothstep = (e0, e1, x) => {
    const t = clip((x - e0) / (e1 - e0), 0, 1);
    return t * t * (3 - 2 * t);
  };
  // np.interp over increasing xs, flat beyond the ends
  function interp(x, xs, ys) {
    const n = xs.length;
    if (x <= xs[0]) return ys[0];
    if (x >= xs[n - 1]) return ys[n - 1];
    let lo = 0, hi = n - 1;
    while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (xs[mid] <= x) lo = mid; else hi = mid; }
    const t = (x - xs[lo]) / (xs[hi] - xs[lo]);
    return ys[lo] + (ys[hi] - ys[lo]) * t;
  }

  class FaceRenderer {
    // pack: the JSON of GET /v1/avatar; canvas: where frames are drawn (sized to the pack)
    static async load(pack, canvas) {
      const img = new Image();
      img.src = pack.image;
      await img.decode();
      return new FaceRenderer(pack, img, canvas);
    }

    constructor(pack, img, canvas) {
      this.pack = pack;
      this.fields = pack.motion_fields;
      const W = this.W = pack.width, H = this.H = pack.height;
      const photo = document.createElement("canvas");
      photo.width = W; photo.height = H;
      const pctx = photo.getContext("2d", {willReadFrequently: true});
      pctx.drawImage(img, 0, 0);
      this.src = pctx.getImageData(0, 0, W, H).data;  // the photo, RGBA, read only
      this.work = photo;                                // the photo with this frame's crops drawn in
      this.wctx = pctx;
      this.canvas = canvas;
      canvas.width = W; canvas.height = H;
      this.ctx = canvas.getContext("2d");
      const m = pack.mouth;
      this.mouth = Object.assign({}, m);
      for (const k of ["cols_x", "seam_line", "jaw_line", "seam_rel", "jaw_rel", "u", "fl_open",
                       "fl_close", "fu_open", "fu_close", "corner_x", "corner_y"]) this.mouth[k] = f32(m[k]);
      this.mouth.img = new ImageData(m.box[2] - m.box[0], m.box[3] - m.box[1]);
      this.eyes = pack.eyes.map((e) => ({
        ...e, y_up: f32(e.y_up), travel: f32(e.travel), bump: f32(e.bump),
        img: new ImageData(e.box[2] - e.box[0], e.box[3] - e.box[1]),
      }));
    }

    motionFromList(values) {
      const m = {};
      this.fields.forEach((name, i) => { m[name] = values[i] || 0; });
      return m;
    }

    // cv2.remap INTER_LINEAR with a constant black border, one channel c of the photo
    sample(x, y, c) {
      const W = this.W, H = this.H, s = this.src;
      const x0 = Math.floor(x), y0 = Math.floor(y), fx = x - x0, fy = y - y0;
      const at = (xi, yi) => (xi < 0 || yi < 0 || xi >= W || yi >= H ? 0 : s[(yi * W + xi) * 4 + c]);
      return (at(x0, y0) * (1 - fx) + at(x0 + 1, y0) * fx) * (1 - fy)
        + (at(x0, y0 + 1) * (1 - fx) + at(x0 + 1, y0 + 1) * fx) * fy;
    }

    draw(motion) {
      this.drawMouth(clip(motion.mouth_open, 0, 1), clip(motion.mouth_width, -1, 1), clip(motion.smile || 0, -1, 1));
      for (const eye of this.eyes) this.drawEye(eye, clip(motion.blink, 0, 1), clip(motion.brow, -1, 1));
      const ctx = this.ctx;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.drawImage(this.work, 0, 0);  // under the head warp: no empty edges where it shifts
      const t = this.headMatrix(motion);
      if (t) {
        ctx.setTransform(t[0], t[3], t[1], t[4], t[2], t[5]);
        ctx.drawImage(this.work, 0, 0);
        ctx.setTransform(1, 0, 0, 1, 0, 0);
      }
    }

    // head.py: yaw/pitch shift the face in front of the neck, roll turns about it, breath lifts
    headMatrix(m) {
      const yaw = m.head_yaw, pitch = m.head_pitch, roll = m.head_roll, breath = m.breath;
      if (!yaw && !pitch && !roll && !breath) return null;
      const {pivot: [px, py], face_height: fh} = this.pack.head;
      const reach = 0.6 * fh, rad = Math.PI / 180;
      const tx = reach * Math.sin(yaw * rad), ty = reach * Math.sin(pitch * rad);
      const c = Math.cos(roll * rad), s = Math.sin(roll * rad);
      const a = [c, s, (1 - c) * px - s * py + tx, -s, c, s * px + (1 - c) * py + ty];
      const k = 1 + 0.004 * breath, H = this.H;
      const b = [a[0], a[1], a[2], k * a[3], k * a[4], k * a[5] + (1 - k) * H];
      // OpenCV maps pixel centres (integers); a canvas maps continuous coordinates (+0.5)
      b[2] += 0.5 - 0.5 * (b[0] + b[1]);
      b[5] += 0.5 - 0.5 * (b[3] + b[4]);
      return b;
    }

    drawMouth(o, w, e) {
      const m = this.mouth, [x0, y0, x1, y1] = m.box, bw = x1 - x0, bh = y1 - y0;
      const out = m.img.data, W = this.W, src = this.src;
      const dx = w * (w > 0 ? m.spread_px : m.round_px) + 0.5 * Math.max(e, 0) * m.spread_px;
      const lift = Math.max(w, 0) * m.smile_px + e * m.expression_px;
      const moved = dx !== 0 || lift !== 0;
      const fuAt = (i) => m.fu_close[i] * (1 - o) + m.fu_open[i] * o;
      const flAt = (i) => m.fl_close[i] * (1 - o) + m.fl_open[i] * o;
      // bilinear over the crop's own fields, edges replicated (cv2.BORDER_REPLICATE)
      const field = (fn, qx, qy) => {
        const x = clip(qx, 0, bw - 1), y = clip(qy, 0, bh - 1);
        const xa = Math.floor(x), ya = Math.floor(y), xb = Math.min(xa + 1, bw - 1), yb = Math.min(ya + 1, bh - 1);
        const fx = x - xa, fy = y - ya;
        return (fn(ya * bw + xa) * (1 - fx) + fn(ya * bw + xb) * fx) * (1 - fy)
          + (fn(yb * bw + xa) * (1 - fx) + fn(yb * bw + xb) * fx) * fy;
      };
      for (let j = 0; j < bh; j++) {
        for (let i = 0; i < bw; i++) {
          const p = j * bw + i;
          let qx = x0 + i, qy = y0 + j, fu, fl, seamRel, jawRel, u;
          if (moved) {
            qx -= dx * m.corner_x[p];
            qy += lift * m.corner_y[p];
            fu = field(fuAt, qx - x0, qy - y0);
            fl = field(flAt, qx - x0, qy - y0);
            seamRel = qy - interp(qx, m.cols_x, m.seam_line);
            jawRel = qy - interp(qx, m.cols_x, m.jaw_line);
            u = (qx - m.cx) / m.hw;
          } else {
            fu = fuAt(p); fl = flAt(p); seamRel = m.seam_rel[p]; jawRel = m.jaw_rel[p]; u = m.u[p];
          }
          const rl = seamRel - fl, ru = seamRel - fu, rj = jawRel - fl;
          const cLow = clip(rl + 0.5, 0, 1) * clip(0.5 - rj, 0, 1);
          const cNeck = clip(rj + 0.5, 0, 1);
          const rest = Math.max(1 - cLow - cNeck, 0);
          const cUp = Math.min(rest, clip(0.5 - ru, 0, 1));
          const cGap = rest - cUp;
          let col = null;
          if (cGap > 0) {
            const gap = Math.max(ru - rl, 1e-3), t = clip(ru / gap, 0, 1), wide = smoothstep(3, 12, gap);
            const tongue = smoothstep(0.45, 0.95, t) * wide;
            const lowerTeeth = smoothstep(1 - 2.5 / gap, 1 - 1 / gap, t) * wide
              * (1 - smoothstep(0.2, 0.6, Math.abs(u))) * m.lower_teeth_alpha;
            const shade = 1 - 0.55 * clip(u * u, 0, 1);
            col = [0, 1, 2].map((c) => {
              let v = m.throat[c] + (m.tongue[c] - m.throat[c]) * tongue;
              v += (m.teeth[c] - v) * lowerTeeth;
              return v * shade;
            });
          }
          const base = ((y0 + j) * W + (x0 + i)) * 4;
          for (let c = 0; c < 3; c++) {
            let v = cLow * this.sample(qx, qy - fl, c) + cNeck * src[base + c] + cUp * this.sample(qx, qy - fu, c);
            if (col) v += cGap * col[c];
            out[p * 4 + c] = Math.floor(clip(v + 0.5, 0, 255));
          }
          out[p * 4 + 3] = 255;
        }
      }
      this.wctx.putImageData(m.img, x0, y0);
    }

    drawEye(eye, b, br) {
      const [x0, y0, x1, y1] = eye.box, bw = x1 - x0, bh = y1 - y0, W = this.W, src = this.src;
      const out = eye.img.data;
      const shift = br * (br > 0 ? eye.raise_px : eye.lower_px);
      for (let j = 0; j < bh; j++) {
        const Y = y0 + j;
        for (let i = 0; i < bw; i++) {
          const p = j * bw + i, base = (Y * W + x0 + i) * 4;
          if (b === 0 && br === 0) {  // the photo as it is
            for (let c = 0; c < 4; c++) out[p * 4 + c] = src[base + c];
            continue;
          }
          const yUp = eye.y_up[i], travel = eye.travel[i], yTop = yUp - eye.reach;
          const lid = yUp + b * travel, span = eye.reach + b * travel;
          const s = clip((Y - yTop) / span, 0, 1);
          let sy = Y < yTop ? Y : yTop + eye.reach * Math.pow(s, 1 + eye.squeeze * b);
          sy += shift * eye.bump[p];
          const cover = clip(lid - Y + 0.5, 0, 1);
          for (let c = 0; c < 3; c++) {
            const v = cover * this.sample(x0 + i, sy, c) + (1 - cover) * src[base + c];
            out[p * 4 + c] = Math.floor(clip(v + 0.5, 0, 255));
          }
          out[p * 4 + 3] = 255;
        }
      }
      this.wctx.putImageData(eye.img, x0, y0);
    }
  }

  // Shows each received face when the audio sent with it is heard: packets are queued with their
  // arrival time and drawn once the receiver's current audio delay has passed.
  class FacePlayer {
    constructor(renderer, audioReceiver) {
      this.renderer = renderer;
      this.receiver = audioReceiver;
      this.queue = [];          // [{at, values}] oldest first, bounded
      this.delayMs = 60;        // until the first stats: a typical jitter-buffer delay
      this.drawn = 0;           // faces drawn (for tests and the page's counters)
      this.received = 0;
      this.running = true;
      this.lastStats = null;
      this.statsTimer = setInterval(() => this.updateDelay(), 1000);
      const tick = () => { if (!this.running) return; this.show(); requestAnimationFrame(tick); };
      requestAnimationFrame(tick);
    }

    // one packet of the "motion" channel (avatarchat/webrtc/motion_channel.py): uint32 k, uint8 flags, float32s
    onPacket(buffer) {
      const view = new DataView(buffer);
      const n = this.renderer.fields.length;
      if (buffer.byteLength !== 5 + 4 * n) return;
      const values = new Array(n);
      for (let i = 0; i < n; i++) values[i] = view.getFloat32(5 + 4 * i, true);
      this.queue.push({at: performance.now(), k: view.getUint32(0, true), values});
      if (this.queue.length > 250) this.queue.shift();  // 10 s at 25 fps: never unbounded
      this.received++;
    }

    show() {
      const due = performance.now() - this.delayMs;
      let face = null;
      while (this.queue.length && this.queue[0].at <= due) face = this.queue.shift();
      if (face) {
        this.renderer.draw(this.renderer.motionFromList(face.values));
        this.drawn++;
      }
    }

    async updateDelay() {
      if (!this.receiver) return;
      try {
        (await this.receiver.getStats()).forEach((r) => {
          if (r.type !== "inbound-rtp" || r.kind !== "audio" || !r.jitterBufferEmittedCount) return;
          const last = this.lastStats;
          this.lastStats = {delay: r.jitterBufferDelay, count: r.jitterBufferEmittedCount};
          if (last && r.jitterBufferEmittedCount > last.count) {
            const ms = 1000 * (r.jitterBufferDelay - last.delay) / (r.jitterBufferEmittedCount - last.count);
            this.delayMs = clip(ms, 0, 1000);
          }
        });
      } catch (_) { /* the connection is closing */ }
    }

    stop() {
      this.running = false;
      clearInterval(this.statsTimer);
    }
  }

  window.AvatarFace = {FaceRenderer, FacePlayer};
})();
