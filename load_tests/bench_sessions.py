"""Received video fps of N live WebRTC sessions that all speak at once, measured at the client.

    python -m load_tests.bench_sessions [--server URL] [--sessions 1,2,3,4] [--rounds 2]
                                        [--placement replica,replica-priority,side-process]
                                        [--json out.json] [--png out.png]

Each round opens N sessions with the Python client (avatarchat/client/avatar_client.py), lets them idle a second,
then every session speaks a different question into its microphone at the same moment (a real
human recording and TTS-spoken questions), so N replies are rendered, encoded and sent together
while the models work: the worst case for the video sender. For each session it records the video
frames received while the avatar speaks and reports their rate, the worst one-second window and the
95th percentile gap between frames, plus the time from the end of the question to the first
"speaking" event.

Without --server it starts its own loopback cluster per placement (see PLACEMENTS), so the
placements are compared in one run on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from avatarchat.config import load_serve_config
from avatarchat.local_cluster import ROOT, ServeCluster
from load_tests.bench_turn import inputs
from load_tests.report import emit, machine
from avatarchat.client.avatar_client import AvatarClient

LOOPBACK = ["127.0.0.1"]


def placements() -> dict[str, dict]:
    """Where the peer connections live, and at which CPU priority (see avatarchat/priority.py).
    ``env`` is the environment Ray starts with, ``priority`` the config's priority block."""
    ray_defaults = {"RAY_worker_niceness": "15"}
    no_priority = {"media_niceness": 15, "stage_niceness": 0}
    return {
        # Ray's defaults: every worker, the Gateway replica holding the sessions included, at nice 15.
        "replica": {"env": ray_defaults, "priority": no_priority, "side": False},
        # Workers at nice 0 (as scripts/serve.sh starts Ray), every replica at the same priority.
        "replica-nice0": {"env": {}, "priority": {"stage_niceness": 0}, "side": False},
        # Workers at nice 0 and the model stages lower their own priority: media first.
        "replica-media-first": {"env": {}, "priority": {"stage_niceness": 10}, "side": False},
        # The same with the model stages at the lowest priority there is.
        "replica-models-last": {"env": {}, "priority": {"stage_niceness": 19}, "side": False},
        # The sessions in a plain process beside Ray (at this script's nice 0), calling the stage
        # deployments (Ray's nice 15) by handle.
        "side-process": {"env": ray_defaults, "priority": no_priority, "side": True},
    }


def reply_window(client: AvatarClient, start: int) -> tuple[float, float] | None:
    """(first 'speaking' time, the following 'listening' time) after event index ``start``."""
    r = client.received
    speaking = listening = None
    for e, t in zip(r.events[start:], r.event_times[start:]):
        if e.get("type") != "state":
            continue
        if e["state"] == "speaking" and speaking is None:
            speaking = t
        elif e["state"] == "listening" and speaking is not None:
            listening = t
            break
    return (speaking, listening) if speaking and listening else None


def frame_stats(times: list[float], window: tuple[float, float]) -> dict:
    t = np.array([x for x in times if window[0] <= x <= window[1]])
    if len(t) < 3:
        return {"fps": 0.0, "worst_1s_fps": 0.0, "gap_p95_ms": None, "frames": int(len(t))}
    gaps = np.diff(t)
    seconds = np.arange(window[0], window[1] - 1.0, 0.5)
    worst = min((int(((t >= s) & (t < s + 1.0)).sum()) for s in seconds), default=len(t))
    return {"fps": round((len(t) - 1) / (t[-1] - t[0]), 2), "worst_1s_fps": worst,
            "gap_p95_ms": round(float(np.percentile(gaps, 95)) * 1000, 1), "frames": int(len(t))}


