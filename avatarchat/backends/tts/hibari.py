"""hibari-tts: 7.9 MB English TTS at 24 kHz, bundled voice "heart" only (no run-time downloads).

Kokoro-derived, with its own G2P (no espeak); ~20 ms to first audio, ~100x real time on one core.

Only the voice bundled inside the wheel ("heart") is allowed: hibari downloads every other voice
from Hugging Face on first use, which cannot work on machines that reach only package registries
and would stall a live conversation anywhere. ``synthesize`` yields one chunk per sentence
(``Hibari.stream``), produced in a worker thread that stops between sentences when the consumer
goes away.
"""

from __future__ import annotations

import json
import threading
from contextlib import aclosing
from collections.abc import AsyncIterator, Iterator
from functools import cache
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from avatarchat.audio import timed_chunks, trim_lead_silence
from avatarchat.backends.base import package_dir, require_file
from avatarchat.backends.tts.base import TTSBackend
from avatarchat.config import Options
from avatarchat.messages import AudioChunk
from avatarchat.threads import stream_in_thread

BUNDLED_FALLBACK = ("heart",)
_LONGEST_SENTENCE = ("Well, that is a very good question, and I would love to tell you all about it, "
                     "because the history of the place is long and full of surprising turns, with "
                     "kings and queens and many strange travellers who came from very far away.")


def _assets_dir() -> Path | None:
    pkg = package_dir("hibari")
    return None if pkg is None else pkg / "assets"


@cache
def bundled_voices() -> tuple[str, ...]:
    """Voices whose model ships inside the installed hibari wheel (read from its voices.json)."""
    assets = _assets_dir()
    try:
        voices = json.loads((assets / "voices.json").read_text(encoding="utf-8"))
    except (TypeError, OSError, ValueError):
        return BUNDLED_FALLBACK
    return tuple(name for name, v in voices.items() if v.get("bundled")) or BUNDLED_FALLBACK


class HibariTTS(TTSBackend):
    """hibari-tts (Apache-2.0), voice "heart" (American English, female)."""

    class Options(Options):
        voice: str = Field("heart", description="a voice bundled in the hibari wheel (\"heart\"); "
                                                "other hibari voices download at run time and are refused")
        speed: float = Field(1.0, ge=0.5, le=2.0, description="speaking rate (1.0 = natural)")
        threads: int = Field(1, ge=1, le=16, description="onnxruntime intra-op threads")
        seed: int | None = Field(None, ge=0, description="fix the noise component so the same text "
                                                         "gives identical audio; None varies it")
        # hibari starts every sentence with ~260-330 ms of silence: before the first sentence it is
        # pure latency. The ~450 ms after each sentence stays: it is the pause between sentences,
        # and the barge-in hold is tuned against it.
        lead_silence_ms: float | None = Field(
            40.0, ge=0, le=2000, description="silence kept before each sentence's speech (hibari's "
            "own is ~300 ms); null keeps it all")

        @field_validator("voice")
        @classmethod
        def _bundled_only(cls, v: str) -> str:
            allowed = bundled_voices()
            if v not in allowed:
                raise ValueError(f"voice {v!r} is not bundled in the hibari-tts wheel (hibari would "
                                 f"download it at run time); allowed: {', '.join(allowed)}")
            return v

    sample_rate = 24000

    def __init__(self, options):
        super().__init__(options)
        self._tts = None

    def load(self) -> None:
        assets = _assets_dir()
        if assets is None:
            raise ModuleNotFoundError("hibari-tts is not installed (pip install hibari-tts)")
        from hibari import Hibari
        from hibari.voices import VOICES, voice_path

        voice = self.options.voice
        if voice not in VOICES or not VOICES[voice].get("bundled"):
            raise ValueError(f"hibari voice {voice!r} is not bundled in the installed wheel; "
                             f"allowed: {', '.join(bundled_voices())}")
        model = require_file(voice_path(voice, download_missing=False), f"hibari voice model {voice!r}")
        tts = Hibari(voice=voice, model=str(model), threads=self.options.threads)
        self.sample_rate = int(tts.sample_rate)
        # Loads the G2P and warms onnxruntime on about the longest sentence a reply may send
        # (SentenceChunker's max_chars): its buffers grow to their largest at start-up, not over
        # the first sessions (the soak's baseline).
        tts(_LONGEST_SENTENCE, speed=self.options.speed, seed=0)
        self._tts = tts

    def close(self) -> None:
        self._tts = None

    def _sentences(self, text: str, stop: threading.Event) -> Iterator[np.ndarray]:
        tts, o = self._tts, self.options
        # Hibari.stream does G2P + synthesis lazily, one sentence per step: stop checks between them.
        for wav in tts.stream(text, speed=o.speed, seed=o.seed):
            if stop.is_set():
                return
            if len(wav):
                wav = np.asarray(wav, dtype=np.float32)
                if o.lead_silence_ms is not None:
                    wav = trim_lead_silence(wav, self.sample_rate, o.lead_silence_ms / 1000)
                yield wav

    async def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]:
        if self._tts is None:
            raise RuntimeError("HibariTTS.load() has not been called")
        if not text.strip():
            return
        wavs = stream_in_thread(lambda stop: self._sentences(text, stop), maxsize=2)
        async with aclosing(timed_chunks(wavs, self.sample_rate)) as chunks:
            async for chunk in chunks:
                yield chunk


BACKEND = HibariTTS
