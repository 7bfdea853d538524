"""Live media before models (avatarchat/priority.py), on the shared real service: Ray started as
scripts/serve.sh starts it (workers at nice 0), the Media replica (live sessions) and the Gateway
stay at 0, every model stage lowers
itself by priority.stage_niceness (10), threads included."""

import os
import subprocess

import pytest

pytestmark = [pytest.mark.cluster]


def replica_niceness() -> dict[str, set[int]]:
    """Per deployment, the nice values of all threads of its replica processes."""
    out = subprocess.run(["ps", "-eLo", "ni,args"], capture_output=True, text=True, check=True).stdout
    found: dict[str, set[int]] = {}
    for line in out.splitlines()[1:]:
        ni, _, args = line.strip().partition(" ")
        if "ServeReplica:avatar:" in args:
            name = args.split("ServeReplica:avatar:", 1)[1].split()[0].split(".")[0]
            found.setdefault(name, set()).add(int(ni))
    return found


def test_live_media_outranks_every_model_stage(service):
    found = replica_niceness()
    assert found.get("Media") == {0} and found.get("Gateway") == {0}, found
    for stage in ("ASR", "LLM", "TTS", "Avatar"):
        assert found.get(stage) == {10}, (stage, found)
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # the test itself was left alone
