"""What listens where (docs/deployment.md, "What listens where"): every TCP and UDP socket the
cluster's own processes listen on, read from /proc and named by the process that holds it.

Three starts are checked:

- the suite's shared service (tests/cluster/conftest.py), with a live WebRTC session open, so the
  Media replica's ICE sockets are counted too;
- `scripts/serve.sh` itself, as a user runs it (token auth, dashboard, metrics on 8090), inside a
  private network and PID namespace (`unshare`) so its fixed ports cannot clash and everything it
  starts dies with it. The namespace is given an address and a default route (10.99.0.1 on its
  `lo`), as a machine on a network has: Ray then resolves `--node-ip-address=127.0.0.1` to that
  address unless told not to, which is what a namespace with bare loopback would hide;
- a node whose address is not loopback (10.99.0.1), started as the "Several nodes" instructions
  say: where Ray binds the components other nodes must reach.

Only the processes of the cluster the test started are looked at (descendants of the processes it
started), so another Ray on the machine never counts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from avatarchat.local_cluster import BIN, ROOT, descendants
from avatarchat.replica_bind import SERVE_RUN_RUNTIME_ENV_JSON

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

WORKER_PORTS = range(10002, 20000)  # `ray start` --min-worker-port/--max-worker-port defaults
NODE_IP = "10.99.0.1"  # the non-loopback node address, on the private namespace's `lo`

# The components that bind all interfaces on a node whose address is not loopback (on a loopback
# node Ray binds them to 127.0.0.1), with why they cannot be bound to the node address and what to
# firewall. Mirrors the table in docs/deployment.md, "What listens where". Anything else that binds
# all interfaces, anywhere, fails the test.
ALL_INTERFACES_ON_A_CLUSTER_NODE = {
    "GCS": "other nodes' raylets and workers and every driver reach it; Ray 2.60 binds it to all "
           "interfaces whenever the node address is not loopback, no setting -> cluster nodes only",
    "raylet": "node manager and object manager ports, reached by other nodes; bound like the GCS "
              "-> cluster nodes only",
    "core worker RPC": "every Ray worker, actor and driver (Serve controller, proxy, replicas, "
                       "`serve run`) serves Ray's actor calls on a port of --min/--max-worker-port; "
                       "bound like the GCS -> cluster nodes only",
    "dashboard agent gRPC": "ray/dashboard/agent.py binds get_all_interfaces_ip() unless the node "
                            "address is loopback -> cluster nodes only",
    "metrics export": "the node's Prometheus text (--metrics-export-port, no token): "
                      "reporter_agent.py binds '' unless the node address is loopback -> the "
                      "Prometheus host only",
    "dashboard metrics": "the dashboard's own Prometheus port (DASHBOARD_METRIC_PORT 44227), "
                         "dashboard/head.py binds all interfaces unless the node address is "
                         "loopback -> the Prometheus host only",
    "autoscaler metrics": "the autoscaler monitor's Prometheus port (AUTOSCALER_METRIC_PORT 44217), "
                          "same rule -> the Prometheus host only",
}


@dataclass(frozen=True)
class Listener:
    proto: str  # "tcp" or "udp"
    address: str
    port: int
    pid: int
    process: str  # what the process calls itself: "ray::ServeReplica:avatar:ASR", "gcs_server", ...

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        ip = ipaddress.ip_address(self.address)
        return ip.ipv4_mapped or ip if ip.version == 6 else ip

    @property
    def all_interfaces(self) -> bool:
        return self.ip.is_unspecified

    @property
    def loopback(self) -> bool:
        return self.ip.is_loopback

    def __str__(self) -> str:  # an IPv4-mapped address (a dual-stack socket) as plain IPv4
        return f"{self.proto} {self.ip}:{self.port} ({self.process}, pid {self.pid})"


def _decode(hexaddr: str) -> tuple[str, int]:
    ip, port = hexaddr.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:
        address = str(ipaddress.IPv4Address(raw[::-1]))
    else:  # four host-order 32-bit words
        address = str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))
    return address, int(port, 16)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _process_name(pid: int) -> str:
    argv = [a for a in _read(f"/proc/{pid}/cmdline").split("\0") if a]
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):  # Ray workers name themselves: "ray::Class" or "ray::Class.method"
        return argv[0].split()[0].split(".")[0]
    for marker, name in (("gcs_server", "gcs_server"), ("raylet/raylet", "raylet"),
                         ("dashboard/dashboard.py", "dashboard"), ("monitor.py", "autoscaler monitor"),
                         ("ray.util.client.server", "Ray client server"),
                         ("log_monitor", "log monitor")):
        if any(marker in a for a in argv):
            return name
    if any(a.endswith("/serve") for a in argv[:2]) and "run" in argv:
        return "serve run"
    return " ".join(argv)[:80]


def listeners(pids: set[int]) -> list[Listener]:
    """Listening TCP sockets and bound UDP sockets held by these processes, each read in the
    process's own network namespace."""
    tables: dict[str, dict[int, tuple[str, str, int]]] = {}
    found = []
    for pid in sorted(pids):
        try:
            netns = os.readlink(f"/proc/{pid}/ns/net")
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        if netns not in tables:
            table = {}
            for proto in ("tcp", "tcp6", "udp", "udp6"):
                for line in _read(f"/proc/{pid}/net/{proto}").splitlines()[1:]:
                    f = line.split()
                    if (f[3] == "0A") if proto.startswith("tcp") else (f[3] == "07"):  # LISTEN / unconnected
                        table[int(f[9])] = (proto[:3], *_decode(f[1]))
            tables[netns] = table
        name = _process_name(pid)
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in tables[netns]:
                proto, address, port = tables[netns][int(target[8:-1])]
                found.append(Listener(proto, address, port, pid, name))
    return sorted(set(found), key=lambda l: (l.process, l.proto, l.port, l.address))


