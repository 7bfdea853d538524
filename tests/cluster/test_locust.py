"""The Locust load test (load_tests/locustfile.py) run as documented, headless, against the shared
real service: 3 users at once speak recorded questions over real WebRTC, one barge-in each, and hang
up. Every turn must be complete and the user's own (the checks are load_tests/conversation.py's)."""

import csv
import os
import subprocess
import sys

import httpx
import pytest

from avatarchat.local_cluster import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.models, pytest.mark.timeout(420)]


def rows(path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def test_three_users_for_thirty_seconds_get_every_turn_and_only_their_own(service, tmp_path):
    out = tmp_path / "locust"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "load_tests" / "locustfile.py"), "--headless",
         "--host", service.url, "--users", "3", "--spawn-rate", "3", "--run-time", "30s",
         "--stop-timeout", "300", "--csv", str(out), "--html", f"{out}.html", "--only-summary",
         "--turns", "2", "--barge-in-every", "2", "--ice-host", "127.0.0.1"],
        env={**os.environ, "LOCUST_SKIP_MONKEY_PATCH": "1"}, cwd=tmp_path, capture_output=True, text=True,
        timeout=400)
    (tmp_path / "locust.log").write_text(proc.stdout + proc.stderr)
    report = proc.stdout[-3000:] + proc.stderr[-6000:]
    stats = rows(f"{out}_stats.csv")
    with open(f"{out}_failures.csv", newline="") as f:
        failures = list(csv.DictReader(f))
    assert not failures, failures
    assert proc.returncode == 0, report
    for name, at_least in (("session setup", 3), ("turn", 6), ("barge-in", 3), ("video fps", 6), ("hang up", 3)):
        assert int(stats[name]["Request Count"]) >= at_least, (name, stats.get(name), report)
        assert int(stats[name]["Failure Count"]) == 0, (name, stats[name])
    assert (tmp_path / "locust.html").stat().st_size > 10_000
    # every user hung up: the Gateway holds no session afterwards
    assert httpx.get(f"{service.url}/v1/sessions").json()["active_sessions"] == 0
