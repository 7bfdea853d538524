"""serve_config.gpu.yaml on a machine where the weights were never fetched: start-up stops, naming
the stage, the directory it looked in and the command that fetches them (own small cluster)."""

import pytest
import yaml

from avatarchat.local_cluster import ROOT, ServeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(400)]


def test_unfetched_weights_stop_start_up_with_the_fetch_command(tmp_path):
    doc = yaml.safe_load((ROOT / "serve_config.gpu.yaml").read_text())
    stages = doc["applications"][0]["args"]["stages"]
    # Only the LLM is the shipped production backend; the others are cheap so only it matters.
    stages.update(asr={"backend": "scripted"}, tts={"backend": "scripted"}, avatar={"backend": "scripted"})
    empty = tmp_path / "models"
    empty.mkdir()
    cluster = ServeCluster(doc, num_cpus=4, num_gpus=1, extra_env={"AVATAR_CHAT_MODELS": str(empty)})
    first_lines = cluster.failed_startup(300)
    assert "START-UP FAILED" in first_lines
    assert "stage 'llm' (backend 'vllm') failed to load" in first_lines
    assert str(empty / "qwen2.5-1.5b-instruct") in first_lines
    assert "avatar-chat models fetch qwen2.5-1.5b-instruct" in first_lines
