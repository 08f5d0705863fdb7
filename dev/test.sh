#!/usr/bin/env bash
# The whole test suite, once per backend (Keras fixes the backend per process).
# The fault-injection matrix (marker `faults`, minutes) is left out unless
# ASWA_FAULTS=1, as .ci/run sets: ASWA_FAULTS=1 bash dev/test.sh
# Two lanes share the two cores: TensorFlow, and JAX then torch. With
# ASWA_FAULTS=1 the second lane then runs TensorFlow's share of the matrix,
# which would make the first lane the long one. Each run's output is printed
# whole, in that order, when all are done.
# Usage: bash dev/test.sh [pytest args...]   (ASWA_SETUP_DONE=1: .venv is ready)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${ASWA_SETUP_DONE:-}" ] || bash dev/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
logs=$(mktemp -d)
everything="not faults"
[ -z "${ASWA_FAULTS:-}" ] || everything="faults or not faults"
run() {  # run NAME BACKEND MARKERS [pytest args...]
  local name=$1 backend=$2 markers=$3
  KERAS_HOME="$(mktemp -d)" KERAS_BACKEND="$backend" \
    .venv/bin/python -m pytest -q -p no:cacheprovider -m "$markers" "${@:4}" \
    >"$logs/$name.log" 2>&1 && echo 0 >"$logs/$name.rc" || echo 1 >"$logs/$name.rc"
}
names=(tensorflow jax torch)
run tensorflow tensorflow "not faults" "$@" &
{
  run jax jax "$everything" "$@"
  run torch torch "$everything" "$@"
  if [ -n "${ASWA_FAULTS:-}" ]; then
    run tensorflow-faults tensorflow faults "$@"
  fi
} &
wait
[ -z "${ASWA_FAULTS:-}" ] || names+=(tensorflow-faults)
status=0
for name in "${names[@]}"; do
  echo "=== KERAS_BACKEND=${name/-faults/ (its share of the fault matrix)}"
  cat "$logs/$name.log"
  [ "$(cat "$logs/$name.rc")" = 0 ] || status=1
done
exit $status
