"""Silero VAD v6 on onnxruntime + numpy (no torch): speech probability per 32 ms chunk at 16 kHz.

The v6 ONNX model is recurrent: each call takes the chunk prefixed by the last 64 samples of the
previous call (the "context") plus a ``state`` tensor of shape (2, 1, 128), and returns the speech
probability and the next state. Each ``SileroStream`` keeps both for one session, so any number of
sessions share one ``InferenceSession`` (onnxruntime's ``run`` is thread-safe).

The hysteresis options (``threshold``, ``neg_threshold``, ``start_ms``, ``end_ms``, ``pre_roll_ms``)
are read by :class:`avatarchat.segmenter.SpeechSegmenter`, which turns probabilities into
utterances; the backend itself only scores chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from avatarchat.backends.base import model_path, package_dir
from avatarchat.backends.vad.base import VADBackend, VADStream
from avatarchat.config import Options

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 512
CONTEXT_SAMPLES = 64  # v6 at 16 kHz: each chunk is scored with the previous chunk's last 64 samples


def bundled_model_path() -> Path | None:
    """``silero_vad/data/silero_vad.onnx`` of the installed silero-vad wheel, found without importing
    the package (its ``__init__`` imports torch). None if the package is not installed."""
    pkg = package_dir("silero_vad")
    return None if pkg is None else pkg / "data" / "silero_vad.onnx"


class SileroStream(VADStream):
    """One session's recurrent state and context."""

    def __init__(self, session, sample_rate: int = SAMPLE_RATE):
        self._session = session
        self._sr = np.array(sample_rate, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, CONTEXT_SAMPLES), dtype=np.float32)

    def probability(self, chunk: np.ndarray) -> float:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(1, -1)
        if chunk.shape[1] != CHUNK_SAMPLES:
            raise ValueError(f"silero VAD needs chunks of exactly {CHUNK_SAMPLES} samples at "
                             f"{SAMPLE_RATE} Hz, got {chunk.shape[1]}")
        x = np.concatenate([self._context, chunk], axis=1)
        out, state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._state = state
        self._context = x[:, -CONTEXT_SAMPLES:]
        return float(out[0, 0])


class SileroVAD(VADBackend):
    """Silero VAD v6 (MIT), bundled in the ``silero-vad`` wheel."""

    class Options(Options):
        model_path: Path | None = Field(
            None, description="silero v6 ONNX file; None uses silero_vad/data/silero_vad.onnx from "
                              "the installed silero-vad wheel")
        threshold: float = Field(0.5, gt=0.0, lt=1.0,
                                 description="a chunk at or above this probability counts as speech")
        neg_threshold: float = Field(0.35, gt=0.0, lt=1.0,
                                     description="a chunk below this probability counts as silence "
                                                 "(between the two thresholds keeps the current state)")
        start_ms: float = Field(96.0, ge=0.0, description="speech must last this long to start an utterance")
        end_ms: float = Field(600.0, gt=0.0, description="silence this long ends the utterance")
        pre_roll_ms: float = Field(200.0, ge=0.0,
                                   description="audio kept from before the detected start of speech")

        @model_validator(mode="after")
        def _thresholds_ordered(self):
            if self.neg_threshold > self.threshold:
                raise ValueError(f"neg_threshold ({self.neg_threshold}) must not exceed "
                                 f"threshold ({self.threshold})")
            return self

    sample_rate = SAMPLE_RATE
    chunk_samples = CHUNK_SAMPLES

    def __init__(self, options):
        super().__init__(options)
        self._session = None

    def load(self) -> None:
        path = model_path(self.options.model_path, bundled_model_path(), "silero VAD ONNX model",
                          "the silero-vad package is not installed (pip install --no-deps silero-vad)")
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        if not {"input", "state", "sr"} <= names:
            raise ValueError(f"{path} is not a silero v5/v6 VAD model: its inputs are "
                             f"{sorted(names)}, expected input, state, sr")
        self._session = session

    def new_stream(self) -> SileroStream:
        if self._session is None:
            raise RuntimeError("SileroVAD.load() has not been called")
        return SileroStream(self._session, self.sample_rate)

    def close(self) -> None:
        self._session = None


BACKEND = SileroVAD
