"""Video files: writing a reply as a playable MP4 (H.264 video and AAC audio, PyAV), and reading a
video's frames (an avatar's base or background video, OpenCV)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_AAC_FRAME = 1024  # samples per AAC frame


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: int,
              audio: np.ndarray, sample_rate: int) -> Path:
    """Encode RGB uint8 frames (all the same size) and mono float32 audio into ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("no video frames to write")
    h, w = first.shape[:2]
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        video.options = {"crf": "20", "preset": "veryfast"}
        sound = container.add_stream("aac", rate=sample_rate, layout="mono")

        def put_video(i: int, rgb: np.ndarray) -> None:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: video.height, : video.width]),
                                               format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))

        put_video(0, first)
        for i, rgb in enumerate(frames, start=1):
            put_video(i, rgb)
        container.mux(video.encode(None))

        pcm = np.asarray(audio, np.float32)
        for start in range(0, len(pcm), _AAC_FRAME):
            block = np.zeros(_AAC_FRAME, np.float32)
            part = pcm[start:start + _AAC_FRAME]
            block[: len(part)] = part
            frame = av.AudioFrame.from_ndarray(block[np.newaxis, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
    return path


def probe(path: str | Path) -> dict:
    """Streams and durations of a media file (used by tests and the README check)."""
    with av.open(str(path)) as c:
        out = {"duration_s": (c.duration or 0) / 1e6, "streams": []}
        for s in c.streams:
            out["streams"].append({"type": s.type, "codec": s.codec_context.name,
                                   "frames": s.frames, "rate": getattr(s, "rate", None)})
        return out


def read_video(path: Path, max_frames: int | None = None) -> tuple[list[np.ndarray], float]:
    """The video's frames (RGB uint8) and frame rate."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open the video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    try:
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"no frames could be read from {path}")
    return frames, float(fps)
