#!/usr/bin/env bash
# Runs the test suites (called by scripts/test.sh, inside its network namespace):
#   the main suite in .venv, then the production backends' suite (tests/production: SenseVoice,
#   CosyVoice 2, vLLM on CPU with random weights) in the production venv, whose python
#   scripts/test.sh's background maker writes to $AVATAR_CHAT_PRODUCTION_STATE/python (waited for here).
# Arguments go to pytest: paths under tests/production run in the production venv, others in .venv;
# with none, both suites run and the run fails if either does.
set -uo pipefail
main=(python -m pytest -p no:cacheprovider -ra --durations=25)
production_python() {
  local state=${AVATAR_CHAT_PRODUCTION_STATE:?run through scripts/test.sh}
  flock "$state/lock" true  # returns once the venv maker is done
  local py
  py=$(cat "$state/python")
  if [ -z "$py" ] || [ ! -x "$py" ]; then
    echo "[test] making the production venv failed (scripts/make_production_venv.sh):" >&2
    tail -40 "$state/log" >&2
    return 1
  fi
  echo "$py"
}
prod() {
  local py
  py=$(production_python) || return 1
  AVATAR_CHAT_PRODUCTION=1 "$py" -m pytest -p no:cacheprovider -ra --durations=15 "$@"
}
if [ $# -gt 0 ]; then
  for a in "$@"; do
    case "$a" in tests/production*) prod "$@"; exit ;; esac
  done
  exec "${main[@]}" "$@"
fi
"${main[@]}"; main_rc=$?
echo "[test] the production backends' suite (tests/production) in its own venv" >&2
prod tests/production; prod_rc=$?
echo "[test] main suite: exit $main_rc; production suite: exit $prod_rc" >&2
[ "$main_rc" = 0 ] && [ "$prod_rc" = 0 ]
