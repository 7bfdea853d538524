"""Per-stage latency of a turn on the embedded stack: through the Serve graph over HTTP, and, as a
baseline in the same run, the same backends called in one process (no Ray hops).

    python -m load_tests.bench_turn [--server URL] [--rounds 3] [--json out.json] [--png out.png]

Without --server it starts its own loopback cluster with serve_config.yaml. Inputs: a real human
recording (beckett.wav from moonshine-voice) and questions spoken by the TTS. Prints JSON with the
median and p95 of each stage and the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from avatarchat.audio import encode_wav, read_wav
from avatarchat.backends.base import create_backend, package_dir
from avatarchat.client.turn_client import TurnClient
from avatarchat.config import load_serve_config
from avatarchat.local_cluster import ROOT, ServeCluster
from avatarchat.messages import AudioChunk, AvatarChunk, TurnTimings
from avatarchat.ports import LocalPorts
from avatarchat.segmenter import find_speech
from avatarchat.turn import Turn, TurnOptions
from load_tests.report import emit, machine

STAGES = ("asr", "llm_first_token", "tts_first_audio", "avatar_first_frame", "input_to_first_frame")
QUESTIONS = ("What is your name?", "What colour is the sky?", "Can you tell me a joke?",
             "How are you today?")


def inputs(config) -> list[tuple[str, np.ndarray, int]]:
    """(label, samples, rate): one real recording and TTS-spoken questions."""
    out = []
    pkg = package_dir("moonshine_voice")
    if pkg is not None:
        samples, rate = read_wav(pkg / "assets" / "beckett.wav")
        out.append(("beckett.wav (human)", samples, rate))
    tts = create_backend(config.stage("tts"))

    async def speak(text):
        parts = [a.samples async for a in tts.synthesize(text)]
        return np.concatenate(parts)

    for q in QUESTIONS:
        audio = asyncio.run(speak(q))
        # half a second of silence either side, as a recording would have
        pad = np.zeros(tts.sample_rate // 2, np.float32)
        out.append((f"'{q}' (tts)", np.concatenate([pad, audio, pad]), tts.sample_rate))
    return out


def summarise(rows: list[dict]) -> dict:
    out = {}
    for key in STAGES + ("client_first_media_s",):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = {"median": round(statistics.median(values), 4),
                        "p95": round(float(np.percentile(values, 95)), 4), "n": len(values)}
    return out


def run_graph(server: str, cases, rounds: int) -> list[dict]:
    client, rows = TurnClient(server), []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for label, samples, rate in cases:
                path = Path(tmp) / "q.wav"
                path.write_bytes(encode_wav(samples, rate))
                result = client.turn(wav=path, realtime=True)
                rows.append({"input": label, "round": r, **result.server_timings,
                             "client_first_media_s": result.client_timings.get("first_media_s")})
    return rows


def run_in_process(config, cases, rounds: int) -> list[dict]:
    backends = {s: create_backend(config.stage(s)) for s in ("vad", "asr", "llm", "tts", "avatar")}
    ports = LocalPorts(backends["asr"], backends["llm"], backends["tts"], backends["avatar"])
    rows = []

    async def one(samples, rate) -> TurnTimings:
        spans = find_speech(samples, rate, backends["vad"])
        a, b = int(max(0, spans[0][0] - 0.25) * rate), int((spans[-1][1] + 0.25) * rate)
        turn = Turn(ports, (), TurnOptions(realtime=True, lead_s=config.pacing.lead_s))
        t0 = time.perf_counter()
        first = None
        async for e in turn.run(AudioChunk(samples[a:b], rate)):
            if isinstance(e, AvatarChunk) and first is None:
                first = time.perf_counter() - t0
        turn.timings.extra["client_first_media_s"] = first
        return turn.timings

    for r in range(rounds):
        for label, samples, rate in cases:
            rows.append({"input": label, "round": r, **asyncio.run(one(samples, rate)).as_dict()})
    return rows


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The medians of the stage parts do not add up to the total: the rest is mostly the LLM writing
    # on until the first sentence is complete (plus hops); it is drawn as its own segment.
    parts = [("asr", "ASR", "#4C72B0"), ("llm_first_token", "LLM first token", "#DD8452"),
             (None, "LLM to end of first sentence, hops", "#CCCCCC"),
             ("tts_first_audio", "TTS first audio", "#55A868"), ("avatar_first_frame", "avatar first frame", "#C44E52")]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.9 * len(summary)))
    longest = 0.0
    for y, (mode, stats) in enumerate(summary.items()):
        med = {k: stats.get(k, {}).get("median", 0.0) for k, _, _ in parts if k}
        total = stats.get("input_to_first_frame", {}).get("median", 0.0)
        rest = max(0.0, total - sum(med.values()))
        left = 0.0
        for key, label, colour in parts:
            v = med[key] if key else rest
            ax.barh(y, v, left=left, color=colour, label=label if y == 0 else None)
            left += v
        p95 = stats.get("input_to_first_frame", {}).get("p95", 0.0)
        ax.text(left + 0.02, y, f"median {total:.2f} s, p95 {p95:.2f} s", va="center", fontsize=8)
        longest = max(longest, left)
    ax.set_xlim(0, longest * 1.45)
    ax.set_yticks(range(len(summary)), list(summary))
    ax.set_xlabel("seconds from end of user input to first avatar frame (medians)")
    ax.set_title("Where a turn's time goes (embedded CPU stack)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="a running service; default: start one")
    parser.add_argument("--config", default=str(ROOT / "serve_config.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--png", help="draw the per-stage breakdown here")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-process baseline")
    args = parser.parse_args()
    config = load_serve_config(args.config)
    cases = inputs(config)

    cluster = None
    if not args.server:
        cluster = ServeCluster(Path(args.config)).start()
    try:
        graph_rows = run_graph(args.server or cluster.url, cases, args.rounds)
    finally:
        if cluster:
            cluster.stop()
    local_rows = [] if args.no_baseline else run_in_process(config, cases, args.rounds)
    summary = {"serve graph (HTTP, 5 deployments)": summarise(graph_rows)}
    if local_rows:
        summary["one process (baseline)"] = summarise(local_rows)
    report = {"benchmark": "turn latency, embedded stack, realtime pacing", "machine": machine(),
              "rounds": args.rounds, "inputs": [c[0] for c in cases], "summary": summary,
              "turns": {"graph": graph_rows, "in_process": local_rows}}
    emit(report, args.json)
    if args.png:
        plot(summary, Path(args.png))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
