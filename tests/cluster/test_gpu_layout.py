"""serve_config.gpu.yaml schedules: every stage gets its fractional GPU on a CPU machine that
declares one logical GPU (own small cluster; the stages are the embedded ones)."""

import json
import subprocess
import sys

import httpx
import pytest

from avatarchat.local_cluster import ROOT, ServeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.models]

PROBE = """
import json, ray
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
print(json.dumps({"total": ray.cluster_resources().get("GPU", 0), "free": ray.available_resources().get("GPU", 0)}))
"""


def test_gpu_config_places_every_stage_on_a_logical_gpu():
    cluster = ServeCluster(ROOT / "serve_config.gpu.yaml", num_gpus=1)
    try:
        cluster.start()
        gpus = json.loads(subprocess.run([sys.executable, "-c", PROBE], env=cluster.env, capture_output=True,
                                         text=True, timeout=120, check=True).stdout.strip().splitlines()[-1])
        reply = httpx.post(f"{cluster.url}/v1/turns", json={"text": "Hi!", "realtime": False}, timeout=120)
    finally:
        cluster.stop()
    assert gpus["total"] == 1
    # ASR 0.15 + LLM 0.5 + TTS 0.15 + Avatar 0.2 = the whole GPU
    assert gpus["free"] == pytest.approx(0.0, abs=1e-6), gpus
    assert reply.status_code == 200 and '"type": "media"' in reply.text
