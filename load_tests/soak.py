"""Soak: many sessions one after another, then many at a time, and what the service still holds.

    python -m load_tests.soak [--server URL] [--warmup 10] [--sequential 100] [--concurrent 20]
                              [--concurrent-s 180] [--json out.json] [--png out.png]

Every session is a real WebRTC session from the Python client (loopback): it connects, receives
video, asks one typed question, waits for the whole spoken reply, and hangs up. Phase 1 runs
``--sequential`` sessions one after another; phase 2 keeps ``--concurrent`` sessions going at once
for ``--concurrent-s`` seconds (each user hangs up after its reply and reconnects).

Before, between and after the phases (once no session is live), the service's own account is read
from GET /v1/diagnostics: the Media replicas' (the processes holding the sessions) resident memory,
OS threads, asyncio tasks and peer connections still in memory, and the Gateway's and each stage
replica's resident memory. The baseline is taken after
``--warmup`` sessions: allocators grow to a high-water mark over the first sessions (ONNX Runtime
keeps the largest buffers a model has needed, replies differ in length), which is not a leak; the
memory at start-up and after the first session are reported too. Passes when the
service's memory (Gateway + Media + stages) ends within ``--max-growth-mb`` (50) of the baseline, no peer
connection is left, the Media replicas' asyncio tasks are back to the baseline, and its threads have not
grown past the baseline plus a thread pool's worth (asyncio's default executor keeps up to
min(32, cores + 4) threads once it has needed them).

Without --server it starts its own loopback cluster with serve_config.yaml, its session limit
raised to ``--concurrent``. Prints JSON (with the machine); --png draws memory against sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx

from load_tests.conversation import Conversation
from load_tests.report import emit, machine

LOOPBACK = ["127.0.0.1"]
QUESTION = "Hello!"
THREAD_ALLOWANCE = min(32, (os.cpu_count() or 1) + 4)


def media(diag: dict) -> dict:
    """The Media replicas of /v1/diagnostics taken together: where sessions live, and leak."""
    keys = ("rss_mb", "sessions", "peer_connections", "asyncio_tasks", "threads")
    return {k: sum(r[k] for r in diag["media"]) for k in keys}


def service_memory(diag: dict) -> float:
    stages = [s["rss_mb"] for s in diag["stages"].values() if s and s.get("rss_mb") is not None]
    return round(diag["gateway"]["rss_mb"] + media(diag)["rss_mb"] + sum(stages), 1)


async def diagnostics(server: str, settle_s: float = 30.0) -> dict:
    """/v1/diagnostics once no session is live (waits up to ``settle_s`` for closes to finish)."""
    deadline = time.monotonic() + settle_s
    async with httpx.AsyncClient(timeout=30) as http:
        while True:
            diag = (await http.get(f"{server}/v1/diagnostics")).json()
            g = media(diag)
            if (g["sessions"] == 0 and g["peer_connections"] == 0) or time.monotonic() > deadline:
                diag["service_rss_mb"] = service_memory(diag)
                return diag
            await asyncio.sleep(0.5)


async def one_session(server: str, question: str = QUESTION, timeout_s: float = 120.0) -> str | None:
    """Connect, receive video, ask, wait for the whole reply, hang up. None, or what went wrong."""
    conv = Conversation(server, [], host_addresses=LOOPBACK, timeout_s=timeout_s)
    try:
        await conv.open()
        return await conv.ask(question)
    except Exception as e:  # noqa: BLE001 -- counted and reported, the soak goes on
        return f"{type(e).__name__}: {e}"
    finally:
        await conv.close()


async def sequential(server: str, n: int, samples: list, every: int = 10) -> list[str]:
    errors = []
    for k in range(n):
        if (err := await one_session(server)) is not None:
            errors.append(err)
        if (k + 1) % every == 0 or k + 1 == n:
            samples.append(sample("sequential", k + 1, await diagnostics(server)))
            print(f"  {k + 1} sessions: {samples[-1]}", file=sys.stderr)
    return errors


async def concurrent(server: str, users: int, seconds: float) -> tuple[int, list[str]]:
    """``users`` users for ``seconds``, each a loop of one_session; returns (sessions, errors)."""
    errors: list[str] = []
    done = 0
    stop_at = time.monotonic() + seconds

    async def user():
        nonlocal done
        while time.monotonic() < stop_at:
            if (err := await one_session(server)) is not None:
                errors.append(err)
            done += 1

    await asyncio.gather(*(user() for _ in range(users)))
    return done, errors


def verdict(base: dict, end: dict, max_growth_mb: float) -> dict:
    g0, g1 = media(base), media(end)
    checks = {
        "memory_growth_mb": round(end["service_rss_mb"] - base["service_rss_mb"], 1),
        "media_memory_growth_mb": round(g1["rss_mb"] - g0["rss_mb"], 1),
        "peer_connections_left": g1["peer_connections"],
        "asyncio_tasks": [g0["asyncio_tasks"], g1["asyncio_tasks"]],
        "threads": [g0["threads"], g1["threads"]],
    }
    checks["ok"] = (checks["memory_growth_mb"] <= max_growth_mb and g1["peer_connections"] == 0
                    and g1["asyncio_tasks"] <= g0["asyncio_tasks"]
                    and g1["threads"] <= g0["threads"] + THREAD_ALLOWANCE)
    return checks


def sample(phase: str, sessions: int, diag: dict) -> dict:
    return {"phase": phase, "sessions": sessions, "service_rss_mb": diag["service_rss_mb"],
            "media_rss_mb": media(diag)["rss_mb"],
            "stages_rss_mb": {k: v.get("rss_mb") for k, v in diag["stages"].items() if v}}


async def soak(server: str, n_sequential: int, users: int, seconds: float, max_growth_mb: float,
               warmup: int = 10) -> dict:
    samples = [sample("start", -warmup, await diagnostics(server))]
    for k in range(warmup):
        if (err := await one_session(server)) is not None:
            raise RuntimeError(f"warm-up session {k + 1} failed: {err}")
        if k == 0:
            samples.append(sample("warm-up", 1 - warmup, await diagnostics(server)))
    base = await diagnostics(server)
    samples.append(sample("baseline", 0, base))
    t0 = time.monotonic()
    seq_errors = await sequential(server, n_sequential, samples)
    seq_s = time.monotonic() - t0
    after_seq = await diagnostics(server)
    report = {"baseline": base, "sequential": {
        "sessions": n_sequential, "errors": seq_errors, "seconds": round(seq_s, 1),
        "after": after_seq, "check": verdict(base, after_seq, max_growth_mb)}}
    if users and seconds:
        n, errors = await concurrent(server, users, seconds)
        after = await diagnostics(server, settle_s=60)
        samples.append(sample("concurrent", n_sequential + n, after))
        report["concurrent"] = {"users": users, "seconds": seconds, "sessions": n, "errors": errors,
                                "after": after, "check": verdict(base, after, max_growth_mb)}
    report["samples"] = samples
    report["ok"] = all(report[p]["check"]["ok"] and not report[p]["errors"]
                       for p in ("sequential", "concurrent") if p in report)
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["samples"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([x["sessions"] for x in s], [x["service_rss_mb"] for x in s], "o-", label="service (Gateway + stages)")
    ax.plot([x["sessions"] for x in s], [x["media_rss_mb"] for x in s], "s-", label="Media (sessions)")
    base = next(x["service_rss_mb"] for x in s if x["phase"] == "baseline")
    ax.axhline(base + 50, color="grey", ls="--", lw=1, label="baseline + 50 MB")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("sessions after the warm-up (negative: warm-up)")
    ax.set_ylabel("resident memory, MB")
    ax.set_title("Soak: memory after each batch of sessions (none live)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server")
    p.add_argument("--warmup", type=int, default=10, help="sessions before the baseline is taken")
    p.add_argument("--sequential", type=int, default=100)
    p.add_argument("--concurrent", type=int, default=20)
    p.add_argument("--concurrent-s", type=float, default=180)
    p.add_argument("--max-growth-mb", type=float, default=50)
    p.add_argument("--json")
    p.add_argument("--png")
    a = p.parse_args()
    cluster = None
    server = a.server
    if server is None:
        from avatarchat.local_cluster import ROOT, ServeCluster
        from load_tests.bench_sessions import cluster_config

        cluster = ServeCluster(cluster_config(ROOT / "serve_config.yaml", max(3, a.concurrent)))
        cluster.start()
        server = cluster.url
    try:
        report = asyncio.run(soak(server, a.sequential, a.concurrent, a.concurrent_s, a.max_growth_mb, a.warmup))
    finally:
        if cluster is not None:
            cluster.stop()
    report["machine"] = machine()
    emit(report, a.json)
    if a.png:
        plot(report, Path(a.png))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
