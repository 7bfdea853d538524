#!/usr/bin/env bash
# Creates the avatar-pack tool's own venv (avatars/tools/make_pack.py) and prints its python's path,
# the only thing written to stdout:  PY=$(bash scripts/make_pack_venv.sh)
# Separate from the service's .venv: mediapipe 0.10.21 (the last release with the legacy FaceMesh
# models) pins numpy<2 and pulls in jax. Idempotent: a stamp keyed on this script skips the work.
# AVATAR_CHAT_PACK_VENV sets where it goes (.venv-packtool); PYTHON, which python makes it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AVATAR_CHAT_PACK_VENV:-.venv-packtool}
stamp="$VENV/.packtool-$(sha256sum scripts/make_pack_venv.sh | cut -c1-16)"
# Pinned to what the tool and the shipped avatars/astronaut were checked with. numpy and OpenCV are
# pinned too: their newer releases need numpy 2, which mediapipe 0.10.21 cannot use.
PINS=(mediapipe==0.10.21 scikit-image==0.26.0 numpy==1.26.4 opencv-contrib-python==4.11.0.86)

if [ ! -f "$stamp" ]; then
  # mediapipe 0.10.21 has wheels for CPython 3.9-3.12 and scikit-image 0.26 needs 3.11+.
  fits() { "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' \
    2>/dev/null; }
  PY=
  for cand in ${PYTHON:-python3} python3.12 python3.11; do
    if command -v "$cand" >/dev/null 2>&1 && fits "$cand"; then PY=$cand; break; fi
  done
  if [ -z "$PY" ]; then
    echo "[make_pack_venv] needs Python 3.11 or 3.12 (mediapipe 0.10.21 has no wheels for newer" \
         "ones): install one and set PYTHON=/path/to/python3.12" >&2
    exit 1
  fi
  echo "[make_pack_venv] creating $VENV with $PY: ${PINS[*]} (about 1 GB on disk, once)" >&2
  if [ -x "$VENV/bin/python" ] && ! fits "$VENV/bin/python"; then
    echo "[make_pack_venv] $VENV has a Python other than 3.11/3.12: remove it and run again" >&2
    exit 1
  fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip --disable-pip-version-check install -q "${PINS[@]}" >&2
  rm -f "$VENV"/.packtool-*
  touch "$stamp"
  echo "[make_pack_venv] done" >&2
fi
echo "$(cd "$VENV/bin" && pwd)/python"
