"""Smart Turn v3.2 (pipecat-ai, BSD-2): a Whisper-encoder classifier that says whether a pause ends the turn.

The ONNX file ships in the ``pipecat-ai`` wheel (``pipecat/audio/turn/smart_turn/data/
smart-turn-v3.2-cpu.onnx``, 8.7 MB), installed with ``--no-deps`` and found without importing pipecat.
Its input is exactly what pipecat's ``LocalSmartTurnAnalyzerV3`` feeds it:

* 16 kHz mono float32, the **last 8 s** of the utterance so far (pause included), **zero-padded at
  the start** when shorter;
* Whisper log-mel features of those 128 000 samples: the waveform normalised to zero mean and unit
  variance first (``WhisperFeatureExtractor(do_normalize=True)``), then an STFT (periodic Hann window
  of 400, hop 160, centred with reflect padding), power spectrum, 80 Slaney mel bins, ``log10``
  floored at 1e-10, the last frame dropped, clamped to ``max - 8`` and scaled by ``(x + 4) / 4``:
  ``input_features`` of shape (1, 80, 800);
* output (named ``logits`` but already a sigmoid): the probability that the turn is complete.

:func:`log_mel` is a numpy implementation of those features (no transformers, no torch); it matches
pipecat's own vendored numpy copy of transformers' extractor to ~1e-6 (tests/integration/
test_smart_turn.py checks it against the copy inside the installed wheel).

``pause_ms`` and ``max_pause_ms`` are read by :class:`avatarchat.end_of_turn.EndOfTurn`: after
``pause_ms`` of silence it asks the model; at or above ``threshold`` the turn ends there, otherwise it
ends anyway after ``max_pause_ms`` of silence unless the user speaks again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from avatarchat.backends.base import model_path, package_dir
from avatarchat.backends.end_of_turn.base import TurnBackend
from avatarchat.config import Options

SAMPLE_RATE = 16000
WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE  # 128000
N_FFT, HOP, N_MELS = 400, 160, 80
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"


def bundled_model_path() -> Path | None:
    """The Smart Turn v3.2 ONNX inside the installed pipecat-ai wheel, found without importing
    pipecat (its ``__init__`` pulls the whole framework). None if pipecat-ai is not installed."""
    pkg = package_dir("pipecat")
    return None if pkg is None else pkg / "audio" / "turn" / "smart_turn" / "data" / MODEL_FILE


def _mel_filters(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters (librosa/Whisper), shape (n_mels, n_fft//2+1)."""
    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) * 27.0 / np.log(6.4),
                        3.0 * f / 200.0)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), 200.0 * m / 3.0)

    hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    fft_hz = np.linspace(0, sr // 2, n_fft // 2 + 1)
    slopes = hz[None, :] - fft_hz[:, None]
    down = -slopes[:, :-2] / np.diff(hz)[:-1]
    up = slopes[:, 2:] / np.diff(hz)[1:]
    weights = np.maximum(0.0, np.minimum(down, up)) * (2.0 / (hz[2:] - hz[:-2]))[None, :]
    return weights.T  # (n_mels, bins)


_MEL = _mel_filters()
_WINDOW = np.hanning(N_FFT + 1)[:-1]  # periodic Hann, as torch.hann_window


def fit_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s of ``audio``, zero-padded at the start to exactly 128 000 samples."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if len(x) >= WINDOW_SAMPLES:
        return x[-WINDOW_SAMPLES:]
    return np.concatenate([np.zeros(WINDOW_SAMPLES - len(x), np.float32), x])


def log_mel(window: np.ndarray) -> np.ndarray:
    """Whisper log-mel features (80, 800) float32 of an 8 s, 16 kHz window (see the module doc)."""
    x = np.asarray(window, dtype=np.float32)
    if x.shape != (WINDOW_SAMPLES,):
        raise ValueError(f"need {WINDOW_SAMPLES} samples, got {x.shape}")
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)  # do_normalize, in float32 like the reference
    padded = np.pad(x.astype(np.float64), (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # (801, 400)
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # (801, 201)
    mel = np.log10(np.maximum(_MEL @ power.T, 1e-10))[:, :-1]  # (80, 800)
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


class SmartTurn(TurnBackend):
    """Smart Turn v3.2 end-of-turn model (pipecat-ai, BSD-2), ONNX on onnxruntime."""

    class Options(Options):
        model_path: Path | None = Field(
            None, description="Smart Turn v3 ONNX file; None uses pipecat/audio/turn/smart_turn/data/"
                              "smart-turn-v3.2-cpu.onnx from the installed pipecat-ai wheel")
        threshold: float = Field(0.5, gt=0.0, lt=1.0,
                                 description="a pause ends the turn when the model's completion "
                                             "probability is at or above this")
        pause_ms: float = Field(200.0, gt=0.0,
                                description="silence after which the model is asked whether the turn is over")
        max_pause_ms: float = Field(1600.0, gt=0.0,
                                    description="silence that ends the turn whatever the model said "
                                                "(a thinking pause longer than this ends it)")
        threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads per call")

        @model_validator(mode="after")
        def _pauses_ordered(self):
            if self.max_pause_ms < self.pause_ms:
                raise ValueError(f"max_pause_ms ({self.max_pause_ms}) must not be below "
                                 f"pause_ms ({self.pause_ms})")
            return self

    sample_rate = SAMPLE_RATE

    def __init__(self, options):
        super().__init__(options)
        self._session = None

    def load(self) -> None:
        path = model_path(self.options.model_path, bundled_model_path(), "Smart Turn v3 ONNX model",
                          "the pipecat-ai package is not installed (pip install --no-deps pipecat-ai==1.14.0)")
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.options.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inputs = {i.name: i.shape for i in session.get_inputs()}
        if "input_features" not in inputs or list(inputs["input_features"])[1:] != [N_MELS, 800]:
            raise ValueError(f"{path} is not a Smart Turn v3 model: its inputs are {inputs}, expected "
                             f"input_features of shape (batch, {N_MELS}, 800)")
        self._session = session

    def completion(self, audio: np.ndarray) -> float:
        if self._session is None:
            raise RuntimeError("SmartTurn.load() has not been called")
        features = log_mel(fit_window(audio))[None]
        out = self._session.run(None, {"input_features": features})[0]
        return float(np.clip(out.reshape(-1)[0], 0.0, 1.0))

    def close(self) -> None:
        self._session = None


BACKEND = SmartTurn
