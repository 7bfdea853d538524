#!/usr/bin/env bash
# The test command: installs what the tests need (first run only), then runs the whole suite.
# Where the kernel allows it (root), the suite runs in a private network namespace that has only
# loopback, so no test can reach beyond 127.0.0.1; set AVATAR_CHAT_NETNS=0 to run without it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV=${AVATAR_CHAT_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH" PYTHONUNBUFFERED=1
cmd=(python -m pytest -p no:cacheprovider -ra "$@")
if [ "${AVATAR_CHAT_NETNS:-1}" = 1 ] && unshare -n true 2>/dev/null; then
  # -f -p --mount-proc: when pytest exits, every process inside (Ray included) ends with it.
  exec unshare -fpn --mount-proc sh -c 'ip link set lo up && exec "$@"' sh "${cmd[@]}"
fi
exec "${cmd[@]}"
