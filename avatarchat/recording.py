"""Optional recording of user utterances and transcripts. Off unless ``record_dir`` is configured:
by default nothing a user says is written to disk."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from avatarchat.audio import encode_wav
from avatarchat.messages import AudioChunk


class Recorder:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def save(self, audio: AudioChunk | None, user_text: str, reply_text: str) -> Path:
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        if audio is not None:
            (self.directory / f"{stem}.wav").write_bytes(encode_wav(audio.samples, audio.sample_rate))
        (self.directory / f"{stem}.json").write_text(json.dumps({"user": user_text, "reply": reply_text}))
        return self.directory / stem
