"""LiteAvatar (HumanAIGC): a 2D avatar whose mouth is drawn by small networks from the speech.

The pipeline is LiteAvatar's (github.com/HumanAIGC/lite-avatar, ``lite_avatar.py``,
``audio2mouth_cpu.py``, ``extract_paraformer_feature.py``), written anew for a streaming server:

1. speech features: 16 kHz audio -> Kaldi fbank (80 mels, 25/10 ms, Hamming) -> LFR (7 frames
   stacked every 6) -> CMVN (``am.mvn``) -> Paraformer-large's SAN-M encoder; the output of each
   of its 50 blocks (before the final norm) is stretched to 30 frames a second: (T, 50, 512).
2. audio to mouth: an ONNX model maps one second of features (30 frames) to 32 mouth parameters
   per frame; one-second windows every 0.4 s are blended where they overlap, low-passed (10 Hz),
   and eased to the avatar's neutral pose where the speech is silent for half a second.
3. the face: the avatar's TorchScript encoder encodes each background frame's reference image
   once at load; its decoder draws the mouth region from (that code, 32 parameters), which is
   pasted into the background video frame at the face box with a feathered edge.

Frame ``k`` of a reply is shown at ``k / fps`` on the reply's timeline and drawn on background frame
``k % n`` (``n`` background frames), so consecutive sentences continue the video and the idle loop
(``idle_frames``: the same frames with the neutral mouth) lines up with it. LiteAvatar's parameters
come at 30 frames a second; a frame at another rate takes them interpolated at its own time.

Model work runs on a small pool of worker threads, one piece (a sentence's parameters, or one
chunk's frames) at a time per stream, so sessions interleave chunk by chunk; a stream closed or
cancelled (an interruption) stops after the piece in flight, and a piece still queued never runs.

Files: ``avatar-chat models fetch liteavatar`` gives ``<models dir>/liteavatar/`` with
``lite_avatar_weights/model_1.onnx`` and ``model.pb`` (LiteAvatarGallery), ``am.mvn`` and
``config.yaml`` (iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-pytorch) and the
sample avatar ``20250408/sample_data/`` (``net_encode.pt``, ``net_decode.pt``, ``neutral_pose.npy``,
``bg_video.mp4``, ``face_box.txt``, ``ref_frames/ref_00000.jpg`` ...).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import Field

from avatarchat.audio import resample
from avatarchat.avatar.motion import chunk_spans, frame_range
from avatarchat.backends.avatar.base import AvatarBackend
from avatarchat.backends.base import torch_device
from avatarchat.config import Options
from avatarchat.media_file import read_video
from avatarchat.messages import AnimateRequest, AudioChunk, AvatarChunk, VideoFrame
from avatarchat.models import resolve

log = logging.getLogger(__name__)

MODEL_NAME = "liteavatar"
GALLERY = "HumanAIGC-Engineering/LiteAvatarGallery"
A2M_ONNX = "lite_avatar_weights/model_1.onnx"
PARAFORMER_WEIGHTS = "lite_avatar_weights/model.pb"
REQUIRED = (A2M_ONNX, PARAFORMER_WEIGHTS, "am.mvn", "config.yaml")
AVATAR_FILES = ("net_encode.pt", "net_decode.pt", "neutral_pose.npy", "bg_video.mp4",
                "face_box.txt", "ref_frames/ref_00000.jpg")

SAMPLE_RATE = 16000       # what the speech features are computed at
PARAM_FPS = 30            # LiteAvatar's mouth parameters come at this rate
WINDOW = 30               # frames the audio-to-mouth model takes and gives (one second)
HOP = 12                  # a window every 0.4 s ...
EDGE = 6                  # ... whose first and last 6 frames are blended with the neighbours'
N_PARAMS = 32
REF_SIZE = 384            # the face encoder's input is a 384x384 RGB image in [-1, 1]
SILENCE_DB = -50.0        # quieter than this (dBFS) for SILENCE_FRAMES frames: a neutral mouth
SILENCE_FRAMES = 15       # half a second
SILENCE_KERNEL = np.array([0.1, 0.2, 0.4, 0.2, 0.1])  # eases the mouth in and out of silence
FEATHER_PX = 10           # the face box's edge blends into the background over about this

T = TypeVar("T")


class MissingAvatar(FileNotFoundError):
    """The avatar directory, or a file in it, is missing. The message says how to get it."""

    def __init__(self, path: Path, missing: str, name: str | None, model_dir: Path):
        if name == LiteAvatar.Options.model_fields["avatar"].default:
            how = "fetch it with `avatar-chat models fetch liteavatar`"
        elif name is not None:
            how = (f"fetch it with `modelscope download --model {GALLERY} {name}.zip --local_dir "
                   f"{model_dir}` and unzip it there")
        else:
            how = "point the avatar option at an unpacked LiteAvatarGallery avatar"
        super().__init__(f"LiteAvatar avatar: {missing} not found in {path}; {how}")


# ---------------------------------------------------------------------------------------------
# 1. Speech features: Paraformer-large's encoder, every block's output


def read_cmvn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) of a Kaldi nnet ``am.mvn``: features are normalised as (x + shift) * scale."""
    text = path.read_text(encoding="utf-8")

    def vector(tag: str) -> np.ndarray:
        found = re.search(tag + r"[^\[]*\[([^\]]*)\]", text)
        if found is None:
            raise ValueError(f"{path} has no {tag} vector")
        return np.array(found.group(1).split(), dtype=np.float32)

    return vector("<AddShift>"), vector("<Rescale>")


