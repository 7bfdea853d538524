"""Capacity: how many simultaneous sessions this machine holds, by running the Locust load test
(load_tests/locustfile.py) at growing user counts against one service.

    python -m load_tests.capacity [--server URL] [--users 1,2,3,4,6,8] [--run-time 60]
                                  [--turns 2] [--render server,browser] [--llm-parallel 1,4]
                                  [--json out.json] [--png out.png]

A user count *holds* when every turn is complete and the user's own (no Locust failure), every
session's faces while the avatar spoke came at >= 24 fps (the lowest "video fps" sample: video
frames, or motion packets in render=browser), and the
voice-to-voice p95 of its turns is <= 1.5 s. For each count the CPU time of each part of the
service (the Gateway with the sessions' media, each model stage, Ray itself) and of the Locust
client is read from /proc over the run, so the report says which resource ran out. Locust's own CSV
and HTML for each count are kept next to the JSON.

Without --server it starts its own loopback cluster with serve_config.yaml, its session limit
raised to the largest count. --llm-parallel compares the LLM's continuous batching settings in one
run (`stages.llm.parallel_sequences`; a fresh cluster for each value, every count and mode run on
each). Prints JSON (with the machine); --png draws the curve.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from avatarchat.local_cluster import ROOT
from load_tests.report import emit, machine

MIN_FPS = 24.0
MAX_V2V_P95_S = 1.5
TICK = os.sysconf("SC_CLK_TCK")


def processes() -> Iterator[tuple[int, str, float]]:
    """(pid, command line, CPU seconds used so far: utime + stime) of every process of this
    machine that /proc lets us read."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        yield int(pid), cmd, (int(fields[11]) + int(fields[12])) / TICK