def component(l: Listener, *, http_port: int, metrics_port: int, dashboard_port: int = 8265) -> str:
    """Which row of the docs table a listener is."""
    p = l.process
    if p == "gcs_server":
        return "GCS"
    if p == "raylet":
        return "raylet"
    if p == "ray::DashboardAgent":
        if l.port == metrics_port:
            return "metrics export"
        return "dashboard agent HTTP" if l.port == 52365 else "dashboard agent gRPC"
    if p == "dashboard":
        return "dashboard" if l.port == dashboard_port else "dashboard metrics"
    if p == "autoscaler monitor":
        return "autoscaler metrics"
    if p == "Ray client server":
        return "Ray client server"
    if p == "ray::RuntimeEnvAgent":
        return "runtime env agent"
    if p == "ray::ProxyActor" and l.port == http_port:
        return "Serve HTTP proxy"
    if p.startswith("ray::ServeReplica:") and l.proto == "udp":
        return "WebRTC ICE (Media)"
    if (p.startswith("ray::") or p == "serve run") and l.port in WORKER_PORTS:
        return "core worker RPC"
    if p.startswith("ray::ServeReplica:"):
        return "Serve replica gRPC (inter-deployment)"
    return f"unknown: {p}"


def check_bindings(found: list[Listener], *, node_ip: str, http_port: int, metrics_port: int,
                   dashboard_port: int = 8265) -> dict[str, list[Listener]]:
    """Asserts what the docs table says; returns the listeners by component."""
    assert found, "no listening socket found: the process filter missed the cluster"
    rows: dict[str, list[Listener]] = {}
    for l in found:
        rows.setdefault(component(l, http_port=http_port, metrics_port=metrics_port,
                                  dashboard_port=dashboard_port), []).append(l)
    report = "\n".join(f"  {c}: " + ", ".join(str(l) for l in ls) for c, ls in sorted(rows.items()))
    print(f"listeners (node address {node_ip}):\n{report}")  # shown with -s, and on failure
    node_loopback = ipaddress.ip_address(node_ip).is_loopback
    wrong = [f"{c}: {l}" for c, ls in rows.items() for l in ls if l.all_interfaces and
             (node_loopback or c not in ALL_INTERFACES_ON_A_CLUSTER_NODE)]
    assert not wrong, "listening on all interfaces:\n  " + "\n  ".join(wrong) + "\nall:\n" + report
    elsewhere = [str(l) for l in found if not (l.all_interfaces or l.loopback or str(l.ip) == node_ip)]
    assert not elsewhere, f"bound neither to loopback nor to the node address {node_ip}: {elsewhere}"
    # The service's own ports: loopback only, whatever the node address. The metrics port follows
    # the node address (Ray's rule, no setting): loopback on a loopback node only.
    for c in ("Serve HTTP proxy", "metrics export"):
        assert rows.get(c), f"{c} not found among:\n{report}"
    for c in ("Serve HTTP proxy", "dashboard", "WebRTC ICE (Media)") + (
            ("metrics export",) if node_loopback else ()):
        assert all(l.loopback for l in rows.get(c, [])), f"{c} not on loopback only:\n{report}"
    # Every replica's inter-deployment gRPC server: the node address, never all interfaces.
    grpc = rows.get("Serve replica gRPC (inter-deployment)", [])
    assert {l.process for l in grpc} >= {f"ray::ServeReplica:avatar:{d}" for d in
                                         ("Gateway", "Media", "ASR", "LLM", "TTS", "Avatar")}, report
    assert all(str(l.ip) == node_ip for l in grpc), report
    assert not any(c.startswith("unknown") for c in rows), report
    return rows


# -- the shared service -------------------------------------------------------------------------

async def test_shared_service_listens_on_loopback_only(service):
    from avatarchat.client.avatar_client import AvatarClient

    client = AvatarClient(service.url, host_addresses=["127.0.0.1"])
    await client.connect()
    try:
        await asyncio.sleep(1)
        pids = descendants([p.pid for p in (service.ray_proc, service.serve_proc) if p is not None])
        found = listeners(pids)
    finally:
        await client.close()
    rows = check_bindings(found, node_ip="127.0.0.1", http_port=service.http_port,
                          metrics_port=service.metrics_port)
    assert rows.get("WebRTC ICE (Media)"), "the live session's ICE sockets were not found"
    assert {l.port for l in rows["GCS"]} == {service.gcs_port}