def lfr(feats, m: int, n: int):
    """Low frame rate: every ``n``-th frame, ``m`` frames stacked, the first frame repeated
    (m - 1) // 2 times before the start and the last one after the end as needed (funasr's
    ``apply_lfr``)."""
    import torch

    t = feats.shape[0]
    out_len = math.ceil(t / n)
    left = (m - 1) // 2
    right = max(0, (out_len - 1) * n + m - (t + left))
    padded = torch.cat([feats[:1].expand(left, -1), feats, feats[-1:].expand(right, -1)])
    return padded.unfold(0, m, n)[:out_len].transpose(1, 2).reshape(out_len, -1)


def encoder_module(conf: dict):
    """A SAN-M encoder (Paraformer's: self-attention plus an FSMN memory of the values) with the
    parameter names of funasr's ``SANMEncoder``, so Paraformer's checkpoint loads into it as is."""
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, heads: int, d_in: int, d: int, kernel: int, shift: int):
            super().__init__()
            self.heads, self.d_k = heads, d // heads
            self.linear_q_k_v = nn.Linear(d_in, 3 * d)
            self.linear_out = nn.Linear(d, d)
            self.fsmn_block = nn.Conv1d(d, d, kernel, groups=d, bias=False)
            left = (kernel - 1) // 2 + shift
            self.pad = (left, kernel - 1 - left)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.linear_q_k_v(x).chunk(3, dim=-1)
            memory = self.fsmn_block(nn.functional.pad(v.transpose(1, 2), self.pad)).transpose(1, 2) + v
            q, k, vh = (z.view(b, t, self.heads, self.d_k).transpose(1, 2) for z in (q, k, v))
            att = torch.softmax(q @ k.transpose(-2, -1) * self.d_k ** -0.5, dim=-1) @ vh
            return self.linear_out(att.transpose(1, 2).reshape(b, t, -1)) + memory

    class FeedForward(nn.Module):
        def __init__(self, d: int, hidden: int):
            super().__init__()
            self.w_1, self.w_2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

        def forward(self, x):
            return self.w_2(torch.relu(self.w_1(x)))

    class Block(nn.Module):
        def __init__(self, d_in: int, d: int):
            super().__init__()
            self.self_attn = Attention(conf["attention_heads"], d_in, d, conf["kernel_size"],
                                       conf["sanm_shfit"])
            self.feed_forward = FeedForward(d, conf["linear_units"])
            self.norm1, self.norm2 = nn.LayerNorm(d_in, eps=1e-12), nn.LayerNorm(d, eps=1e-12)
            self.residual = d_in == d  # the first block changes the width: no residual there

        def forward(self, x):
            y = self.self_attn(self.norm1(x))
            x = x + y if self.residual else y
            return x + self.feed_forward(self.norm2(x))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            d, d_in = conf["output_size"], conf["input_size"]
            self.scale = d ** 0.5
            self.encoders0 = nn.ModuleList([Block(d_in, d)])
            self.encoders = nn.ModuleList([Block(d, d) for _ in range(conf["num_blocks"] - 1)])
            self.after_norm = nn.LayerNorm(d, eps=1e-12)  # in the checkpoint; unused here

        def forward(self, feats):
            """(1, T, input_size) -> (T, num_blocks, output_size): every block's output."""
            x = feats * self.scale
            x = x + _positions(x.shape[1], x.shape[2], x.dtype, x.device)
            outs = []
            for block in [*self.encoders0, *self.encoders]:
                x = block(x)
                outs.append(x[0])
            return torch.stack(outs, dim=1)

    def _positions(t: int, depth: int, dtype, device):
        # funasr's SinusoidalPositionEncoder: positions from 1, sines then cosines
        pos = torch.arange(1, t + 1, dtype=dtype, device=device)[:, None]
        inc = math.log(10000.0) / (depth / 2 - 1)
        inv = torch.exp(torch.arange(depth // 2, dtype=dtype, device=device) * -inc)
        return torch.cat([torch.sin(pos * inv), torch.cos(pos * inv)], dim=1)[None]

    return Encoder()


class SpeechFeatures:
    """Paraformer-large's per-block encoder outputs at 30 frames a second (LiteAvatar's
    ``extract_para_feature``)."""

    def __init__(self, model_dir: Path, device: str):
        import torch
        import yaml

        config = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
        enc, front = config.get("encoder_conf", {}), config.get("frontend_conf", {})
        self.n_mels, self.lfr_m, self.lfr_n = (front.get("n_mels", 80), front.get("lfr_m", 7),
                                               front.get("lfr_n", 6))
        self.frame_length, self.frame_shift = front.get("frame_length", 25), front.get("frame_shift", 10)
        self.window = front.get("window", "hamming")
        conf = {"input_size": self.n_mels * self.lfr_m, "output_size": enc.get("output_size", 512),
                "attention_heads": enc.get("attention_heads", 4),
                "linear_units": enc.get("linear_units", 2048), "num_blocks": enc.get("num_blocks", 50),
                "kernel_size": enc.get("kernel_size", 11), "sanm_shfit": enc.get("sanm_shfit", 0)}
        self.layers, self.width = conf["num_blocks"], conf["output_size"]
        shift, scale = read_cmvn(model_dir / "am.mvn")
        self.device = device
        self.shift = torch.from_numpy(shift).to(device)
        self.scale = torch.from_numpy(scale).to(device)
        state = torch.load(model_dir / PARAFORMER_WEIGHTS, map_location="cpu", weights_only=True)
        encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        self.encoder = encoder_module(conf)
        self.encoder.load_state_dict(encoder_state, strict=True)  # a mismatch is an error, not noise
        self.encoder.eval().to(device)

    def __call__(self, samples: np.ndarray, frames: int) -> np.ndarray:
        """(frames, layers, width) float32 for 16 kHz ``samples``."""
        import torch
        import torchaudio.compliance.kaldi as kaldi

        with torch.inference_mode():
            wave = torch.from_numpy(samples.astype(np.float32) * (1 << 15))[None]
            fbank = kaldi.fbank(wave, num_mel_bins=self.n_mels, frame_length=self.frame_length,
                                frame_shift=self.frame_shift, dither=0.0, energy_floor=0.0,
                                window_type=self.window, sample_frequency=SAMPLE_RATE)
            feats = (lfr(fbank, self.lfr_m, self.lfr_n).to(self.device) + self.shift) * self.scale
            hidden = self.encoder(feats[None])  # (T', layers, width)
            # stretched end to end onto the video frames, as LiteAvatar does (align_corners)
            flat = hidden.reshape(hidden.shape[0], -1).T[None]
            stretched = torch.nn.functional.interpolate(flat, size=frames, mode="linear",
                                                        align_corners=True)
            return stretched[0].T.reshape(frames, self.layers, self.width).float().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# 2. Audio to mouth parameters


class AudioToMouth:
    """LiteAvatar's ONNX audio-to-mouth model over one-second windows (``audio2mouth_cpu.py``)."""

    def __init__(self, path: Path, providers: list[str], threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        self.speaker = np.array([2], dtype=np.int64)   # input_sp, as LiteAvatar passes it
        self.weight = np.array([1.0], dtype=np.float32)  # w
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.feature_shape = tuple(shapes["input_au"][2:])  # (blocks, width) it was trained on

    def check_features(self, layers: int, width: int) -> None:
        """Fail at load, not mid-reply, when the speech encoder does not fit this model."""
        expected = self.feature_shape
        if any(isinstance(e, int) and e != got for e, got in zip(expected, (layers, width))):
            raise ValueError(f"{A2M_ONNX} takes features of {expected[0]} blocks x {expected[1]}, "
                             f"the Paraformer encoder gives {layers} x {width}")

    def window(self, features: np.ndarray) -> np.ndarray:
        """(WINDOW, layers, width) features -> (WINDOW, N_PARAMS) parameters."""
        output, _feat = self.session.run(["output", "feat"], {
            "input_au": features[None].astype(np.float32),
            "input_ph": np.zeros((1, WINDOW, 2), np.float32),  # phonemes: LiteAvatar passes none
            "input_sp": self.speaker, "w": self.weight})
        return output[0, :, :N_PARAMS]

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(T >= WINDOW, layers, width) -> (T, N_PARAMS): windows every HOP frames, the last one
        aligned to the end; where a window overlaps what is already there, the first EDGE frames
        cross-fade into it."""
        from scipy import signal

        total = len(features)
        params = np.zeros((total, N_PARAMS), np.float32)
        filled, start = 0, 0
        while True:
            last = start + WINDOW >= total
            if last:
                start = total - WINDOW
            out = self.window(features[start:start + WINDOW])
            first_kept = 0 if start == 0 else EDGE
            end_kept = WINDOW if last else WINDOW - EDGE
            for tt in range(first_kept, end_kept):
                f = start + tt
                if f < filled:
                    keep = min((filled - f) / EDGE, 1.0)
                    params[f] = (1 - keep) * out[tt] + keep * params[f]
                else:
                    params[f] = out[tt]
            filled = max(filled, start + end_kept)
            if last:
                break
            start += HOP
        b, a = signal.butter(4, 2 * 10 / PARAM_FPS, "lowpass")
        return signal.filtfilt(b, a, params, axis=0, padtype=None).astype(np.float32)


def silence_weights(samples: np.ndarray, frames: int) -> np.ndarray:
    """Per 30 fps frame, 0 (speech) .. 1 (a silence of half a second or more), eased at the edges."""
    hop = SAMPLE_RATE / PARAM_FPS
    quiet = np.zeros(frames, bool)
    for i in range(frames):
        part = samples[int(i * hop):int((i + 1) * hop)]
        rms = float(np.sqrt(np.mean(np.square(part, dtype=np.float64)))) if len(part) else 0.0
        quiet[i] = 20 * math.log10(max(rms, 1e-10)) < SILENCE_DB
    silent = np.zeros(frames)
    i = 0
    while i < frames:
        j = i
        while j < frames and quiet[j] == quiet[i]:
            j += 1
        if quiet[i] and j - i >= SILENCE_FRAMES:
            silent[i:j] = 1.0
        i = j
    return np.convolve(np.pad(silent, 2, mode="edge"), SILENCE_KERNEL, "same")[2:-2]


# ---------------------------------------------------------------------------------------------
# 3. The avatar: background video, face box, the face encoder/decoder


@dataclass(frozen=True, slots=True)
class FaceBox:
    y1: int
    y2: int
    x1: int
    x2: int

    @classmethod
    def read(cls, path: Path) -> "FaceBox":
        y1, y2, x1, x2 = (int(v) for v in path.read_text(encoding="utf-8").split()[:4])
        return cls(y1, y2, x1, x2)


class Avatar:
    """One LiteAvatarGallery avatar: background frames (RGB), the face box, the neutral pose, and
    per background frame the face encoder's code of its reference image."""

    def __init__(self, path: Path, device: str):
        import cv2
        import torch

        self.device = device
        self.neutral = np.load(path / "neutral_pose.npy").astype(np.float32).reshape(-1)[:N_PARAMS]
        self.box = FaceBox.read(path / "face_box.txt")
        backgrounds, _ = read_video(path / "bg_video.mp4")
        refs = []
        while (path / "ref_frames" / f"ref_{len(refs):05d}.jpg").exists() and len(refs) < len(backgrounds):
            refs.append(path / "ref_frames" / f"ref_{len(refs):05d}.jpg")
        if not backgrounds or not refs:
            raise ValueError(f"LiteAvatar avatar {path}: bg_video.mp4 has {len(backgrounds)} frames "
                             f"and ref_frames/ {len(refs)} images; it needs both")
        self.backgrounds = backgrounds[:len(refs)]  # frame i of the loop is drawn with ref_i
        h, w = self.backgrounds[0].shape[:2]
        b = self.box
        if not (0 <= b.y1 < b.y2 <= h and 0 <= b.x1 < b.x2 <= w):
            raise ValueError(f"LiteAvatar avatar {path}: face box {b} is outside the {w}x{h} video")
        # 1 at the box's edge (background), 0 inside (drawn face), feathered in between
        mask = np.ones((b.y2 - b.y1, b.x2 - b.x1), np.float32)
        mask[FEATHER_PX:-FEATHER_PX, FEATHER_PX:-FEATHER_PX] = 0.0
        self.keep = cv2.GaussianBlur(mask, (21, 21), 15)[..., None]

        self.encoder = torch.jit.load(str(path / "net_encode.pt"), map_location=device).eval()
        self.decoder = torch.jit.load(str(path / "net_decode.pt"), map_location=device).eval()
        with torch.inference_mode():
            # The encoder's output is passed to the decoder as it is (a tensor or a tuple of them).
            self.codes = [self.encoder(self._ref_tensor(p)) for p in refs]

    def _ref_tensor(self, path: Path):
        import cv2
        import torch

        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, (REF_SIZE, REF_SIZE), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5)
        return x[None].to(self.device)

    def __len__(self) -> int:
        return len(self.backgrounds)

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.backgrounds[0].shape[:2]
        return w, h

    def draw(self, params: np.ndarray, index: int) -> np.ndarray:
        """Background frame ``index`` with the face drawn from ``params`` (N_PARAMS,): (H, W, 3) RGB."""
        import cv2
        import torch

        with torch.inference_mode():
            p = torch.from_numpy(np.ascontiguousarray(params, np.float32))[None].to(self.device)
            face = self.decoder(self.codes[index], p)
            face = ((face[0] / 2 + 0.5).clamp(0, 1) * 255).permute(1, 2, 0).to(torch.uint8).cpu().numpy()
        b = self.box
        face = cv2.resize(face, (b.x2 - b.x1, b.y2 - b.y1))
        frame = self.backgrounds[index].copy()
        region = frame[b.y1:b.y2, b.x1:b.x2].astype(np.float32)
        frame[b.y1:b.y2, b.x1:b.x2] = (face * (1 - self.keep) + region * self.keep).astype(np.uint8)
        return frame


# ---------------------------------------------------------------------------------------------
# The backend


@dataclass(frozen=True, slots=True)
class MouthTrack:
    """A sentence's mouth parameters at 30 fps from ``start`` (seconds on the reply timeline)."""

    start: float
    params: np.ndarray  # (n, N_PARAMS)

    def at(self, t: float) -> np.ndarray:
        """The parameters at reply time ``t``, interpolated between the 30 fps frames."""
        x = min(max((t - self.start) * PARAM_FPS, 0.0), len(self.params) - 1.0)
        i = int(x)
        j = min(i + 1, len(self.params) - 1)
        return self.params[i] + (x - i) * (self.params[j] - self.params[i])


class LiteAvatar(AvatarBackend):
    """LiteAvatar's audio-to-mouth model and face generator (MIT), drawing JPEG frames."""

    draws_frames = True

    class Options(Options):
        model_dir: Path | None = Field(
            None, description=f"the shared weights ({', '.join(REQUIRED)}); None is "
                              f"<models dir>/{MODEL_NAME}")
        avatar: str = Field(
            "20250408/sample_data", description="a LiteAvatarGallery avatar: its name, unpacked "
            "under model_dir (as 20250408/sample_data, which the fetch brings), or a directory path")
        device: Literal["auto", "cuda", "cpu"] = Field(
            "auto", description="auto is the GPU when torch sees one (ONNX Runtime's CUDA provider "
                                "when installed), else the CPU")
        threads: int = Field(2, ge=1, le=64, description="CPU threads per model call (torch's "
                             "setting is process-wide); ignored on the GPU")
        workers: int = Field(2, ge=1, le=32, description="model calls at once across all streams; "
                             "more streams wait their turn, one chunk at a time")
        jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of the frames")
        chunk_s: float = Field(0.2, gt=0, le=5.0, description="seconds of audio per yielded chunk")
        fps: int = Field(25, gt=0, le=60, description="video frames per second (LiteAvatar's "
                         "parameters, at 30 fps, are interpolated to it)")

    def __init__(self, options):
        super().__init__(options)
        self._executor: ThreadPoolExecutor | None = None
        self._idle: list[VideoFrame] = []

    def load(self) -> None:
        o = self.options
        self.fps = o.fps
        model_dir = resolve(o.model_dir, MODEL_NAME, REQUIRED)  # before importing torch
        avatar_dir = self._avatar_dir(model_dir)

        import onnxruntime as ort
        import torch

        self.device = torch_device(o.device)
        providers = ["CPUExecutionProvider"]
        if self.device == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning("onnxruntime has no CUDA provider: LiteAvatar's audio-to-mouth model "
                            "runs on the CPU, the features and faces on the GPU")
        else:
            torch.set_num_threads(o.threads)
        self._features = SpeechFeatures(model_dir, self.device)
        self._mouth = AudioToMouth(model_dir / A2M_ONNX, providers, o.threads)
        self._mouth.check_features(self._features.layers, self._features.width)
        self._avatar = Avatar(avatar_dir, self.device)
        self.mouth_track(AudioChunk(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE))  # warm-up:
        # the first call pays for lazy imports and allocations (~2 s), not the first reply
        self._executor = ThreadPoolExecutor(o.workers, thread_name_prefix="liteavatar")
        self._idle = [VideoFrame.from_rgb(self._avatar.draw(self._avatar.neutral, i), o.jpeg_quality)
                      for i in range(len(self._avatar))]

    def _avatar_dir(self, model_dir: Path) -> Path:
        name = self.options.avatar
        as_path = Path(name).expanduser()
        gallery_name = None
        if as_path.is_absolute() or as_path.is_dir():
            path = as_path
        else:
            path, gallery_name = model_dir / name, name
        if not path.is_dir():
            raise MissingAvatar(path, "the avatar directory", gallery_name, model_dir)
        for rel in AVATAR_FILES:
            if not (path / rel).exists():
                raise MissingAvatar(path, rel, gallery_name, model_dir)
        return path

    def frame_size(self) -> tuple[int, int]:
        return self._avatar.size

    def idle_frames(self) -> list[VideoFrame]:
        return list(self._idle)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the worker pool. Cancelled while queued, it never runs; cancelled while
        running, it finishes and its result is dropped."""
        if self._executor is None:
            raise RuntimeError("LiteAvatar.load() has not been called")
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def mouth_track(self, audio: AudioChunk) -> MouthTrack:
        """A sentence's mouth parameters (blocking: run it on the worker pool)."""
        samples = resample(audio.samples, audio.sample_rate, SAMPLE_RATE)
        frames = max(1, math.ceil(len(samples) / SAMPLE_RATE * PARAM_FPS))
        # The model takes one-second windows: shorter speech is padded with silence, then cut.
        padded = np.pad(samples, (0, max(0, SAMPLE_RATE - len(samples))))
        padded_frames = max(WINDOW, int(len(padded) / SAMPLE_RATE * PARAM_FPS))
        params = self._mouth(self._features(padded, padded_frames))[:frames]
        if len(params) < frames:  # int() above can fall a frame short of the sound's end
            params = np.concatenate([params, np.repeat(params[-1:], frames - len(params), 0)])
        silent = silence_weights(samples, frames)[:, None]
        params = params * (1 - silent) + self._avatar.neutral * silent
        return MouthTrack(audio.start, params.astype(np.float32))

    def draw_frames(self, track: MouthTrack, frames: range) -> tuple[VideoFrame, ...]:
        """Frames ``frames`` of the reply as JPEG (blocking: run it on the worker pool)."""
        n, q = len(self._avatar), self.options.jpeg_quality
        return tuple(VideoFrame.from_rgb(self._avatar.draw(track.at(k / self.fps), k % n), q)
                     for k in frames)

    async def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]:
        audio = request.speech.audio
        if len(audio.samples) == 0:
            return
        track = await self._run(self.mouth_track, audio)
        sr, fps = audio.sample_rate, self.fps
        for a, b, start, end in chunk_spans(audio, self.options.chunk_s):
            frames = frame_range(start, end, fps)
            drawn = await self._run(self.draw_frames, track, frames) if len(frames) else ()
            yield AvatarChunk(AudioChunk(audio.samples[a:b], sr, start), drawn, frames.start, fps,
                              request.speech.text, request.speech.sentence)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


BACKEND = LiteAvatar
