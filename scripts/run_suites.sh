#!/usr/bin/env bash
# Runs the test suites (called by scripts/test.sh, inside its network namespace):
#   the main suite in .venv, then the production backends' suite (tests/production: SenseVoice,
#   CosyVoice 2, vLLM on CPU with random weights) in the production venv, whose python
#   scripts/test.sh puts in AVATAR_CHAT_PRODUCTION_PYTHON (scripts/make_production_venv.sh).
# Arguments go to pytest: paths under tests/production run in the production venv, others in .venv;
# with none, both suites run and the run fails if either does.
set -uo pipefail
main=(python -m pytest -p no:cacheprovider -ra --durations=25)
prod() {
  AVATAR_CHAT_PRODUCTION=1 "${AVATAR_CHAT_PRODUCTION_PYTHON:?run through scripts/test.sh}" \
    -m pytest -p no:cacheprovider -ra --durations=15 "$@"
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