def deployment_of(cmd: str) -> str | None:
    """The Serve deployment a replica process serves ("ServeReplica:<app>:<deployment>"), or None.
    While a method runs Ray adds its name ("...:Media.perform_graceful_shutdown" as a replica drains)."""
    if "ServeReplica:" not in cmd:
        return None
    return cmd.split("ServeReplica:", 1)[1].split()[0].split(":")[-1].split(".", 1)[0]


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by the service, summed by part: each Serve replica by deployment and
    the rest of Ray (every process of this machine, read from /proc)."""
    out: dict[str, float] = {}
    for _, cmd, used in processes():
        part = deployment_of(cmd)
        if part is None:
            if not ("ray" in cmd or "raylet" in cmd or "gcs_server" in cmd):
                continue
            part = "ray (controller, proxy, raylet, gcs)"
        out[part] = out.get(part, 0.0) + used
    return out


def read_stats(prefix: Path) -> dict[str, dict]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def run_locust(server: str, users: int, run_time: int, turns: int, out: Path, ice_host: str,
               render: str = "server") -> dict:
    before, t0 = cpu_seconds(), time.monotonic()
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # Locust's own CPU, once it has exited
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "load_tests" / "locustfile.py"), "--headless",
         "--host", server, "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{run_time}s",
         "--stop-timeout", "600", "--csv", str(out), "--html", f"{out}.html", "--only-summary",
         "--turns", str(turns), "--ice-host", ice_host, "--render", render],
        env={**os.environ, "LOCUST_SKIP_MONKEY_PATCH": "1"}, capture_output=True, text=True)
    wall = time.monotonic() - t0
    Path(f"{out}.log").write_text(proc.stdout + proc.stderr)
    after = cpu_seconds()
    cpu = {k: round((after.get(k, 0.0) - before.get(k, 0.0)) / wall, 2) for k in after}
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu["locust client"] = round((client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime) / wall, 2)
    stats = read_stats(out)
    turn, fps = stats.get("turn", {}), stats.get("video fps", {})

    def num(row, key):
        return float(row[key]) if row and row.get(key) not in (None, "", "N/A") else None

    row = {"users": users, "locust_exit": proc.returncode, "wall_s": round(wall, 1),
           "turns": int(num(turn, "Request Count") or 0), "failed_turns": int(num(turn, "Failure Count") or 0),
           "failures": sum(int(r["Failure Count"]) for name, r in stats.items() if name != "Aggregated"),
           "voice_to_voice_median_s": _s(num(turn, "50%")), "voice_to_voice_p95_s": _s(num(turn, "95%")),
           "fps_median": num(fps, "50%"), "fps_min": _r(num(fps, "Min Response Time")),
           "session_setup_median_s": _s(num(stats.get("session setup"), "50%")),
           "cpu_cores_by_part": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
           "cpu_cores_total": round(sum(cpu.values()), 2)}
    row["holds"] = (row["failures"] == 0 and row["turns"] > 0 and (row["fps_min"] or 0) >= MIN_FPS
                    and (row["voice_to_voice_p95_s"] or 1e9) <= MAX_V2V_P95_S)
    return row


def _s(ms):
    return None if ms is None else round(ms / 1000, 3)


def _r(x):
    return None if x is None else round(x, 1)


def _series(row: dict) -> str:
    """A curve's name: the render mode, and the LLM setting where the run compared several."""
    mode = row.get("render", "server")
    return mode if row.get("llm_parallel") is None else f"{mode}, LLM x{row['llm_parallel']}"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode in dict.fromkeys(_series(r) for r in rows):
        rs = [r for r in rows if _series(r) == mode]
        n = [r["users"] for r in rs]
        a.plot(n, [r["voice_to_voice_median_s"] for r in rs], "o-", label=f"{mode}: median")
        a.plot(n, [r["voice_to_voice_p95_s"] for r in rs], "s--", label=f"{mode}: p95")
        b.plot(n, [r["fps_median"] for r in rs], "o-", label=f"{mode}: median")
        b.plot(n, [r["fps_min"] for r in rs], "s--", label=f"{mode}: lowest session")
    a.axhline(MAX_V2V_P95_S, color="grey", ls="--", lw=1, label="p95 target 1.5 s")
    a.set_xlabel("simultaneous sessions (Locust users)")
    a.set_ylabel("voice to voice, s")
    a.set_yscale("log")
    a.legend(fontsize=7)
    b.axhline(MIN_FPS, color="grey", ls="--", lw=1, label="24 fps")
    b.set_xlabel("simultaneous sessions (Locust users)")
    b.set_ylabel("faces per second while speaking")
    b.legend(fontsize=7)
    fig.suptitle("Capacity: Locust users against one service (client on the same machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server")
    p.add_argument("--users", default="1,2,3,4,6,8")
    p.add_argument("--run-time", type=int, default=60)
    p.add_argument("--turns", type=int, default=2)
    p.add_argument("--ice-host", default="127.0.0.1")
    p.add_argument("--render", default="server",
                   help="render modes to measure, comma-separated (server, browser): each runs every "
                        "user count, so the modes compare in one run")
    p.add_argument("--llm-parallel",
                   help="values of stages.llm.parallel_sequences to compare, comma-separated (each "
                        "on a fresh cluster); default: the config's own. Not with --server")
    p.add_argument("--out", help="folder for Locust's CSV/HTML (default: a temporary one)")
    p.add_argument("--json")
    p.add_argument("--png")
    a = p.parse_args()
    counts = [int(x) for x in a.users.split(",")]
    modes = [m.strip() for m in a.render.split(",") if m.strip()]
    parallels = [int(x) for x in a.llm_parallel.split(",")] if a.llm_parallel else [None]
    if a.server and a.llm_parallel:
        p.error("--llm-parallel starts its own clusters: leave out --server")
    out = Path(a.out or tempfile.mkdtemp(prefix="capacity-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for parallel in parallels:
        cluster, server = None, a.server
        if server is None:
            from avatarchat.local_cluster import ServeCluster
            from load_tests.bench_sessions import cluster_config

            doc = cluster_config(ROOT / "serve_config.yaml", max(counts))
            if parallel is not None:
                doc["applications"][0]["args"]["stages"]["llm"]["parallel_sequences"] = parallel
            cluster = ServeCluster(doc)
            cluster.start()
            server = cluster.url
        try:
            for mode in modes:
                for n in counts:
                    name = f"locust_{mode}_{n}" + ("" if parallel is None else f"_llm{parallel}")
                    row = run_locust(server, n, a.run_time, a.turns, out / name, a.ice_host, mode)
                    rows.append({"render": mode, "llm_parallel": parallel, **row})
                    print(f"  {_series(rows[-1])}, {n} users: {rows[-1]}", file=sys.stderr)
                    time.sleep(5)  # let the last sessions close before the next count
        finally:
            if cluster is not None:
                cluster.stop()
    capacity = {series: max([r["users"] for r in rows if _series(r) == series and r["holds"]], default=0)
                for series in dict.fromkeys(_series(r) for r in rows)}
    report = {"criteria": {"min_fps": MIN_FPS, "max_voice_to_voice_p95_s": MAX_V2V_P95_S, "failed_turns": 0},
              "capacity_sessions": capacity, "runs": rows, "locust_reports": str(out),
              "run_time_s": a.run_time, "turns_per_session": a.turns, "machine": machine()}
    emit(report, a.json)
    if a.png:
        plot(rows, Path(a.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
