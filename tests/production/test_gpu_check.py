"""load_tests/gpu_check.py, the GPU check of the production models, run small on the CPU: the tiny
random-weight builds of SenseVoice, CosyVoice 2 and the Qwen2-shaped LLM go through the same code
the GPU run takes (real funasr, CosyVoice 2 and transformers), so a GPU session spends its minutes
on numbers, not on fixing the script. Also: the --plan wheel list fits the upload, and a run that
sees only those wheels (--bare, as on the GPU machine) still passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--size", "tiny", "--device", "cpu", "--dtype", "float32"]
THROUGHPUT = {"asr": "utterances_per_s", "tts": "audio_s_per_s", "llm": "tokens_per_s_total"}

pytestmark = pytest.mark.timeout(600)


def gpu_check(*args: str, timeout: float = 540) -> tuple[dict, str]:
    """Run the check as the GPU session would; its JSON (stdout must hold it alone) and stderr."""
    run = subprocess.run([sys.executable, "-m", "load_tests.gpu_check", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-5000:]
    return json.loads(run.stdout), run.stderr


def assert_stage(doc: dict, stage: str, batches: list[int]) -> None:
    result = doc["stages"][stage]
    assert "error" not in result, result
    assert [b["batch"] for b in result["batches"]] == batches
    for b in result["batches"]:
        assert "skipped" not in b and "error" not in b, b
        assert b["median_ms"] > 0 and b["p95_ms"] >= b["median_ms"] and b["n"] >= 1, b
        assert b[THROUGHPUT[stage]] > 0, b
        assert b["speedup_vs_batch1"] > 0, b
    assert result["batches"][0]["speedup_vs_batch1"] == 1.0  # batch 1 is the baseline
    assert isinstance(result["sessions"], int) and result["sessions"] >= 0
    assert result["sessions_assumption"] and result["stage_s"] > 0
    assert doc["sessions"][stage] == result["sessions"]


def test_tiny_check_on_cpu_reports_every_stage():
    doc, _ = gpu_check(*TINY, "--batches", "1,2")
    assert doc["machine"]["device"] == "cpu" and doc["machine"]["torch"] and doc["machine"]["cpu"]
    assert doc["settings"] == {"size": "tiny", "dtype": "float32", "batches": [1, 2], "repeats": 5,
                               "stages": ["asr", "tts", "llm"], "stage_budget_s": 120.0}
    assert all(seconds > 0 for seconds in doc["build_s"].values()), doc["build_s"]
    for stage in ("asr", "tts", "llm"):
        assert_stage(doc, stage, [1, 2])

    asr = doc["stages"]["asr"]
    assert asr["parameters"] > 0 and all("within_latency_budget" in b for b in asr["batches"])
    tts = doc["stages"]["tts"]
    assert set(tts["parameters"]) == {"llm", "flow", "hift"}  # CosyVoice's LLM was put back
    for b in tts["batches"]:
        # the builder's random LLM never stops: every stream runs to CosyVoice's length cap
        assert b["audio_s_per_stream"] > 2 and b["chunks_per_stream"] >= 2, b
        assert b["rtf_median"] > 0 and 0 <= b["real_time_fraction"] <= 1, b
    llm = doc["stages"]["llm"]
    assert "vLLM" in llm["lower_bound"]
    for b in llm["batches"]:
        assert b["prefill"]["median_ms"] > 0 and b["inter_token_ms"] > 0, b
        assert b["tokens_per_s_total"] == pytest.approx(b["tokens_per_s_per_sequence"] * b["batch"], rel=0.01)
    assert doc["total_s"] > 0


def test_plan_lists_wheels_that_fit_the_upload():
    run = subprocess.run([sys.executable, "-m", "load_tests.gpu_check", "--plan"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    plan = json.loads(run.stdout)
    names = {w["name"].lower() for w in plan["wheels"]}
    assert {"funasr", "cosyvoice-minicpmo", "hyperpyyaml", "diffusers", "kaldi_native_fbank"} <= names
    assert not names & {"torch", "transformers", "vllm", "ray", "scipy", "librosa", "onnxruntime"}
    assert all(w["version"] and w["wheel_mib_estimate"] >= 0 and w["why"] for w in plan["wheels"])
    assert plan["fits_upload"] and 5 < plan["wheels_mib_estimate"] < 64 - plan["repository_mib"]
    assert "torchaudio" in plan["stand_ins"] and plan["fetch_here"].startswith("pip wheel --no-deps")


def test_a_run_that_sees_only_the_planned_wheels_passes():
    """--bare: a `python -S` that sees torch, transformers (with what they require) and the --plan
    wheels only, as the GPU machine will; whatever else the stages import must be stood in for."""
    doc, _ = gpu_check("--bare", *TINY, "--batches", "1", "--repeats", "1")
    for stage in ("asr", "tts", "llm"):
        assert_stage(doc, stage, [1])
    # the large or binary modules CosyVoice 2 imports but an SFT voice never calls
    assert {"onnxruntime", "scipy", "whisper", "torchaudio", "librosa"} <= set(doc["stand_ins"])
