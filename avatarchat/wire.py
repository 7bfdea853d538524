"""JSON encoding of turn events for HTTP (NDJSON lines) and data channels.

Audio travels as base64 16-bit PCM; frames as lists of FaceMotion numbers (see FaceMotion.as_list),
or, from an avatar that draws its own frames, as base64 JPEGs with their width and height.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from avatarchat.audio import from_pcm16, to_pcm16
from avatarchat.events import ReplyDone, StateChanged, TurnFailed
from avatarchat.messages import (AudioChunk, AvatarChunk, FaceMotion, TextDelta, Transcript,
                                 TurnTimings, VideoFrame)

FACE_MOTION_FIELDS = list(FaceMotion.__dataclass_fields__)


def encode(event: Any) -> dict:
    if isinstance(event, Transcript):
        return {"type": "transcript", "role": "user", "text": event.text, "final": event.final,
                "language": event.language, "emotion": event.emotion, "event": event.event}
    if isinstance(event, TextDelta):
        return {"type": "transcript", "role": "avatar", "text": event.text, "final": False}
    if isinstance(event, ReplyDone):
        return {"type": "transcript", "role": "avatar", "text": event.text, "final": True,
                "audio_s": round(event.audio_s, 3)}
    if isinstance(event, StateChanged):
        return {"type": "state", "state": event.state}
    if isinstance(event, TurnTimings):
        return {"type": "timings", **{k: (round(v, 4) if isinstance(v, float) else v)
                                      for k, v in event.as_dict().items()}}
    if isinstance(event, TurnFailed):
        out = {"type": "error", "stage": event.stage, "reason": event.reason}
        return out if event.code is None else {**out, "code": event.code}
    if isinstance(event, AvatarChunk):
        return {"type": "media", "sentence": event.sentence, "text": event.text,
                "sample_rate": event.audio.sample_rate, "start": event.audio.start,
                "pcm16": base64.b64encode(to_pcm16(event.audio.samples).tobytes()).decode("ascii"),
                "fps": event.fps, "first_frame": event.first_frame, **_frames(event.frames)}
    raise TypeError(f"no wire encoding for {type(event).__name__}")


def _frames(frames) -> dict:
    """FaceMotion numbers ("frames"), or a frame-drawing avatar's JPEGs ("jpeg", base64)."""
    if frames and isinstance(frames[0], VideoFrame):
        return {"width": frames[0].width, "height": frames[0].height,
                "jpeg": [base64.b64encode(f.jpeg).decode("ascii") for f in frames]}
    return {"frames": [[round(v, 4) for v in f.as_list()] for f in frames]}


def decode_media(obj: dict) -> AvatarChunk:
    samples = from_pcm16(base64.b64decode(obj["pcm16"]))
    audio = AudioChunk(np.asarray(samples, np.float32), int(obj["sample_rate"]), float(obj["start"]))
    if "jpeg" in obj:  # drawn by the avatar (musetalk, liteavatar)
        w, h = int(obj["width"]), int(obj["height"])
        frames = tuple(VideoFrame(base64.b64decode(f), w, h) for f in obj["jpeg"])
    else:
        frames = tuple(FaceMotion.from_list(f) for f in obj["frames"])
    return AvatarChunk(audio=audio, frames=frames, first_frame=int(obj["first_frame"]),
                       fps=int(obj["fps"]), text=obj.get("text", ""), sentence=int(obj.get("sentence", 0)))
