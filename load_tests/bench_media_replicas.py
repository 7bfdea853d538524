"""Capacity per Media replica: how sessions spread over replicas, what each session costs, and how
sessions per cluster grow with replicas.

    python -m load_tests.bench_media_replicas [--replicas 1,2] [--users 2,4] [--run-time 60]
                                              [--render browser] [--json out.json] [--png out.png]

For each Media replica count a fresh loopback cluster (serve_config.yaml, Media min = max = that
count, room for every user on any replica) runs the Locust load test (load_tests/locustfile.py) at
each user count, as load_tests/capacity.py does. While it runs, GET /v1/sessions is read every 2 s:
how many sessions each replica held (the router's placement) and on which node. Each Media
replica's CPU is read from /proc over the run, so the report gives, per replica, the sessions held,
the lowest fps its sessions got, and its CPU cost per session; the model stages and Ray are reported
beside it. A count *holds* as in capacity.py (no failed turn, every session >= 24 fps while the
avatar speaks, voice-to-voice p95 <= 1.5 s).

The projection for an N-core media node divides the cores left to media by the measured cost of a
session (the median over replicas and counts of CPU cores per session): a measured figure, and an
extrapolation the report labels as such.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from avatarchat.local_cluster import ROOT
from load_tests.capacity import MAX_V2V_P95_S, MIN_FPS, deployment_of, processes, run_locust
from load_tests.report import emit, machine

# Cores a media node keeps for other work (Ray's raylet and agents, the OS) in the projection.
RESERVED_CORES = 0.5


def media_cpu_seconds() -> dict[int, float]:
    """CPU seconds used so far by each Media replica process, by pid (this machine's /proc)."""
    return {pid: used for pid, cmd, used in processes() if deployment_of(cmd) == "Media"}


class SessionSampler:
    """GET /v1/sessions every ``every_s`` in a thread, keeping each replica's highest count."""

    def __init__(self, server: str, every_s: float = 2.0):
        self.server, self.every_s = server, every_s
        self.peak: dict[str, int] = {}
        self.node: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "SessionSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self._stop.wait(self.every_s):
                try:
                    view = http.get(f"{self.server}/v1/sessions").json()
                except (httpx.HTTPError, ValueError):
                    continue
                for r in view.get("replicas", []):
                    self.peak[r["replica"]] = max(self.peak.get(r["replica"], 0), r["active_sessions"])
                    self.node[r["replica"]] = r["node_id"]


def replica_pids(server: str) -> dict[str, int]:
    diag = httpx.get(f"{server}/v1/diagnostics", timeout=60).json()
    return {m["replica"]: m["pid"] for m in diag["media"]}


def one_count(server: str, users: int, run_time: int, turns: int, out: Path, render: str) -> dict:
    pids = replica_pids(server)
    before, t0 = media_cpu_seconds(), time.monotonic()
    with SessionSampler(server) as sampler:
        row = run_locust(server, users, run_time, turns, out, "127.0.0.1", render)
    wall = time.monotonic() - t0
    after = media_cpu_seconds()
    replicas = []
    for name, pid in sorted(pids.items()):
        cores = (after.get(pid, 0.0) - before.get(pid, 0.0)) / wall
        held = sampler.peak.get(name, 0)
        replicas.append({"replica": name, "node_id": sampler.node.get(name, "")[:12], "peak_sessions": held,
                         "cpu_cores": round(cores, 3),
                         "cpu_cores_per_session": round(cores / held, 3) if held else None})
    return {**row, "media_replicas": replicas}


def config(replicas: int, room: int) -> dict:
    from load_tests.bench_sessions import cluster_config

    doc = cluster_config(ROOT / "serve_config.yaml", room)
    for d in doc["applications"][0]["deployments"]:
        if d["name"] == "Media":
            d["autoscaling_config"].update(min_replicas=replicas, max_replicas=replicas)
    return doc


def projection(rows: list[dict], cores: list[int]) -> dict:
    costs = [r["cpu_cores_per_session"] for row in rows for r in row["media_replicas"]
             if r["cpu_cores_per_session"] and r["peak_sessions"] >= 2]
    if not costs:
        return {}
    cost = statistics.median(costs)
    return {"cpu_cores_per_session_median": round(cost, 3), "reserved_cores": RESERVED_CORES,
            "sessions_per_media_node_extrapolated": {str(n): int((n - RESERVED_CORES) / cost) for n in cores},
            "note": "extrapolated from the measured cost per session; models on other nodes"}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for n in sorted({r["replicas"] for r in rows}):
        rs = [r for r in rows if r["replicas"] == n]
        a.plot([r["users"] for r in rs], [r["fps_min"] for r in rs], "o-", label=f"{n} Media replica(s)")
        b.bar([f"{r['users']}u/{n}r\n{m['replica'][:4]}" for r in rs for m in r["media_replicas"]],
              [m["peak_sessions"] for r in rs for m in r["media_replicas"]])
    a.axhline(MIN_FPS, color="grey", ls="--", lw=1, label="24 fps")
    a.set_xlabel("simultaneous sessions (Locust users)")
    a.set_ylabel("lowest session's faces per second")
    a.legend(fontsize=7)
    b.set_ylabel("sessions held (peak)")
    b.set_title("placement: users / replicas, replica", fontsize=8)
    b.tick_params(axis="x", labelsize=6)
    fig.suptitle("Sessions over Media replicas (one 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", default="1,2")
    p.add_argument("--users", default="2,4")
    p.add_argument("--run-time", type=int, default=60)
    p.add_argument("--turns", type=int, default=2)
    p.add_argument("--render", default="browser", choices=["browser", "server"])
    p.add_argument("--project-cores", default="8,16,32", help="node sizes to extrapolate to")
    p.add_argument("--out")
    p.add_argument("--json")
    p.add_argument("--png")
    a = p.parse_args()
    counts = [int(x) for x in a.users.split(",")]
    out = Path(a.out or tempfile.mkdtemp(prefix="media-replicas-"))
    out.mkdir(parents=True, exist_ok=True)
    from avatarchat.local_cluster import ServeCluster

    rows = []
    for n in [int(x) for x in a.replicas.split(",")]:
        # logical CPUs: each replica needs scheduling room; the cores are what they are
        cluster = ServeCluster(config(n, max(counts)), num_cpus=2 + n)
        cluster.start()
        try:
            for users in counts:
                row = one_count(cluster.url, users, a.run_time, a.turns, out / f"locust_{n}r_{users}u", a.render)
                rows.append({"replicas": n, "render": a.render, **row})
                print(f"  {n} replica(s), {users} users: {rows[-1]}", file=sys.stderr)
                time.sleep(5)
        finally:
            cluster.stop()
    capacity = {str(n): max([r["users"] for r in rows if r["replicas"] == n and r["holds"]], default=0)
                for n in dict.fromkeys(r["replicas"] for r in rows)}
    report = {"criteria": {"min_fps": MIN_FPS, "max_voice_to_voice_p95_s": MAX_V2V_P95_S, "failed_turns": 0},
              "capacity_sessions_by_replicas": capacity, "runs": rows,
              "projection": projection(rows, [int(x) for x in a.project_cores.split(",")]),
              "run_time_s": a.run_time, "machine": machine(), "locust_reports": str(out)}
    emit(report, a.json)
    if a.png:
        plot(rows, Path(a.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