async def one_round(server: str, n: int, cases) -> list[dict]:
    clients = [AvatarClient(server, host_addresses=LOOPBACK, keep_frames=0) for _ in range(n)]
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        await asyncio.sleep(1.5)
        marks = [len(c.received.events) for c in clients]
        spoken = [c.say(*cases[i % len(cases)][1:]) for i, c in enumerate(clients)]
        said_at = time.monotonic()
        rows = []
        for i, (c, m) in enumerate(zip(clients, marks)):
            row = {"session": i, "input": cases[i % len(cases)][0]}
            try:
                done = await c.wait_for_event(
                    lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 120, start=m)
                await c.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 60,
                                       start=c.received.events.index(done, m))
            except TimeoutError:
                row["error"] = "no complete reply within 120 s"
                rows.append(row)
                continue
            window = reply_window(c, m)
            if window is None:
                row["error"] = "no speaking window"
            else:
                row.update(frame_stats(c.received.video_times, window))
                row["reply_s"] = round(window[1] - window[0], 2)
                row["end_of_question_to_speaking_s"] = round(window[0] - (said_at + spoken[i]), 3)
            rows.append(row)
        return rows
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def summarise(rows: list[dict]) -> dict:
    def stat(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        if not values:
            return None
        return {"median": round(statistics.median(values), 2), "p5": round(float(np.percentile(values, 5)), 2),
                "p95": round(float(np.percentile(values, 95)), 2), "min": min(values), "max": max(values)}
    return {"sessions_measured": len(rows), "errors": sum(1 for r in rows if "error" in r),
            **{k: stat(k) for k in ("fps", "worst_1s_fps", "gap_p95_ms", "end_of_question_to_speaking_s")}}


def run_placement(server: str, counts: list[int], rounds: int, cases) -> dict:
    out = {}
    for n in counts:
        rows = []
        for _ in range(rounds):
            rows += asyncio.run(one_round(server, n, cases))
        out[str(n)] = {"summary": summarise(rows), "sessions": rows}
        print(f"  {n} sessions: {json.dumps(out[str(n)]['summary'])}", file=sys.stderr)
    return out


def cluster_config(config_path: Path, max_sessions: int, priority: dict | None = None) -> dict:
    doc = yaml.safe_load(config_path.read_text())
    args = doc["applications"][0]["args"]
    args.setdefault("sessions", {}).update({"host_addresses": LOOPBACK, "max_sessions": max_sessions})
    if priority:
        args.setdefault("priority", {}).update(priority)
    return doc


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, by_n in results.items():
        ns = sorted(int(n) for n in by_n)
        med = [by_n[str(n)]["summary"]["fps"]["median"] for n in ns]
        low = [by_n[str(n)]["summary"]["worst_1s_fps"]["min"] for n in ns]
        a.plot(ns, med, marker="o", label=f"{name}")
        b.plot(ns, low, marker="o", label=f"{name}")
    for ax, title in ((a, "median received fps while speaking"), (b, "worst 1-second window (frames)")):
        ax.axhline(25, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("sessions, all speaking at once")
        ax.set_xticks(sorted({int(n) for by_n in results.values() for n in by_n}))
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 28)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="a running service; default: start one per placement")
    parser.add_argument("--config", default=str(ROOT / "serve_config.yaml"))
    parser.add_argument("--sessions", default="1,2,3,4")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--placement", default=",".join(placements()))
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--png", help="draw fps against sessions here")
    args = parser.parse_args()
    counts = [int(n) for n in args.sessions.split(",")]
    # TTS-spoken questions: one utterance each (the human recording has pauses that split it into turns)
    cases = [c for c in inputs(load_serve_config(args.config)) if c[0].endswith("(tts)")]

    results = {}
    if args.server:
        results["given server"] = run_placement(args.server, counts, args.rounds, cases)
    for name in ([] if args.server else args.placement.split(",")):
        spec = placements()[name]
        print(f"placement {name}", file=sys.stderr)
        cluster = ServeCluster(cluster_config(Path(args.config), max(counts), spec["priority"]),
                               extra_env=spec["env"])
        try:
            cluster.start()
            url = cluster.start_side_sessions() if spec["side"] else cluster.url
            results[name] = run_placement(url, counts, args.rounds, cases)
        finally:
            cluster.stop()
    report = {"benchmark": "received video fps, N sessions speaking at once", "machine": machine(),
              "rounds": args.rounds, "inputs": [c[0] for c in cases],
              "summary": {name: {n: r["summary"] for n, r in by_n.items()} for name, by_n in results.items()},
              "sessions": {name: {n: r["sessions"] for n, r in by_n.items()} for name, by_n in results.items()}}
    emit(report, args.json)
    if args.png:
        plot(results, Path(args.png))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
