"""serve_config.gpu.yaml, run for real: SenseVoice, vLLM and CosyVoice 2 inside the Serve graph, each
on its fractional GPU, on a CPU machine that declares one logical GPU. The models are tiny
random-weight builds of the released architectures (load_tests/random_models), read from the models
directory exactly where `avatar-chat models fetch` puts real ones. Random weights say random words,
so the checks are on what the code controls: every stage ran, the language and the text path."""

import json
import subprocess
import sys

import pytest
import yaml

from avatarchat.client.turn_client import TurnClient
from avatarchat.local_cluster import ROOT, ServeCluster
from avatarchat.sentences import SentenceChunker
from load_tests.random_models import cosyvoice, llm, sensevoice

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

PROBE = """
import json, ray
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
print(json.dumps({"total": ray.cluster_resources().get("GPU", 0), "free": ray.available_resources().get("GPU", 0)}))
"""


def cpu_stand_in(doc: dict) -> dict:
    """The GPU file with only what a CPU cannot do changed: devices and dtypes. Backends, shares,
    batching and model names stay as shipped."""
    args = doc["applications"][0]["args"]
    stages = args["stages"]
    stages["asr"].update(device="cpu", cpu_threads=1)
    # greedy: the random model's end-of-reply rows are zero, so a reply runs to max_tokens
    stages["llm"].update(dtype="float32", kv_cache_gib=0.25, max_model_len=1024, max_num_seqs=4,
                         max_tokens=12, temperature=0.0, enforce_eager=True)
    stages["tts"].update(device="cpu", fp16=False, cpu_threads=1)
    args.setdefault("sessions", {}).update({"host_addresses": ["127.0.0.1"], "max_sessions": 2})
    return doc


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    sensevoice.build(models / "sensevoice-small", "tiny")
    llm.build(models / "qwen2.5-1.5b-instruct", "tiny")
    cosyvoice.build(models / "cosyvoice2-0.5b", "tiny")
    doc = cpu_stand_in(yaml.safe_load((ROOT / "serve_config.gpu.yaml").read_text()))
    cluster = ServeCluster(doc, num_cpus=6, num_gpus=1,
                           extra_env={"AVATAR_CHAT_MODELS": str(models), "TQDM_DISABLE": "1"})
    cluster.start()
    yield cluster
    cluster.stop()


def test_every_stage_holds_its_gpu_share(service):
    out = subprocess.run([sys.executable, "-c", PROBE], env=service.env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip().splitlines()[-1]
    gpus = json.loads(out)
    assert gpus["total"] == 1
    assert gpus["free"] == pytest.approx(0.0, abs=1e-6), gpus  # ASR 0.15 + LLM 0.5 + TTS 0.35
    backends = TurnClient(service.url).info()["stages"]
    assert (backends["asr"], backends["llm"], backends["tts"]) == ("sensevoice", "vllm", "cosyvoice")


def test_a_chinese_turn_flows_through_vllm_and_cosyvoice(service):
    result = TurnClient(service.url).turn(text="你好，请介绍一下你自己。", realtime=False)
    assert result.error is None, result.error
    assert (result.user_text, result.user_language) == ("你好，请介绍一下你自己。", "zh")
    deltas = "".join(e["text"] for e in result.events
                     if e["type"] == "transcript" and e["role"] == "avatar" and not e["final"])
    assert deltas.strip(), "vLLM streamed no text"
    # the sentences spoken are exactly the chunker's cut of the streamed reply (nothing lost)
    spoken = []
    for chunk in result.chunks:
        if not spoken or spoken[-1][0] != chunk.sentence:
            spoken.append((chunk.sentence, chunk.text))
    chunker = SentenceChunker()
    expected = list(chunker.feed(deltas)) + [r for r in [chunker.flush()] if r]
    assert [t for _, t in spoken] == expected
    assert result.reply_text == " ".join(expected)
    # CosyVoice 2 speaks at 24 kHz; frames cover the audio
    assert {c.audio.sample_rate for c in result.chunks} == {24000}
    assert result.audio().size > 0 and len(result.frames()) > 0


def test_a_spoken_turn_is_heard_by_sensevoice(service):
    # real speech: the astronaut pack's voice clip (what SenseVoice makes of it is random)
    result = TurnClient(service.url).turn(wav=ROOT / "avatars/astronaut/voice.wav", realtime=False)
    assert result.error is None or result.error["stage"] != "asr", result.error
    user = next(e for e in result.events if e["type"] == "transcript" and e["role"] == "user")
    # SenseVoice's tags became fields: a language it knows (or none for <|nospeech|>), no tag text
    assert user["language"] in ("zh", "en", "yue", "ja", "ko", None)
    assert "<|" not in user["text"]
    timings = next(e for e in result.events if e["type"] == "timings")
    assert timings["asr"] > 0
