#!/usr/bin/env bash
# The test command: installs what the tests need (first run only), then runs the whole suite.
# Where the kernel allows it (root), the suite runs in a private network namespace that has only
# loopback, so no test can reach beyond 127.0.0.1; set AVATAR_CHAT_NETNS=0 to run without it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The avatar-pack tool's own venv (mediapipe pins numpy<2; first run ~1 min), for
# tests/integration/test_make_pack.py. A failure here stops the run: that test must not be skipped.
AVATAR_CHAT_PACK_PYTHON=$(bash scripts/make_pack_venv.sh)
export AVATAR_CHAT_PACK_PYTHON
# Chromium for the browser test (tests/cluster/test_browser.py): Debian's package, needed by the
# tests only (the service never needs it). Playwright never downloads a browser.
if [ "${AVATAR_CHAT_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing chromium with apt (for the browser test)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "[test] apt-get install chromium failed: the browser test will fail" >&2
  else
    echo "[test] chromium is missing and this is not root with apt: install it (apt-get install" \
         "chromium) or set AVATAR_CHAT_SKIP_BROWSER=1; the browser test fails without it" >&2
  fi
fi

VENV=${AVATAR_CHAT_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH" PYTHONUNBUFFERED=1
cmd=(python -m pytest -p no:cacheprovider -ra "$@")
if [ "${AVATAR_CHAT_NETNS:-1}" = 1 ] && unshare -n true 2>/dev/null; then
  # -f -p --mount-proc: when pytest exits, every process inside (Ray included) ends with it.
  exec unshare -fpn --mount-proc sh -c 'ip link set lo up && exec "$@"' sh "${cmd[@]}"
fi
exec "${cmd[@]}"
