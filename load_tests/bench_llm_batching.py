"""Continuous batching in the embedded LLM: N sessions asking at the same moment, one sequence at a
time (``parallel_sequences: 1``, the baseline) against decoded together (``parallel_sequences: N``),
in the same run.

    python -m load_tests.bench_llm_batching [--sessions 1,2,4] [--rounds 5] [--json out.json]

Each round sends N different questions at once to the loaded backend (SmolLM2-135M on llama.cpp,
2 threads, the service's settings) and measures, per reply, the time to its first piece and to its
end, and the round's wall time. Prints JSON with medians and p95 per (setting, N) and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from avatarchat.backends.base import create_backend
from avatarchat.config import parse_stage
from avatarchat.messages import ChatMessage, LLMRequest
from load_tests.report import emit, machine, summary

QUESTIONS = ["What colour is the sky?", "What is the capital of France?", "Tell me a joke.",
             "How are you today?", "What do cats eat?", "Why is the sea salty?",
             "What is your favourite song?", "Where do penguins live?"]


async def one_reply(llm, question: str) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first, pieces = None, 0
    async for _ in llm.stream(LLMRequest((ChatMessage("user", question),))):
        pieces += 1
        if first is None:
            first = time.perf_counter() - t0
    return first or 0.0, time.perf_counter() - t0, pieces


async def measure(llm, n: int, rounds: int) -> dict:
    firsts, ends, walls, pieces = [], [], [], 0
    for r in range(rounds + 1):  # round 0 warms up
        t0 = time.perf_counter()
        qs = [QUESTIONS[(r + i) % len(QUESTIONS)] for i in range(n)]
        results = await asyncio.gather(*(one_reply(llm, q) for q in qs))
        if r == 0:
            continue
        walls.append(time.perf_counter() - t0)
        for first, end, count in results:
            firsts.append(first)
            ends.append(end)
            pieces += count
    return {"sessions": n, "replies": len(ends), "first_piece": summary(firsts), "reply_end": summary(ends),
            "round_wall": summary(walls), "pieces_per_s": round(pieces / sum(walls), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", default="1,2,4")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args()
    counts = [int(x) for x in a.sessions.split(",")]
    rows = []
    for setting in ("one at a time", "batched"):
        for n in counts:
            parallel = 1 if setting == "one at a time" else max(2, n)
            llm = create_backend(parse_stage("bench", "llm", {"backend": "llama_cpp", "n_threads": 2,
                                                              "parallel_sequences": parallel}))
            try:
                row = asyncio.run(measure(llm, n, a.rounds))
            finally:
                llm.close()
            rows.append({"setting": setting, "parallel_sequences": parallel, **row})
            print(f"  {setting}, {n} at once: {rows[-1]}", file=sys.stderr)
    emit({"benchmark": "llm_batching", "rounds": a.rounds, "runs": rows, "machine": machine()}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