# -- scripts/serve.sh and a non-loopback node, each in a private namespace ------------------------

def scripted_config(workdir: Path) -> Path:
    """serve_config.yaml with scripted stages (quick start-up; binding does not depend on them)."""
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    doc["applications"][0]["args"]["stages"] = {
        "asr": {"backend": "scripted"}, "llm": {"backend": "scripted"},
        "tts": {"backend": "scripted"}, "avatar": {"backend": "scripted"}}
    path = workdir / "serve_config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Namespace:
    """`sh -c SCRIPT` as PID 1 of a new PID and network namespace; killing unshare kills it all."""

    # A network, as far as Ray can tell: an address besides loopback and a default route from it.
    # Nothing leaves the namespace: the route goes out through `lo`.
    NETWORK = (f"ip link set lo up && ip addr add {NODE_IP}/24 dev lo && "
               f"ip route add default dev lo src {NODE_IP} || exit 1\n")

    def __init__(self, script: str, workdir: Path, env: dict[str, str]):
        self.log = workdir / "namespace.log"
        self.proc = subprocess.Popen(
            ["unshare", "-fpn", "--mount-proc", "--kill-child", "sh", "-c", self.NETWORK + script],
            cwd=ROOT, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(1)
        raise AssertionError(f"{text!r} not seen:\n{self.log.read_text(errors='replace')[-5000:]}")

    def listeners(self) -> list[Listener]:
        return listeners(descendants([self.proc.pid]) - {self.proc.pid})

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # --kill-child: the namespace's PID 1 dies too
            self.proc.wait(30)


def _can_unshare() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "-fpn", "--mount-proc", "sh", "-c", Namespace.NETWORK],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


needs_namespace = pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_unshare(),
                                     reason="needs unshare -fpn (root or user namespaces) and ip")


def namespace_env(workdir: Path) -> dict[str, str]:
    home = Path.home()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(workdir / "home"), RAY_TMPDIR=str(workdir / "ray"),
               XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", str(home / ".cache")),
               PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    (workdir / "home").mkdir()
    (workdir / "ray").mkdir()
    return env


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="avatar-ports-"))  # short: Ray's socket paths must fit 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_namespace
def test_serve_sh_listens_on_loopback_only(workdir):
    """scripts/serve.sh as a user runs it: Ray head on 127.0.0.1 with token auth and the dashboard,
    HTTP on 8000, metrics on 8090."""
    # serve.sh installs first; the namespace has no network, so bring the venv up to date outside.
    venv = os.path.relpath(Path(BIN).parent, ROOT)
    subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=ROOT, check=True, timeout=900,
                   capture_output=True, env={**os.environ, "AVATAR_CHAT_VENV": venv})
    config = scripted_config(workdir)
    env = namespace_env(workdir)
    env["AVATAR_CHAT_VENV"] = venv
    ns = Namespace(f"exec bash scripts/serve.sh {config}", workdir, env)
    try:
        ns.wait_for("[serve] open http://127.0.0.1:8000/", 420)
        found = ns.listeners()
    finally:
        ns.stop()
    rows = check_bindings(found, node_ip="127.0.0.1", http_port=8000, metrics_port=8090)
    assert {l.port for l in rows["Serve HTTP proxy"]} == {8000}
    assert {l.port for l in rows["metrics export"]} == {8090}
    assert {l.port for l in rows["dashboard"]} == {8265}
    assert {l.port for l in rows["GCS"]} == {6379}


@needs_namespace
def test_a_node_with_a_network_address_binds_only_what_ray_cannot_bind(workdir):
    """A head whose address is not loopback, started as docs/deployment.md ("Several nodes") says:
    Ray's inter-node components listen on all interfaces (the allow-list); the service's own ports
    (HTTP, dashboard) stay on loopback; every Serve replica's gRPC server is on the node address."""
    config = scripted_config(workdir)
    env = namespace_env(workdir)
    env["RAY_AUTH_MODE"] = "disabled"  # a private namespace: nothing else can reach it
    ns = Namespace(f"""
ray start --head --node-ip-address={NODE_IP} --dashboard-host=127.0.0.1 --metrics-export-port=8090 \
  --disable-usage-stats || exit 1
export RAY_ADDRESS={NODE_IP}:6379
serve run --runtime-env-json '{SERVE_RUN_RUNTIME_ENV_JSON}' {config} &
{sys.executable} -m deployments.startup_check --timeout 400 && echo NODE-READY
wait
""", workdir, env)
    try:
        ns.wait_for("NODE-READY", 480)
        found = ns.listeners()
    finally:
        ns.stop()
    rows = check_bindings(found, node_ip=NODE_IP, http_port=8000, metrics_port=8090)
    # Where Ray 2.60 gives no choice: these do listen on all interfaces here (the docs say so).
    for c in ("GCS", "raylet", "core worker RPC", "metrics export"):
        assert any(l.all_interfaces for l in rows[c]), f"{c} is no longer on all interfaces: update the docs"
