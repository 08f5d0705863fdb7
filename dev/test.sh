#!/usr/bin/env bash
# The whole test suite, once per backend (Keras fixes the backend per process).
# The fault-injection matrix (marker `faults`, minutes a backend) is left out
# unless ASWA_FAULTS names the backends to run it on (comma-separated, or 1 for
# all three); each backend runs the matrix's quick subset anyway. .ci/run sets
# ASWA_FAULTS=torch: the matrix tests the resume logic, which is the same on
# every backend, and torch runs it fastest.
# Two lanes share the two cores: TensorFlow, and JAX then torch (then
# TensorFlow's share of the matrix, if asked for). Each run's output is printed
# whole, in that order, when all are done.
# Usage: bash dev/test.sh [pytest args...]   (ASWA_SETUP_DONE=1: .venv is ready)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${ASWA_SETUP_DONE:-}" ] || bash dev/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
logs=$(mktemp -d)
faults=${ASWA_FAULTS:-}
[ "$faults" != 1 ] || faults=tensorflow,jax,torch
markers() {  # markers BACKEND: with the matrix or not
  if [[ ",$faults," == *",$1,"* ]]; then echo "faults or not faults"; else echo "not faults"; fi
}
run() {  # run NAME BACKEND MARKERS [pytest args...]
  local name=$1 backend=$2 markers=$3
  KERAS_HOME="$(mktemp -d)" KERAS_BACKEND="$backend" \
    .venv/bin/python -m pytest -q -p no:cacheprovider -m "$markers" "${@:4}" \
    >"$logs/$name.log" 2>&1 && echo 0 >"$logs/$name.rc" || echo 1 >"$logs/$name.rc"
}
names=(tensorflow jax torch)
run tensorflow tensorflow "not faults" "$@" &
{
  run jax jax "$(markers jax)" "$@"
  run torch torch "$(markers torch)" "$@"
  if [[ ",$faults," == *,tensorflow,* ]]; then
    run tensorflow-faults tensorflow faults "$@"
  fi
} &
wait
[[ ",$faults," != *,tensorflow,* ]] || names+=(tensorflow-faults)
status=0
for name in "${names[@]}"; do
  echo "=== KERAS_BACKEND=${name/-faults/ (its share of the fault matrix)}"
  cat "$logs/$name.log"
  [ "$(cat "$logs/$name.rc")" = 0 ] || status=1
done
exit $status
