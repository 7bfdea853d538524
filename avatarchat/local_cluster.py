"""A local loopback Ray cluster running `serve run CONFIG`, as a user would start it: for tests,
benchmarks and load tests.

Ray's token auth is turned off for this loopback-only test cluster (see docs/deployment.md for a
reachable cluster, where it stays on).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from avatarchat.replica_bind import SERVE_RUN_RUNTIME_ENV_JSON

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])  # the field after the state


def descendants(roots: list[int]) -> set[int]:
    """``roots`` and every process below them, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (ppid := parent_of(int(entry.name))) is not None:
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


class ServeCluster:
    def __init__(self, config: Path | dict, num_cpus: int | None = None, num_gpus: int | None = None,
                 extra_env: dict[str, str] | None = None):
        self.workdir = Path(tempfile.mkdtemp(prefix="avatar-chat-cluster-"))
        doc = config if isinstance(config, dict) else yaml.safe_load(Path(config).read_text())
        self.http_port = free_port()
        doc.setdefault("http_options", {}).update({"host": "127.0.0.1", "port": self.http_port})
        self.certfile: str | None = doc["http_options"].get("ssl_certfile")  # HTTPS when set
        self.config_path = self.workdir / "serve_config.yaml"
        self.config_path.write_text(yaml.safe_dump(doc))
        self.gcs_port = free_port()
        self.metrics_port = free_port()  # Prometheus text at http://127.0.0.1:PORT/metrics
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}",
                    "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    # as scripts/serve.sh starts Ray: workers at nice 0, not 15 (avatarchat/priority.py)
                    "RAY_worker_niceness": "0",
                    "MALLOC_ARENA_MAX": "2",  # as scripts/serve.sh: memory stays flat
                    # as scripts/serve.sh: the node address stays 127.0.0.1 on a machine with a
                    # network, so Ray binds its ports to loopback (docs/deployment.md)
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **(extra_env or {})}
        self.serve_log = self.workdir / "serve_run.log"
        self.serve_proc: subprocess.Popen | None = None
        self.ray_proc: subprocess.Popen | None = None
        self.side_proc: subprocess.Popen | None = None
        self.node_procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"{'https' if self.certfile else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client passes as ``verify`` to trust this service (its own certificate)."""
        return ssl.create_default_context(cafile=self.certfile) if self.certfile else True

    def start_ray(self, timeout_s: float = 120) -> None:
        # A blocking head in its own process group: stop() ends exactly this cluster, never
        # another Ray cluster on the machine (`ray stop` would stop them all).
        cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={self.gcs_port}", "--include-dashboard=false", "--disable-usage-stats",
               f"--metrics-export-port={self.metrics_port}",
               f"--temp-dir={self.workdir / 'ray'}"]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        if self.num_gpus is not None:
            cmd.append(f"--num-gpus={self.num_gpus}")
        self.ray_log = self.workdir / "ray_start.log"
        self.ray_proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=open(self.ray_log, "wb"),
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ray_proc.poll() is not None:
                raise RuntimeError(f"ray start exited:\n{self.ray_log.read_text(errors='replace')[-3000:]}")
            check = subprocess.run([str(BIN / "ray"), "status"], env=self.env, capture_output=True, timeout=60)
            if check.returncode == 0:
                return
            time.sleep(1)
        raise TimeoutError(f"Ray head not up after {timeout_s} s")

    def add_node(self, resources: dict[str, float] | None = None, num_cpus: int = 0,
                 timeout_s: float = 120) -> subprocess.Popen:
        """Start another Ray node on this machine that joins this cluster (a blocking `ray start
        --address` in its own process group: kill_node ends exactly it). Its node address is
        127.0.0.1 like the head's, so it needs a machine (or network namespace) with only loopback,
        or RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 in ``extra_env`` (which lets nodes join at all)."""
        import json

        index = len(self.node_procs) + 1
        cmd = [str(BIN / "ray"), "start", "--block", f"--address=127.0.0.1:{self.gcs_port}",
               "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--disable-usage-stats"]
        if resources:
            cmd.append(f"--resources={json.dumps(resources)}")
        log = open(self.workdir / f"ray_node_{index}.log", "wb")
        proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.node_procs.append(proc)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start (node {index}) exited:\n"
                                   f"{(self.workdir / f'ray_node_{index}.log').read_text(errors='replace')[-3000:]}")
            if self.alive_nodes() >= index + 1:
                return proc
            time.sleep(1)
        raise TimeoutError(f"node {index} did not join within {timeout_s} s")

    def alive_nodes(self) -> int:
        """Nodes the cluster counts as alive (the "Active:" list of `ray status`)."""
        out = subprocess.run([str(BIN / "ray"), "status"], env=self.env, capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            return 0
        active = out.stdout.partition("Active:")[2].partition("Pending:")[0]
        return sum(1 for line in active.splitlines() if "node_" in line)

    @staticmethod
    def kill_node(proc: subprocess.Popen) -> None:
        """A node lost at once: SIGKILL to its `ray start`, its raylet and every process they
        started (the node's workers, replicas included, whatever process group they took)."""
        doomed = descendants([proc.pid])
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)

    def start_serve(self) -> None:
        log = open(self.serve_log, "wb")
        # as scripts/serve.sh: each replica's inter-deployment gRPC server on the node address
        self.serve_proc = subprocess.Popen([str(BIN / "serve"), "run", "--runtime-env-json",
                                            SERVE_RUN_RUNTIME_ENV_JSON, str(self.config_path)],
                                           env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)

    def startup_check(self, timeout_s: float = 600) -> subprocess.CompletedProcess:
        """The same check scripts/serve.sh runs: RUNNING, or the failing stage's reason."""
        return subprocess.run([sys.executable, "-m", "deployments.startup_check", "--timeout", str(timeout_s)],
                              env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s + 60)

    def wait_ready(self, timeout_s: float = 600) -> None:
        check = self.startup_check(timeout_s)
        if check.returncode != 0:
            raise RuntimeError(f"service failed to start:\n{check.stderr}\n{self.log_tail()}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.serve_proc.poll() is not None:
                raise RuntimeError(f"serve run exited ({self.serve_proc.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"service not ready after {timeout_s} s:\n{self.log_tail()}")

    def wait_exit(self, timeout_s: float) -> int:
        try:
            return self.serve_proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return -1

    def log_tail(self, chars: int = 6000) -> str:
        return self.serve_log.read_text(errors="replace")[-chars:] if self.serve_log.exists() else ""

    def start(self) -> "ServeCluster":
        """Ray, then `serve run`, then wait until it serves; a failed start stops what it began."""
        try:
            self.start_ray()
            self.start_serve()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def failed_startup(self, timeout_s: float = 300) -> str:
        """Start Ray and `serve run`, expecting start-up to fail; stop, and return what the start-up
        check said up to its log excerpt (the failing stage and reason). Raises if it started."""
        try:
            self.start_ray()
            self.start_serve()
            check = self.startup_check(timeout_s)
        finally:
            self.stop()
        if check.returncode != 1:
            raise AssertionError(f"start-up did not fail (exit {check.returncode}):\n{check.stderr}")
        return check.stderr.split("---")[0]

    def start_side_sessions(self, timeout_s: float = 120) -> str:
        """Start signaling/standalone.py (the sessions in a plain process beside Ray) on this
        cluster; returns its URL. stop() ends it."""
        port = free_port()
        log_path = self.workdir / "side_sessions.log"
        self.side_proc = subprocess.Popen(
            [sys.executable, "-m", "signaling.standalone", str(self.config_path), "--port", str(port)],
            env=self.env, cwd=ROOT, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.side_proc.poll() is not None:
                raise RuntimeError(f"side session server exited:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"side session server not up after {timeout_s} s")

    def stop(self) -> None:
        """End everything this cluster started. `serve run` and the side server get SIGTERM (their
        graceful exit takes about a second); the Ray nodes are killed outright, every process
        under them included: the cluster is disposable (its state lives in its own temporary
        folder), and Ray's own graceful stop spends ~30 s per cluster waiting on its workers."""
        for proc in (self.side_proc, self.serve_proc):
            if proc is None or proc.poll() is not None:
                continue
            os.killpg(proc.pid, signal.SIGTERM)  # serve run ignores SIGINT in the background
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        for proc in (*self.node_procs, self.ray_proc):
            if proc is not None and proc.poll() is None:
                self.kill_node(proc)
