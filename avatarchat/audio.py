"""Audio helpers: WAV in and out, sample-rate conversion, level measurement. numpy only."""

from __future__ import annotations

import io
import struct
import wave
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import av
import numpy as np

from avatarchat.errors import BadInput
from avatarchat.messages import AudioChunk


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """PCM WAV bytes -> (mono float32 samples, sample rate). Raises BadInput with the reason, and
    nothing else, whatever the bytes (they come from users: a cut upload, a non-WAV file)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except EOFError:  # wave says nothing more: the bytes end inside a chunk header or the fmt chunk
        raise BadInput("not a readable PCM WAV file: it ends inside its header (cut short?)") from None
    except (wave.Error, struct.error, ValueError, RuntimeError, OSError) as err:
        reason = str(err) or type(err).__name__
        raise BadInput(f"not a readable PCM WAV file ({reason}); send 16-bit PCM WAV") from None
    if width not in (1, 2, 4):
        raise BadInput(f"unsupported WAV sample width {width * 8} bits; use 16-bit PCM")
    if rate < 8000 or rate > 192000:
        raise BadInput(f"unsupported WAV sample rate {rate} Hz")
    if not frames:
        raise BadInput(f"the WAV holds no audio: its data chunk is empty or shorter than one frame "
                       f"({channels} channel(s) of {width * 8} bits)")
    # A header that claims more frames than the file holds is read as far as it goes (a cut
    # upload is still speech), but a cut inside a sample cannot be read as numbers.
    if len(frames) % width:
        raise BadInput(f"the WAV's audio data ends mid-sample: {len(frames)} bytes is not a whole "
                       f"number of {width}-byte samples (the file was cut short?)")
    dtype = {1: np.uint8, 2: "<i2", 4: "<i4"}[width]
    pcm = np.frombuffer(frames, dtype=dtype)
    if width == 1:
        samples = (pcm.astype(np.float32) - 128.0) / 128.0
    else:
        samples = pcm.astype(np.float32) / float(2 ** (8 * width - 1))
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    return samples.astype(np.float32), rate


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    return decode_wav(Path(path).read_bytes())


def encode_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono float32 samples -> 16-bit PCM WAV bytes."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(to_pcm16(samples).tobytes())
    return buf.getvalue()


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")


def from_pcm16(pcm: bytes | np.ndarray) -> np.ndarray:
    arr = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, (bytes, bytearray, memoryview)) else pcm
    return arr.astype(np.float32) / 32768.0


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling by windowed-sinc interpolation (good enough for speech, no scipy)."""
    if src_rate == dst_rate or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    from math import gcd

    g = gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    # Polyphase FIR: upsample by `up`, low-pass at the lower Nyquist, keep every `down`-th sample.
    taps_per_phase = 16
    cutoff = 1.0 / max(up, down)
    n = np.arange(-taps_per_phase * up, taps_per_phase * up + 1)
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(len(n), 8.0) * up
    out_len = int(np.ceil(len(samples) * up / down))
    # positions in the upsampled signal that we keep
    pos = np.arange(out_len) * down
    out = np.zeros(out_len, dtype=np.float64)
    half = taps_per_phase * up
    x = samples.astype(np.float64)
    for k in range(-taps_per_phase, taps_per_phase + 1):
        # input sample index contributing through tap (pos - (idx*up)) in [-half, half]
        idx = pos // up + k
        tap = pos - idx * up + half
        valid = (idx >= 0) & (idx < len(x)) & (tap >= 0) & (tap < len(h))
        out[valid] += x[idx[valid]] * h[tap[valid]]
    return out.astype(np.float32)


def rms_db(samples: np.ndarray) -> float:
    """Level in dBFS (-inf for digital silence)."""
    if len(samples) == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


class StreamResampler:
    """Streaming resampler to mono float32 at ``dst_rate`` (libswresample keeps state across chunks:
    no seams). ``feed`` takes float32 samples at ``src_rate``; ``feed_frame`` takes any decoded
    audio frame (format, layout and rate read from the frame)."""

    def __init__(self, dst_rate: int, src_rate: int | None = None):
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self._r = av.AudioResampler(format="flt", layout="mono", rate=dst_rate)
        self._pts = 0

    def feed(self, samples: np.ndarray) -> np.ndarray:
        if self.src_rate == self.dst_rate:
            return samples.astype(np.float32, copy=False)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32).reshape(1, -1),
                                           format="flt", layout="mono")
        frame.sample_rate = self.src_rate
        frame.pts = self._pts
        self._pts += len(samples)
        return self._collect(self._r.resample(frame))

    def feed_frame(self, frame: av.AudioFrame) -> np.ndarray:
        return self._collect(self._r.resample(frame))

    def flush(self) -> np.ndarray:
        if self.src_rate == self.dst_rate:
            return np.zeros(0, np.float32)
        return self._collect(self._r.resample(None))

    @staticmethod
    def _collect(frames) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1) for f in frames]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def trim_lead_silence(samples: np.ndarray, sample_rate: int, keep_s: float,
                      threshold: float = 0.003, window_s: float = 0.01) -> np.ndarray:
    """``samples`` with the silence before the first sounding window (RMS above ``threshold``) cut
    down to at most ``keep_s``. All silence: unchanged."""
    n = max(1, int(sample_rate * window_s))
    full = len(samples) // n
    if full == 0:
        return samples
    rms = np.sqrt(np.mean(np.square(samples[:full * n].reshape(full, n), dtype=np.float64), axis=1))
    loud = np.flatnonzero(rms > threshold)
    if not len(loud):
        return samples
    return samples[max(0, loud[0] * n - int(keep_s * sample_rate)):]


async def coalesce(pieces: AsyncIterator[np.ndarray], min_samples: int) -> AsyncIterator[np.ndarray]:
    """``pieces`` of float32 audio joined into chunks of at least ``min_samples`` (0: each non-empty
    piece as it comes); the last chunk holds what is left, however short. Empty pieces vanish."""
    held: list[np.ndarray] = []
    count = 0
    async with aclosing(pieces):
        async for piece in pieces:
            if len(piece):
                held.append(piece)
                count += len(piece)
            if count >= max(min_samples, 1):
                yield np.concatenate(held)
                held, count = [], 0
    if held:
        yield np.concatenate(held)


async def timed_chunks(pieces: AsyncIterator[np.ndarray], sample_rate: int) -> AsyncIterator[AudioChunk]:
    """Consecutive ``pieces`` of one stream as AudioChunks, each stamped with its start in it."""
    start = 0.0
    async with aclosing(pieces):
        async for samples in pieces:
            chunk = AudioChunk(samples, sample_rate, start)
            start = chunk.end
            yield chunk
