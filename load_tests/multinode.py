"""A multi-node Ray cluster on this machine running the real graph, and what it does when a node or
a model replica is lost.

    python -m load_tests.multinode [--json out.json] [--locust-users 3 --locust-s 60]

Nodes: a head (the Gateway, the model stages, Serve's controller and proxy) and two media nodes,
each a separate `ray start --address` with `--num-cpus=0 --resources='{"media_node": 1}'`, so each
holds exactly one Media replica (pinned by that resource, as docs/deployment.md describes) and
nothing else. Sessions are render=browser (the face's motion on a data channel, no video encoding):
with video, four sessions' encoding at media priority starved the LLM on two cores (a reply took
50 s), which measures the box, not the cluster. Everything runs inside a private network and PID namespace (`unshare -fpn`; the
script re-executes itself there): only loopback, so every node's address is 127.0.0.1, nothing
can reach it from outside, and every process ends with the script.

Steps, each reported in the JSON it prints:

1. spread: sessions opened one after another land on both media nodes, and each is answered;
2. locust (``--locust-s`` > 0): load_tests/locustfile.py across the nodes: failed turns, and turns
   that were not the user's own (load_tests/conversation.py's checks);
3. node loss: with sessions on both nodes, one media node is killed (SIGKILL to its raylet and
   its processes): its clients get a ``closed`` event within seconds (the client sees its media stop:
   avatarchat/client/avatar_client.py), the other node's sessions go on answering, and a new session lands on the
   survivor;
4. replica loss: the LLM replica is killed while it streams a reply: that turn ends with an
   ``error`` naming the llm stage, and once Serve has replaced the replica the next turn works.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from avatarchat.local_cluster import ROOT, ServeCluster, descendants
from load_tests.report import emit, machine

MEDIA_RESOURCE = "media_node"
LOOPBACK = ["127.0.0.1"]
PER_REPLICA = 3
# Live at once: one per media node. Each session costs a third of a core here (audio both ways, VAD,
# the client's decoding), and three Ray nodes share two cores.
SESSIONS = 2
QUESTION = "What is your name?"
LONG_QUESTION = "Tell me a long story about the sea, the moon and a small boat."


def config(per_replica: int = PER_REPLICA) -> dict:
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = doc["applications"][0]
    app["args"]["sessions"].update(host_addresses=LOOPBACK, max_sessions=per_replica, media_timeout_s=4.0)
    for d in app["deployments"]:
        if d["name"] == "Media":
            # pinned: only the media nodes have the resource, and only enough for one replica each
            d["ray_actor_options"] = {"num_cpus": 0, "resources": {MEDIA_RESOURCE: 1}}
            d["autoscaling_config"].update(min_replicas=2, max_replicas=2)
    return doc


def is_reply_done(e: dict) -> bool:
    return e["type"] == "transcript" and e["role"] == "avatar" and e.get("final")


async def get(url: str, path: str) -> dict:
    async with httpx.AsyncClient(timeout=30) as http:
        return (await http.get(f"{url}{path}")).json()


async def open_session(url: str):
    from avatarchat.client.avatar_client import AvatarClient

    # render=browser: no video to encode, so two cores can carry three Ray nodes and the models
    return await AvatarClient(url, host_addresses=LOOPBACK, render="browser").connect()


async def ask(client, text: str, timeout_s: float = 120) -> dict:
    start = len(client.received.events)
    client.send_text(text)
    return await client.wait_for_event(lambda e: is_reply_done(e) or e["type"] == "error", timeout_s, start)


async def step_spread(url: str) -> tuple[dict, list]:
    from avatarchat.webrtc.sessions import owner_of

    replicas = (await get(url, "/v1/sessions"))["replicas"]
    node_of = {r["replica"]: r["node_id"] for r in replicas}
    clients = []
    for _ in range(SESSIONS):
        clients.append(await open_session(url))
        await asyncio.sleep(1.5)  # a routing-stats period
    owners = [owner_of(c.session_id) for c in clients]
    answers = [await ask(c, QUESTION) for c in clients]
    return {"media_replicas": len(replicas), "media_nodes": len(set(node_of.values())),
            "sessions_per_node": {n: sum(node_of.get(o) == n for o in owners) for n in set(node_of.values())},
            "answered": sum(is_reply_done(a) for a in answers), "sessions": len(clients)}, clients


def step_locust(url: str, users: int, seconds: int, workdir: Path) -> dict:
    out = workdir / "locust"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "load_tests" / "locustfile.py"), "--headless",
         "--host", url, "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{seconds}s",
         "--stop-timeout", "300", "--csv", str(out), "--only-summary", "--turns", "2",
         "--ice-host", "127.0.0.1", "--render", "browser"],
        env={**os.environ, "LOCUST_SKIP_MONKEY_PATCH": "1"}, cwd=workdir, capture_output=True, text=True,
        timeout=seconds + 400)
    with open(f"{out}_stats.csv", newline="") as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    with open(f"{out}_failures.csv", newline="") as f:
        failures = list(csv.DictReader(f))
    turns = stats.get("turn", {})
    return {"users": users, "seconds": seconds, "returncode": proc.returncode,
            "sessions": int(stats.get("session setup", {}).get("Request Count", 0)),
            "turns": int(turns.get("Request Count", 0)), "failed_turns": int(turns.get("Failure Count", 0)),
            "voice_to_voice_median_ms": float(turns.get("50%", 0) or 0),
            "voice_to_voice_p95_ms": float(turns.get("95%", 0) or 0),
            "failures": [f"{r['Name']}: {r['Error']}" for r in failures][:10]}


async def wait_until(predicate, timeout_s: float, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(every_s)
    return None


async def step_node_loss(url: str, cluster: ServeCluster, clients: list) -> dict:
    """Kill the media node holding the first client's session."""
    from avatarchat.webrtc.sessions import owner_of

    diag = await get(url, "/v1/diagnostics")
    media = {m["replica"]: m for m in diag["media"]}
    victim = owner_of(clients[0].session_id)
    doomed = [c for c in clients if owner_of(c.session_id) == victim]
    spared = [c for c in clients if owner_of(c.session_id) != victim]
    # which `ray start` is that node: the one the replica's process descends from
    node_proc = next(p for p in cluster.node_procs if media[victim]["pid"] in descendants([p.pid]))
    killed_at = time.monotonic()
    cluster.kill_node(node_proc)
    try:
        os.kill(media[victim]["pid"], 9)  # had it left the node's process group
    except ProcessLookupError:
        pass

    async def closed_after(c) -> float | None:
        try:
            await c.wait_for_event(lambda e: e["type"] in ("closed", "error"), 30)
        except TimeoutError:
            return None
        return round(time.monotonic() - killed_at, 2)

    closed = await asyncio.gather(*(closed_after(c) for c in doomed))
    answers = await asyncio.gather(*(ask(c, QUESTION) for c in spared))

    async def survivor_only():
        replicas = (await get(url, "/v1/sessions"))["replicas"]
        return replicas if [r["replica"] for r in replicas] == [r for r in media if r != victim] else None

    seen = await wait_until(survivor_only, 60)
    late = await open_session(url)
    new_owner = owner_of(late.session_id)
    answer = await ask(late, QUESTION)
    deleted = [await c.close() for c in doomed]  # their replica is gone: 404, nothing hangs
    return {"sessions_on_lost_node": len(doomed), "closed_after_s": closed,
            "others_answered": sum(is_reply_done(a) for a in answers), "others": len(spared),
            "survivor_listed_after_s": None if seen is None else round(time.monotonic() - killed_at, 1),
            "new_session_on_survivor": new_owner != victim and new_owner in media,
            "new_session_answered": is_reply_done(answer),
            "delete_on_lost_node": deleted}, [*spared, late]


