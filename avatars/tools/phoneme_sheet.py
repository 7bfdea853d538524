"""Draw the mouth on a few spoken sounds, side by side: what the speech-driven mouth really does.

    python avatars/tools/phoneme_sheet.py [PACK] [OUT.png]

Defaults: the astronaut pack, ``docs/images/portrait_phonemes.png``. Each row is one word spoken
by the default TTS (hibari, voice "heart"); the mouth values come from that audio through the same
``SpeechMouth`` the avatar stage uses (no hand-set values), and the tiles are the mouth region of
frames rendered at evenly spaced moments of the spoken part, enlarged 2x, each labelled with its
time and mouth values. The last column is the word's level envelope with the opening drawn over it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import cv2
import numpy as np
from contact_sheet import write_sheet  # beside this file (run as a script)

from avatarchat.avatar.motion import SpeechMouth
from avatarchat.avatar.pack import AvatarPack
from avatarchat.avatar.renderer import PortraitRenderer
from avatarchat.backends.base import create_backend
from avatarchat.config import parse_stage
from avatarchat.messages import AudioChunk, FaceMotion

# (label, text): open vowels, spread, rounded, and lip closures between vowels
WORDS = [("ah: 'Father.'", "Father."), ("ee: 'See me.'", "See me."), ("oo: 'Who knew?'", "Who knew?"),
         ("m/b closures: 'Mama, baby.'", "Mama, baby.")]
TILES = 6
FPS = 25


async def _speak(tts, text: str) -> AudioChunk:
    chunks = [c async for c in tts.synthesize(text)]
    samples = np.concatenate([c.samples for c in chunks])
    return AudioChunk(samples, chunks[0].sample_rate, 0.0)


def _envelope_tile(track, height: int, width: int) -> np.ndarray:
    """The opening over the whole word, with the sampled moments marked."""
    tile = np.full((height, width, 3), 255, np.uint8)
    n = len(track.open)
    xs = (np.arange(n) / max(1, n - 1) * (width - 12) + 6).astype(int)
    ys = (height - 8 - np.asarray(track.open) * (height - 36)).astype(int)
    cv2.polylines(tile, [np.stack([xs, ys], 1).reshape(-1, 1, 2)], False, (200, 40, 40), 2, cv2.LINE_AA)
    cv2.putText(tile, "mouth_open over the word", (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    return tile


def main(argv: list[str]) -> int:
    pack = AvatarPack.load(argv[0] if argv else "astronaut")
    out = Path(argv[1]) if len(argv) > 1 else Path("docs/images/portrait_phonemes.png")
    renderer = PortraitRenderer(pack)
    mouth = SpeechMouth(FPS)
    tts = create_backend(parse_stage("phoneme_sheet", "tts", {"backend": "hibari", "seed": 0}))
    x0, y0, x1, y1 = pack.regions["mouth_box"]
    pad_x, pad_y = int(0.35 * (x1 - x0)), int(0.6 * (y1 - y0))
    x0, y0 = max(0, x0 - pad_x), max(0, y0 - pad_y)
    x1, y1 = min(pack.size[0], x1 + pad_x), min(pack.size[1], y1 + pad_y)
    rows = []
    for label, text in WORDS:
        audio = asyncio.run(_speak(tts, text))
        track = mouth.track(audio)
        spoken = np.flatnonzero(np.asarray(track.open) > 0.02)
        picks = np.linspace(spoken[0], spoken[-1], TILES).round().astype(int) if len(spoken) else \
            np.zeros(TILES, int)
        tiles = []
        for i in picks:
            m = FaceMotion(mouth_open=float(track.open[i]), mouth_width=float(track.width[i]))
            crop = renderer.render(m)[y0:y1, x0:x1]
            tile = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
            tile = cv2.copyMakeBorder(tile, 26, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))
            t = (track.first_frame + i) / FPS
            cv2.putText(tile, f"{t:.2f}s open {m.mouth_open:.2f} w {m.mouth_width:+.2f}", (4, 18),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(tile)
        h, w = tiles[0].shape[:2]
        tiles.append(_envelope_tile(track, h, w))
        head = np.full((24, w * len(tiles), 3), 255, np.uint8)
        cv2.putText(head, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.vstack([head, np.hstack(tiles)]))
        print(f"{label}: {len(track)} frames, peak open {np.max(track.open):.2f}, width "
              f"{np.min(track.width):+.2f}..{np.max(track.width):+.2f}")
    write_sheet(np.vstack(rows), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
