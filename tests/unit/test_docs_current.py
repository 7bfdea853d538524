"""Docs that are generated from code must match the code."""

from pathlib import Path

from avatarchat.config import load_serve_config
from avatarchat.config_reference import render

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current():
    assert (ROOT / "docs/configuration.md").read_text() == render(), \
        "run: python -m avatarchat.config_reference > docs/configuration.md"


def test_shipped_serve_configs_are_valid():
    for name, llm in (("serve_config.yaml", "llama_cpp"), ("serve_config.gpu.yaml", "vllm")):
        cfg = load_serve_config(ROOT / name)
        assert cfg.stage("llm").backend == llm