def llm_pid() -> int | None:
    out = subprocess.run(["pgrep", "-f", "ServeReplica:avatar:LLM"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if len(pids) == 1 else None


async def step_replica_loss(url: str, client) -> dict:
    start = len(client.received.events)
    client.send_text(LONG_QUESTION)
    # the LLM is streaming: the reply's first words have arrived
    await client.wait_for_event(lambda e: e["type"] == "transcript" and e["role"] == "avatar", 120, start)
    pid = llm_pid()
    os.kill(pid, 9)
    killed_at = time.monotonic()
    ended = await client.wait_for_event(lambda e: is_reply_done(e) or e["type"] == "error", 120, start)

    async def replaced():
        new = llm_pid()
        stages = await get(url, "/v1/stages") if new not in (None, pid) else None
        return new if stages and stages["llm"]["stage"] == "llm" else None

    new_pid = await wait_until(replaced, 120)
    replaced_after = round(time.monotonic() - killed_at, 1)
    answer = await ask(client, QUESTION)
    return {"failed_turn_event": ended, "turn_failed_naming_llm": ended["type"] == "error" and ended.get("stage") == "llm",
            "replaced_after_s": replaced_after if new_pid else None, "next_turn_answered": is_reply_done(answer)}


def verdict(report: dict) -> dict:
    s, n, r = report["spread"], report["node_loss"], report["replica_loss"]
    checks = {
        "sessions_on_two_media_nodes": s["media_nodes"] == 2 and all(v >= 1 for v in s["sessions_per_node"].values()),
        "every_session_answered": s["answered"] == s["sessions"],
        "lost_node_clients_closed_within_10s": bool(n["closed_after_s"]) and all(
            t is not None and t <= 10 for t in n["closed_after_s"]),
        "other_node_sessions_answered": n["others_answered"] == n["others"] > 0,
        "new_session_on_survivor": n["new_session_on_survivor"] and n["new_session_answered"],
        "killed_llm_fails_the_turn_with_an_error": r["turn_failed_naming_llm"],
        "next_turn_after_replacement": r["next_turn_answered"],
    }
    if "locust" in report:
        checks["locust_no_failed_turns"] = report["locust"]["failed_turns"] == 0 and not report["locust"]["failures"] \
            and report["locust"]["turns"] > 0
    checks["ok"] = all(checks.values())
    return checks


async def run(args, cluster: ServeCluster) -> dict:
    url = cluster.url
    report: dict = {"machine": machine(), "nodes": {"head": "Gateway, ASR, LLM, TTS, Avatar",
                                                    "media": f"2 x (1 Media replica, {PER_REPLICA} sessions)"}}
    report["spread"], clients = await step_spread(url)
    for c in clients:
        await c.close()
    if args.locust_s > 0:
        report["locust"] = await asyncio.to_thread(step_locust, url, args.locust_users, args.locust_s,
                                                   cluster.workdir)
    clients = []
    for _ in range(SESSIONS):
        clients.append(await open_session(url))
        await asyncio.sleep(1.5)
    report["node_loss"], survivors = await step_node_loss(url, cluster, clients)
    report["replica_loss"] = await step_replica_loss(url, survivors[0])
    for c in survivors:
        await c.close()
    report["checks"] = verdict(report)
    return report


def in_namespace(argv: list[str]) -> int:
    """Run this script again as PID 1's child in a private network + PID namespace."""
    script = "ip link set lo up && exec " + " ".join(
        [sys.executable, "-m", "load_tests.multinode", "--in-namespace", *argv])
    return subprocess.run(["unshare", "-fpn", "--mount-proc", "--kill-child", "sh", "-c", script],
                          cwd=ROOT).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the report here too")
    parser.add_argument("--locust-users", type=int, default=3)
    parser.add_argument("--locust-s", type=int, default=0, help="seconds of Locust across the nodes; 0: none")
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.in_namespace:
        if not shutil.which("unshare"):
            print("needs unshare (util-linux) and root or user namespaces", file=sys.stderr)
            return 2
        return in_namespace(argv)
    # Nodes may join (single-machine mode refuses them); with only loopback here, every node's
    # address is 127.0.0.1 all the same.
    cluster = ServeCluster(config(), num_cpus=4, extra_env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"})
    try:
        cluster.start_ray()
        for _ in range(2):
            cluster.add_node({MEDIA_RESOURCE: 1}, num_cpus=0)
        cluster.start_serve()
        cluster.wait_ready()
        report = asyncio.run(run(args, cluster))
    finally:
        cluster.stop()
    emit(report, args.json)
    return 0 if report["checks"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
