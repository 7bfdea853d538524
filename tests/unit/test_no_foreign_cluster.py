"""The suite reaches no Ray cluster it did not start, even on a machine where one ran before."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from avatarchat.local_cluster import ROOT, free_port

pytestmark = pytest.mark.timeout(240)


def test_this_suite_finds_no_cluster_of_its_own_accord():
    from ray._private.services import get_ray_address_from_environment

    assert "RAY_ADDRESS" not in os.environ
    assert get_ray_address_from_environment(None, None) is None  # nothing to connect to


def test_the_local_graph_tests_pass_where_the_last_ray_cluster_is_dead(tmp_path):
    """As after `scripts/serve.sh` ran and stopped: Ray's temp dir names a cluster that is gone.
    The local-testing-mode tests once shut Serve down at teardown, which connected to that address
    and waited 13.5 minutes (or, had it been alive, shut its apps down)."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"}
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT))  # Ray's default temp dir is $TMPDIR/ray
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:randomly", str(Path(ROOT, "tests/unit/test_graph_local.py"))],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout
