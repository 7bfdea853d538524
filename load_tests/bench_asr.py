"""The embedded ASR (Whisper tiny.en on CTranslate2) on short utterances: Whisper's padded 30 s
window (faster-whisper's own path, the baseline) against the 10 s window the backend uses for
utterances that fit (``short_window_s``), in the same run, with the words each heard.

    python -m load_tests.bench_asr [--rounds 3] [--json out.json]

Utterances: the first phrases of a real voice (beckett.wav, from moonshine-voice) and questions
spoken by the TTS. Prints JSON with medians and p95 per setting, the word error rate against the
text, and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

from avatarchat.audio import read_wav
from avatarchat.backends.base import create_backend, package_dir
from avatarchat.config import parse_stage
from avatarchat.messages import AudioChunk
from load_tests.measures.wer import wer
from load_tests.report import emit, machine, summary

QUESTIONS = ["Hello!", "What colour is the sky?", "Where do you live?", "Can you tell me a joke?",
             "What is the capital of France?", "Please tell me a long story about a dragon."]


def utterances() -> list[tuple[AudioChunk, str]]:
    samples, rate = read_wav(Path(package_dir("moonshine_voice")) / "assets" / "beckett.wav")
    clips = [(AudioChunk(samples[: int(rate * 2.6)], rate), "Ever tried. Ever failed."),
             (AudioChunk(samples[: int(rate * 4.2)], rate), "Ever tried. Ever failed. No matter.")]
    tts = create_backend(parse_stage("bench", "tts", {"backend": "hibari", "seed": 0}))

    async def say(text):
        return np.concatenate([c.samples async for c in tts.synthesize(text)])

    clips += [(AudioChunk(asyncio.run(say(q)), tts.sample_rate), q) for q in QUESTIONS]
    return clips


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    a = p.parse_args()
    clips = utterances()
    rows = []
    for name, window in (("30 s window (faster-whisper)", 0.0), ("10 s window (shipped)", 10.0)):
        asr = create_backend(parse_stage("bench", "asr", {"backend": "faster_whisper",
                                                          "short_window_s": window}))
        times, errors, heard = [], [], {}
        asyncio.run(asr.transcribe(clips[0][0]))  # warm-up
        for _ in range(a.rounds):
            for clip, text in clips:
                t0 = time.perf_counter()
                said = asyncio.run(asr.transcribe(clip)).text
                times.append(time.perf_counter() - t0)
                errors.append(wer(text, said))
                heard[text] = said
        asr.close()
        rows.append({"setting": name, "short_window_s": window, "utterances": len(times),
                     "transcribe": summary(times), "word_error_rate_mean": round(float(np.mean(errors)), 3),
                     "heard": heard})
        print(f"  {name}: {rows[-1]['transcribe']}, WER {rows[-1]['word_error_rate_mean']}", file=sys.stderr)
    emit({"benchmark": "asr_short_window", "rounds": a.rounds, "runs": rows, "machine": machine()}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
