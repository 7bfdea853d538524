"""A multi-node Ray cluster on this machine (a head and two media nodes, separate `ray start`
processes in a private network namespace) running the real graph: load_tests/multinode.py, run as
documented, with a short Locust run across the nodes. Each check is asserted on its own so a
failure names what broke: sessions on both media nodes, every turn answered and the users' own,
a lost media node ending only its own sessions (its clients told within seconds, the others
answering, a new session on the survivor), and a killed LLM replica failing only the turn it was
streaming."""

import json
import subprocess
import sys

import pytest

from avatarchat.local_cluster import ROOT
from tests.cluster.test_listening_ports import needs_namespace

pytestmark = [pytest.mark.cluster, pytest.mark.models, pytest.mark.timeout(600), needs_namespace]


def test_sessions_span_nodes_and_survive_the_loss_of_a_node_or_a_replica(tmp_path):
    out = tmp_path / "multinode.json"
    proc = subprocess.run([sys.executable, "-m", "load_tests.multinode", "--json", str(out),
                           "--locust-users", "2", "--locust-s", "30"],
                          cwd=ROOT, capture_output=True, text=True, timeout=570)
    log = proc.stdout[-4000:] + proc.stderr[-8000:]
    assert out.exists(), log
    report = json.loads(out.read_text())
    checks = report["checks"]
    for name, passed in checks.items():
        assert passed, (name, report, log[-3000:])
    assert proc.returncode == 0, log
    # what the checks stand on, so a vacuous pass cannot hide
    assert report["spread"]["sessions"] == 2 and report["node_loss"]["sessions_on_lost_node"] >= 1
    assert report["locust"]["turns"] >= 2
