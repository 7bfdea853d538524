"""Text to the first audible sample of the embedded TTS (hibari): how long the first sentence takes
to synthesise, plus the silence it starts with, with hibari's own leading silence kept (the
baseline) and cut to ``lead_silence_ms`` (the shipped setting), in the same run.

    python -m load_tests.bench_tts [--rounds 5] [--json out.json]

Prints JSON with medians and p95 per setting and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import numpy as np

from avatarchat.backends.base import create_backend
from avatarchat.config import parse_stage
from load_tests.report import emit, machine, summary

SENTENCES = ["Hello!", "The capital of France is Paris.", "I am doing well, thank you for asking.",
             "Sure, here is a joke.", "Penguins live in the southern half of the world."]
AUDIBLE = 0.01  # |sample| above this is sound


async def first_sound(tts, text: str) -> tuple[float, float]:
    """(seconds to the first chunk, seconds of silence at its start)."""
    t0 = time.perf_counter()
    async for chunk in tts.synthesize(text):
        loud = np.flatnonzero(np.abs(chunk.samples) > AUDIBLE)
        return time.perf_counter() - t0, (loud[0] if len(loud) else len(chunk.samples)) / chunk.sample_rate
    raise RuntimeError(f"no audio for {text!r}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args()
    rows = []
    for name, lead in (("hibari's own leading silence", None), ("trimmed (shipped)", 40.0)):
        tts = create_backend(parse_stage("bench", "tts", {"backend": "hibari", "seed": 0,
                                                          "lead_silence_ms": lead}))
        results = [asyncio.run(first_sound(tts, t)) for _ in range(a.rounds) for t in SENTENCES]
        rows.append({"setting": name, "lead_silence_ms": lead, "sentences": len(results),
                     "synthesis_to_first_chunk": summary([r[0] for r in results]),
                     "silence_before_speech": summary([r[1] for r in results]),
                     "text_to_first_audible_sample": summary([r[0] + r[1] for r in results])})
        print(f"  {rows[-1]}", file=sys.stderr)
    emit({"benchmark": "tts_first_sound", "runs": rows, "machine": machine()}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
