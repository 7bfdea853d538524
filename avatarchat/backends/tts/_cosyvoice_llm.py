"""CosyVoice 2's speech-token LLM, loaded as the official CosyVoice2 does. A module of its own with
no dependency beyond CosyVoice's, so load_tests/gpu_check.py uses it on a bare GPU box too.

cosyvoice-minicpmo's ``CosyVoice2`` builds no LLM (MiniCPM-o makes the speech tokens itself), so
the backend and the GPU check build it here from the model's own cosyvoice2.yaml and llm.pt.
"""

from __future__ import annotations

from pathlib import Path


def load_cosyvoice2_llm(model_dir: Path, device):
    """cosyvoice2.yaml's ``llm`` with llm.pt's weights, on ``device``, in eval mode (flow and HiFT
    are left out of this second read of the config)."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    with open(model_dir / "cosyvoice2.yaml", encoding="utf-8") as f:
        configs = load_hyperpyyaml(f, overrides={
            "qwen_pretrain_path": str(model_dir / "CosyVoice-BlankEN"), "flow": None, "hift": None})
    llm = configs["llm"]
    llm.load_state_dict(torch.load(model_dir / "llm.pt", map_location=device, weights_only=True),
                        strict=True)
    return llm.to(device).eval()
