"""The shipped Serve configs scale every model stage explicitly and never cut a turn on scale-down."""

import pytest
import yaml

import graph
from avatarchat.config import load_serve_config
from avatarchat.local_cluster import ROOT

CONFIGS = ("serve_config.yaml", "serve_config.gpu.yaml", "serve_config.cloud.yaml", "serve_config.omni.yaml")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_model_deployment_autoscales_with_explicit_settings(name):
    doc = yaml.safe_load((ROOT / name).read_text())
    deployments = {d["name"]: d for d in doc["applications"][0]["deployments"]}
    config = load_serve_config(ROOT / name)
    turn_timeout = config.limits.turn_timeout_s
    model_stages = [cls.name for cls in graph.stage_deployments(config).values()]
    # exactly the graph's deployments: Serve refuses settings for a deployment the app lacks
    assert set(deployments) == {"Gateway", "Media", *model_stages}, name
    for stage in model_stages:
        d = deployments[stage]
        a = d["autoscaling_config"]
        for key in ("min_replicas", "max_replicas", "target_ongoing_requests"):
            assert key in a, (name, stage, key)
        assert 1 <= a["min_replicas"] <= a["max_replicas"], (name, stage, a)
        assert d["max_ongoing_requests"] >= a["target_ongoing_requests"], (name, stage)
        # a replica being scaled down finishes the turns it carries
        assert d["graceful_shutdown_timeout_s"] > turn_timeout, (name, stage)
    # the Gateway holds no session: it may autoscale, and a scale-down lets a POST /v1/turns finish
    assert deployments["Gateway"]["graceful_shutdown_timeout_s"] > turn_timeout
    # Media autoscales on live sessions, routes by session, and drains within its shutdown budget
    media = deployments["Media"]
    a = media["autoscaling_config"]
    assert 1 <= a["min_replicas"] <= a["max_replicas"], a
    assert a["policy"]["policy_function"] == "deployments.session_autoscaling:SessionAutoscaling"
    assert a["policy"]["policy_kwargs"]["target_sessions_per_replica"] > 0
    assert media["request_router_config"]["request_router_class"] == "deployments.session_routing:SessionRouter"
    drain = load_serve_config(ROOT / name).sessions.drain_timeout_s
    assert media["graceful_shutdown_timeout_s"] > drain


def test_gpu_config_shares_one_gpu_between_the_stages():
    doc = yaml.safe_load((ROOT / "serve_config.gpu.yaml").read_text())
    gpus = {d["name"]: d["ray_actor_options"].get("num_gpus", 0) for d in doc["applications"][0]["deployments"]}
    assert gpus["LLM"] == 0.5 and 0 < gpus["ASR"] < 1 and 0 < gpus["TTS"] < 1
    assert gpus["Avatar"] == 0  # the portrait's face motion is CPU work
    assert sum(gpus.values()) == pytest.approx(1.0)
    # the GPU stages are the production backends, each on its GPU device
    stages = doc["applications"][0]["args"]["stages"]
    assert (stages["asr"]["backend"], stages["llm"]["backend"], stages["tts"]["backend"]) == \
        ("sensevoice", "vllm", "cosyvoice")
    assert stages["asr"]["device"].startswith("cuda") and stages["tts"]["device"] == "cuda"
    # vLLM's memory fraction is of the whole GPU: it must fit inside the LLM deployment's share
    assert stages["llm"]["gpu_memory_utilization"] < gpus["LLM"]


def test_the_cloud_configs_take_keys_from_the_environment_and_fall_back_to_embedded_models():
    cloud = load_serve_config(ROOT / "serve_config.cloud.yaml")
    llm, tts = cloud.stage("llm"), cloud.stage("tts")
    assert (llm.backend, llm.fallback.backend, tts.backend, tts.fallback.backend) == \
        ("openai_compat", "llama_cpp", "cosyvoice_bailian", "hibari")
    assert llm.options.api_key_env == tts.options.api_key_env == "DASHSCOPE_API_KEY"
    omni = load_serve_config(ROOT / "serve_config.omni.yaml")
    assert omni.speech_to_speech and omni.stage("speech_to_speech").backend == "qwen_omni"
    assert not {"asr", "llm", "tts"} & set(omni.stages)
