#!/usr/bin/env bash
# The whole test suite, once per backend (Keras fixes the backend per process).
# The fault-injection matrix (marker `faults`, minutes) is left out; .ci/run
# runs it too: bash dev/test.sh -m "faults or not faults".
# Usage: bash dev/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
status=0
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_HOME="$(mktemp -d)" KERAS_BACKEND="$backend" \
    .venv/bin/python -m pytest -q -p no:cacheprovider -m "not faults" "$@" || status=1
done
exit $status
