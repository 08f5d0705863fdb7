#!/usr/bin/env bash
# The whole test suite, once per backend (Keras fixes the backend per process).
# The fault-injection matrix (marker `faults`, minutes) is left out; .ci/run
# runs it too: bash dev/test.sh -m "faults or not faults".
# Two lanes share the two cores: TensorFlow, and JAX then torch. Each
# backend's output is printed whole, in that order, when all are done.
# Usage: bash dev/test.sh [pytest args...]   (ASWA_SETUP_DONE=1: .venv is ready)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${ASWA_SETUP_DONE:-}" ] || bash dev/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
logs=$(mktemp -d)
run() {
  local backend=$1
  KERAS_HOME="$(mktemp -d)" KERAS_BACKEND="$backend" \
    .venv/bin/python -m pytest -q -p no:cacheprovider -m "not faults" "${@:2}" \
    >"$logs/$backend.log" 2>&1 && echo 0 >"$logs/$backend.rc" || echo 1 >"$logs/$backend.rc"
}
run tensorflow "$@" &
{ run jax "$@"; run torch "$@"; } &
wait
status=0
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend"
  cat "$logs/$backend.log"
  [ "$(cat "$logs/$backend.rc")" = 0 ] || status=1
done
exit $status
