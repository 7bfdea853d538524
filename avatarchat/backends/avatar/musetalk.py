"""MuseTalk 1.5 (TMElyralab, MIT): a base video's face repainted to say the speech, batched across sessions.

Per video frame, MuseTalk runs one step of a Stable-Diffusion-shaped UNet on the VAE latents of the
frame's 256x256 face crop (its lower half blanked, plus the whole crop as reference: 8 channels)
at timestep 0, cross-attending to that frame's Whisper-tiny audio features, and the VAE decodes the
face, which is blended back into the base frame below the nose. The weights are ``avatar-chat models
fetch musetalk`` (upstream's ``models/`` layout: ``musetalkV15/``, ``sd-vae/``, ``whisper/``); the
base video is prepared once by ``python -m avatarchat.avatar.musetalk_prepare`` (face boxes, masks,
latents: see that module for how it differs from upstream). Nothing downloads at run time.

Audio features, as upstream's ``AudioProcessor.get_whisper_chunk``: the request's audio at 16 kHz in
30 s windows through Whisper's encoder, every layer's hidden states stacked (50 per second; tiny: 5
states of 384), and per frame the 10 steps around it (2 frames of context each side; zeros beyond the
request's audio, since requests are independent), flattened to 50 tokens, plus a sinusoidal
positional encoding.

Timing, as every avatar: reply frame ``k`` is shown at ``k / fps`` on the reply's timeline; a request
yields chunks of ~``chunk_s`` of its audio, each with exactly the frames whose time falls inside it.
Reply frame ``k`` is drawn on loop frame ``k % len(loop)`` of the prepared base video, the same
clock as ``idle_frames()``, so speech starts from the frame the idle loop would have shown. MuseTalk
moves only the lower face: a request's ``emotion``, ``seed`` and ``previous`` are not used.

Batching: one model thread runs every model call. Concurrent requests' audio windows are encoded
together, and concurrent sessions' faces (``batch_size`` at most, the first waiting up to
``max_wait_ms`` for company) go through the UNet and the VAE decoder in one call: what makes a GPU
serve many sessions (../shared/notes/models.md: 23 faces/s at batch 1, 224 at 16 on an H200). A session asks
for the next chunk's faces while its current chunk is consumed; when its stream is closed
(interruption, hang-up) its faces not yet in a batch are dropped, so at most the batch under way is
spent on it. Blending and JPEG encoding run in worker threads outside the model thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from avatarchat.audio import resample
from avatarchat.avatar.motion import chunk_spans, frame_range
from avatarchat.backends.avatar.base import AvatarBackend
from avatarchat.backends.base import torch_device
from avatarchat.batching import Batcher
from avatarchat.config import Options
from avatarchat.messages import AnimateRequest, AudioChunk, AvatarChunk, VideoFrame
from avatarchat.models import resolve

MODEL_NAME = "musetalk"
UNET_CONFIG = "musetalkV15/musetalk.json"
UNET_WEIGHTS = "musetalkV15/unet.pth"
VAE_DIR = "sd-vae"
WHISPER_DIR = "whisper"
REQUIRED = (UNET_CONFIG, UNET_WEIGHTS, f"{VAE_DIR}/config.json",
            f"{VAE_DIR}/diffusion_pytorch_model.bin", f"{WHISPER_DIR}/config.json",
            f"{WHISPER_DIR}/pytorch_model.bin", f"{WHISPER_DIR}/preprocessor_config.json")

AUDIO_RATE = 16000       # Whisper's input rate
FEATURE_RATE = 50        # Whisper encoder steps per second
CONTEXT_FRAMES = 2       # video frames of audio context each side (upstream's audio_padding_length)
# Feature steps per frame window: 2 per 25 fps frame, for the frame and CONTEXT_FRAMES each side.
WINDOW_STEPS = 2 * (2 * CONTEXT_FRAMES + 1)
WINDOW_LEFT = 2 * CONTEXT_FRAMES  # steps before the frame's own
TIMESTEP = 0             # MuseTalk's single UNet step
FAILURES_UNHEALTHY = 3   # this many failed face batches in a row make the replica unhealthy


def positional_encoding(length: int, width: int) -> np.ndarray:
    """Sinusoidal encoding added to the audio tokens (upstream's ``PositionalEncoding``)."""
    position = np.arange(length, dtype=np.float64)[:, None]
    div = np.exp(np.arange(0, width, 2, dtype=np.float64) * (-math.log(10000.0) / width))
    pe = np.zeros((length, width), np.float32)
    pe[:, 0::2] = np.sin(position * div)
    pe[:, 1::2] = np.cos(position * div)[:, : width // 2]
    return pe


@dataclass(slots=True)
class _AudioJob:
    """One request's audio: mel windows [n, 80, 3000] and how many feature steps are real."""

    mels: np.ndarray
    steps: int


@dataclass(slots=True)
class _Face:
    """One face to draw: the request's padded features, the frame's first step in them, the base
    frame it is drawn on."""

    features: object  # torch.Tensor [WINDOW_LEFT + steps + WINDOW_STEPS, layers, width]
    step: int
    base: int


class MuseTalkAvatar(AvatarBackend):
    """MuseTalk 1.5 on a prepared base video; frames are JPEG VideoFrames of the video's size."""

    draws_frames = True

    class Options(Options):
        model_dir: Path | None = Field(None, description="the MuseTalk model directory "
                                       "(musetalkV15/, sd-vae/, whisper/); default <models dir>/"
                                       f"{MODEL_NAME} (avatar-chat models fetch {MODEL_NAME})")
        avatar: Path | None = Field(None, description="the prepared avatar directory, made once "
                                    "from a base video with `python -m "
                                    "avatarchat.avatar.musetalk_prepare --video BASE.mp4 --out DIR`")
        device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: the GPU when "
                                                       "torch sees one; cuda fails start-up "
                                                       "without one")
        dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
            "auto", description="model precision; auto: float16 on a GPU (as upstream), float32 "
                                "on the CPU")
        batch_size: int = Field(16, ge=1, le=256, description="faces per UNet + VAE call at most, "
                                "from all sessions together")
        max_wait_ms: float = Field(5.0, ge=0.0, le=1000.0, description="how long a face that finds "
                                   "no other waiting waits for company before its batch runs")
        queue_max: int = Field(1024, ge=1, le=100_000, description="faces waiting at most; more "
                               "wait to be queued")
        jpeg_quality: int = Field(85, ge=1, le=100, description="JPEG quality of the frames")
        chunk_s: float = Field(0.2, gt=0, le=5.0, description="seconds of audio per yielded chunk")
        fps: int = Field(25, gt=0, le=60, description="video frames per second (MuseTalk is "
                         "trained at 25)")
        cpu_threads: int | None = Field(None, ge=1, le=256, description="torch's intra-op threads "
                                        "for this process when it runs on the CPU; null keeps "
                                        "torch's default")

    def __init__(self, options):
        super().__init__(options)
        self._faces: Batcher | None = None
        self._audio: Batcher | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._idle: list[VideoFrame] | None = None

    # --- loading ----------------------------------------------------------------------------------

    def load(self) -> None:
        o = self.options
        from avatarchat.avatar import musetalk_prepare as prep

        model_dir = resolve(o.model_dir, MODEL_NAME, REQUIRED).resolve()  # before importing torch
        if o.avatar is None:
            raise ValueError("the musetalk avatar option names no prepared avatar directory; "
                             f"prepare one from a base video with `{prep.PREPARE_COMMAND}`")
        avatar = prep.PreparedAvatar.load(o.avatar, vae=prep.vae_fingerprint(model_dir))

        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import WhisperFeatureExtractor, WhisperModel

        device = torch.device(torch_device(o.device))
        dtype_name = o.dtype if o.dtype != "auto" else ("float16" if device.type == "cuda" else "float32")
        if dtype_name == "float16" and device.type == "cpu":
            raise ValueError("dtype float16 needs a GPU; use float32 or bfloat16 on the CPU")
        dtype = getattr(torch, dtype_name)
        if o.cpu_threads is not None and device.type == "cpu":
            torch.set_num_threads(o.cpu_threads)

        config = UNet2DConditionModel.load_config(str(model_dir / UNET_CONFIG))
        unet = UNet2DConditionModel.from_config(config)
        unet.load_state_dict(torch.load(model_dir / UNET_WEIGHTS, map_location="cpu", weights_only=True))
        # download_weights.sh fetches the .bin only; say so, or diffusers logs an error first
        vae = AutoencoderKL.from_pretrained(str(model_dir / VAE_DIR), use_safetensors=(
            model_dir / VAE_DIR / "diffusion_pytorch_model.safetensors").is_file())
        whisper = WhisperModel.from_pretrained(str(model_dir / WHISPER_DIR)).get_encoder()
        self._feature_extractor = WhisperFeatureExtractor.from_pretrained(str(model_dir / WHISPER_DIR))
        self._unet = unet.to(device, dtype).eval().requires_grad_(False)
        self._vae = vae.to(device, dtype).eval().requires_grad_(False)
        self._whisper = whisper.to(device, dtype).eval().requires_grad_(False)
        self._device, self._dtype = device, dtype
        width = whisper.config.d_model
        if unet.config.cross_attention_dim != width:
            raise ValueError(f"the UNet cross-attends to {unet.config.cross_attention_dim} wide "
                             f"audio, but the Whisper in {model_dir / WHISPER_DIR} is {width} wide")
        tokens = WINDOW_STEPS * (whisper.config.encoder_layers + 1)
        self._pe = torch.from_numpy(positional_encoding(tokens, width)).to(device, dtype)
        self._timestep = torch.tensor([TIMESTEP], device=device)
        self._latents = avatar.latents.to(device, dtype)
        self._avatar = avatar
        self._masks = [m.astype(np.float32)[..., None] / 255.0 for m in avatar.masks]
        self.fps = o.fps

        # One thread runs every model call: faces and audio windows never compete for the device.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="musetalk-model")
        wait_s = o.max_wait_ms / 1000.0
        self._faces = Batcher(self._draw_faces, o.batch_size, wait_s, o.queue_max,
                              name="MuseTalk face", unhealthy_after=FAILURES_UNHEALTHY,
                              executor=self._executor)
        self._audio = Batcher(self._encode_audio, max(1, o.batch_size // 4), wait_s, o.queue_max,
                              name="MuseTalk audio", unhealthy_after=FAILURES_UNHEALTHY,
                              executor=self._executor)

    # --- the contract -------------------------------------------------------------------------------

    def frame_size(self) -> tuple[int, int]:
        return self._avatar.width, self._avatar.height

    @property
    def loop_length(self) -> int:
        return len(self._avatar.loop)

    def idle_frames(self) -> list[VideoFrame]:
        """The base video's loop, untouched, each distinct frame encoded once."""
        if self._idle is None:
            q = self.options.jpeg_quality
            encoded = [VideoFrame.from_rgb(f, q) for f in self._avatar.frames]
            self._idle = [encoded[i] for i in self._avatar.loop]
        return self._idle

    @property
    def stats(self) -> dict[str, int]:
        """Model calls so far: face batches, the faces they drew, the largest; audio batches."""
        f, a = self._faces, self._audio
        if f is None or a is None:
            return {}
        return {"face_batches": f.batches, "faces": f.items, "largest_face_batch": f.largest,
                "audio_batches": a.batches, "audio_requests": a.items}

    async def animate(self, request: AnimateRequest) -> AsyncIterator[AvatarChunk]:
        if self._faces is None:
            raise RuntimeError("MuseTalkAvatar.load() has not been called")
        audio = request.speech.audio
        if len(audio.samples) == 0:
            return
        sr, fps = audio.sample_rate, self.fps
        spans = chunk_spans(audio, self.options.chunk_s)
        features = await self._features(audio)
        pending: asyncio.Task | None = None
        try:
            pending = asyncio.ensure_future(self._chunk(features, audio.start, spans[0]))
            for i, (a, b, start, end) in enumerate(spans):
                frames = await pending
                # Ask for the next chunk's faces now: the model works while this one is consumed.
                pending = (asyncio.ensure_future(self._chunk(features, audio.start, spans[i + 1]))
                           if i + 1 < len(spans) else None)
                yield AvatarChunk(AudioChunk(audio.samples[a:b], sr, start), frames,
                                  frame_range(start, end, fps).start, fps,
                                  request.speech.text, request.speech.sentence)
        finally:
            if pending is not None:
                pending.cancel()  # its faces not yet in a batch are dropped from the queue
                pending.add_done_callback(_consume_outcome)  # a failure nobody awaits is no error

    # --- per request, on the event loop -----------------------------------------------------------

    async def _features(self, audio: AudioChunk):
        """The request's Whisper features, zero-padded for frame windows (device tensor)."""
        samples = resample(audio.samples, audio.sample_rate, AUDIO_RATE)
        job = await asyncio.to_thread(self._mel_windows, samples)
        return await self._audio.submit(job)

    def _mel_windows(self, samples: np.ndarray) -> _AudioJob:
        extract = self._feature_extractor
        window = extract.n_samples  # 30 s: each piece is padded to it, as Whisper's encoder needs
        pieces = [samples[i:i + window] for i in range(0, max(1, len(samples)), window)]
        mels = [extract(p, sampling_rate=AUDIO_RATE, return_tensors="np").input_features[0]
                for p in pieces]
        return _AudioJob(np.stack(mels), math.floor(len(samples) / AUDIO_RATE * FEATURE_RATE))

    async def _chunk(self, features, audio_start: float, span) -> tuple[VideoFrame, ...]:
        _, _, start, end = span
        ks = frame_range(start, end, self.fps)
        if not ks:
            return ()
        loop = self._avatar.loop
        faces = [_Face(features, self._feature_step(k, audio_start), loop[k % len(loop)])
                 for k in ks]
        drawn = await asyncio.gather(*(self._faces.submit(f) for f in faces))
        return await asyncio.to_thread(self._compose, [f.base for f in faces], drawn)

    def _feature_step(self, k: int, audio_start: float) -> int:
        """The first feature step (padded) of frame k's window: the frame's time in the request's
        audio at 50 steps a second, then WINDOW_LEFT back (the padding puts that at index 0)."""
        t = k / self.fps - audio_start
        return max(0, math.floor(t * FEATURE_RATE + 1e-6))

    def _compose(self, bases: list[int], faces: list[np.ndarray]) -> tuple[VideoFrame, ...]:
        """Each generated face resized into its face box, blended into its base frame through the
        frame's mask, encoded as JPEG. Runs in a worker thread."""
        import cv2

        av, q, out = self._avatar, self.options.jpeg_quality, []
        for base, face in zip(bases, faces):
            frame = av.frames[base].copy()
            x1, y1, x2, y2 = av.boxes[base]
            cx1, cy1, cx2, cy2 = av.crops[base]
            region = frame[cy1:cy2, cx1:cx2]
            painted = region.copy()
            painted[y1 - cy1:y2 - cy1, x1 - cx1:x2 - cx1] = cv2.resize(face, (x2 - x1, y2 - y1))
            m = self._masks[base]
            region[:] = (painted * m + region * (1.0 - m) + 0.5).astype(np.uint8)
            out.append(VideoFrame.from_rgb(frame, q))
        return tuple(out)

    # --- model calls, in the model thread ------------------------------------------------------------

    def _encode_audio(self, jobs: list[_AudioJob]) -> list:
        """Whisper's encoder over every window of every job in one call; per job, its hidden states
        (all layers stacked) trimmed to its audio and zero-padded for frame windows."""
        import torch

        with torch.inference_mode():
            mels = torch.from_numpy(np.concatenate([j.mels for j in jobs])).to(self._device, self._dtype)
            states = self._whisper(mels, output_hidden_states=True).hidden_states
            stacked = torch.stack(states, dim=2)  # [windows, 1500, layers + 1, width]
            out, w = [], 0
            for job in jobs:
                feats = stacked[w:w + len(job.mels)].flatten(0, 1)[: job.steps]
                w += len(job.mels)
                left = feats.new_zeros((WINDOW_LEFT, *feats.shape[1:]))
                right = feats.new_zeros((WINDOW_STEPS, *feats.shape[1:]))
                out.append(torch.cat([left, feats, right]))
            return out

    def _draw_faces(self, faces: list[_Face]) -> list[np.ndarray]:
        """One UNet step and a VAE decode for a batch of faces: RGB uint8 [256, 256, 3] each."""
        import torch

        with torch.inference_mode():
            audio = torch.stack([f.features[f.step:f.step + WINDOW_STEPS].flatten(0, 1)
                                 for f in faces]) + self._pe
            latents = self._latents[torch.tensor([f.base for f in faces], device=self._device)]
            pred = self._unet(latents, self._timestep, encoder_hidden_states=audio).sample
            image = self._vae.decode(pred / self._vae.config.scaling_factor).sample
            image = ((image.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            return list(image.permute(0, 2, 3, 1).cpu().numpy())

    # --- lifecycle ------------------------------------------------------------------------------------

    def check_health(self) -> None:
        if self._faces is None or self._audio is None:
            raise RuntimeError("MuseTalkAvatar is not loaded")
        self._faces.check()
        self._audio.check()

    def close(self) -> None:
        for batcher in (self._faces, self._audio):
            if batcher is not None:
                batcher.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._unet = self._vae = self._whisper = self._latents = None


def _consume_outcome(task: asyncio.Task) -> None:
    """Retrieve a dropped task's outcome so asyncio does not log it as never retrieved."""
    with contextlib.suppress(BaseException):
        task.result()


BACKEND = MuseTalkAvatar
