"""Benchmark the embedded portrait avatar: render() per frame and animate() per sentence.

    python load_tests/bench_render.py [--frames 300] [--repeats 30] [--threads 1]

Prints one JSON object: median and p95 milliseconds per ``PortraitRenderer.render`` call (at rest,
for a talking sequence, and with every motion at once) and per ``PortraitAvatar.animate`` of 3 s of
speech, plus the machine it ran on. ``--threads 1`` (the default) pins OpenCV to one core, the
budget a renderer replica gets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time

import cv2
import numpy as np

from avatarchat.avatar.pack import AvatarPack
from avatarchat.avatar.renderer import PortraitRenderer
from avatarchat.backends.base import create_backend
from avatarchat.config import parse_stage
from avatarchat.messages import AnimateRequest, AudioChunk, FaceMotion, SpeechChunk

TEXT = "Hello there, how are you today? I hope the weather is kind to you."


def stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median_ms": round(float(np.median(a)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "n": len(a)}


def speech_audio(seconds: float = 3.0) -> tuple[np.ndarray, int, str]:
    """3 s of speech: hibari TTS when installed, else syllable-like tone bursts."""
    try:
        from hibari import Hibari

        x = np.asarray(Hibari()(TEXT), dtype=np.float32)
        sr, source = 24000, "hibari"
    except ImportError:
        sr, source = 24000, "synthetic"
        t = np.arange(int(seconds * sr)) / sr
        x = (0.2 * np.sin(2 * np.pi * 160 * t) * np.clip(np.sin(2 * np.pi * 4 * t), 0, None))
    n = int(seconds * sr)
    x = np.pad(x, (0, max(0, n - len(x))))[:n].astype(np.float32)
    return x, sr, source


def time_calls(fn, items, repeats: int = 1) -> list[float]:
    out = []
    for _ in range(repeats):
        for item in items:
            t0 = time.perf_counter()
            fn(item)
            out.append((time.perf_counter() - t0) * 1e3)
    return out


async def animate_once(backend, request) -> int:
    return sum([len(c.frames) async for c in backend.animate(request)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=300, help="frames per render measurement")
    ap.add_argument("--repeats", type=int, default=30, help="animate() calls to time")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads (0 = OpenCV default)")
    args = ap.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)

    t0 = time.perf_counter()
    pack = AvatarPack.load("astronaut")
    renderer = PortraitRenderer(pack)
    load_ms = (time.perf_counter() - t0) * 1e3

    samples, sr, source = speech_audio()
    backend = create_backend(parse_stage("bench", "avatar", {"backend": "portrait"}))
    request = AnimateRequest(SpeechChunk(AudioChunk(samples, sr, 0.0), TEXT), seed=1)
    loop = asyncio.new_event_loop()
    talking = [m for c in loop.run_until_complete(_collect(backend, request)) for m in c.frames]
    talking = (talking * (args.frames // len(talking) + 1))[:args.frames]
    happy_request = AnimateRequest(SpeechChunk(AudioChunk(samples, sr, 0.0), TEXT), seed=1, emotion="happy")
    happy = [m for c in loop.run_until_complete(_collect(backend, happy_request)) for m in c.frames]
    happy = (happy * (args.frames // len(happy) + 1))[:args.frames]
    rng = np.random.default_rng(0)
    everything = [FaceMotion(mouth_open=float(rng.uniform(0.1, 1)), mouth_width=float(rng.uniform(-1, 1)),
                             head_yaw=float(rng.uniform(-3, 3)), head_pitch=float(rng.uniform(-2, 2)),
                             head_roll=float(rng.uniform(-2, 2)), blink=float(rng.uniform(0.1, 1)),
                             brow=float(rng.uniform(-1, 1)), breath=float(rng.uniform(-1, 1)),
                             smile=float(rng.uniform(-1, 1)), surprise=float(rng.uniform(0, 1)))
                  for _ in range(args.frames)]
    for m in talking[:20]:  # warm up caches and OpenCV's first-call set-up
        renderer.render(m)
    result = {
        "render": {
            "frame_size": list(renderer.size),
            "rest (silence, still head)": stats(time_calls(renderer.render, [FaceMotion()] * args.frames)),
            "talking (animate() output: mouth, blinks, head sway, breath)": stats(
                time_calls(renderer.render, talking)),
            "talking, happy (the expression moves the mouth corners every frame)": stats(
                time_calls(renderer.render, happy)),
            "every motion at once (random)": stats(time_calls(renderer.render, everything)),
            "renderer_init_ms": round(load_ms, 1),
        },
        "animate_3s": {
            "audio": f"{len(samples) / sr:.2f} s at {sr} Hz ({source})",
            "frames": len([m for c in loop.run_until_complete(_collect(backend, request))
                           for m in c.frames]),
            **stats(time_calls(lambda r: loop.run_until_complete(animate_once(backend, r)),
                               [request], args.repeats)),
        },
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "opencv": cv2.__version__, "opencv_threads": cv2.getNumThreads(), "numpy": np.__version__,
        },
    }
    print(json.dumps(result, indent=2))


async def _collect(backend, request):
    return [c async for c in backend.animate(request)]


if __name__ == "__main__":
    main()
