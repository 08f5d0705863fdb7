#!/usr/bin/env bash
# What a new user meets, one backend at a time: builds the sdist and wheel and
# checks them with twine, then, in a fresh venv per backend holding only that
# backend (and no KERAS_BACKEND), runs the quickstart notebook end to end
# (KERAS_ASWA_SMOKE=1). The TensorFlow venv gets the built wheel installed first;
# in the JAX and torch venvs the notebook's own install cell installs
# keras-aswa from this checkout. Then, in the same venv, keras-hub with the
# lines docs/finetuning.md gives for that backend (the built wheel in place of
# `keras-aswa`), and examples/finetune_lora.py --smoke (the committed pretrained
# BERT of examples/data/austen_bert, 7 steps).
# Needs .venv (bash dev/setup.sh).
# Usage: bash dev/backend-envs.sh [tensorflow|jax|torch ...]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
envs=${BACKEND_ENVS_DIR:-.venvs}
backends=("$@")
[ ${#backends[@]} -gt 0 ] || backends=(tensorflow jax torch)
dev_py=${DEV_PYTHON:-.venv/bin/python}
rm -rf dist
log=$(mktemp)
"$dev_py" -m build --outdir dist . >"$log" 2>&1 || { cat "$log"; exit 1; }
"$dev_py" -m twine check --strict dist/*
wheel=$(ls dist/keras_aswa-*.whl)
status=0
for b in "${backends[@]}"; do
  start=$SECONDS
  rm -rf "$envs/$b"
  python3 -m venv "$envs/$b"
  py="$envs/$b/bin/python"
  case $b in
    tensorflow) pkgs=("tensorflow-cpu>=2.16" "$wheel[examples]") ;;
    jax) pkgs=("jax>=0.4.30") ;;
    torch) pkgs=("torch==2.13.0") ;;  # the CPU build: see docs/getting-started.md
    *) echo "unknown backend $b" >&2; exit 2 ;;
  esac
  "$py" -m pip install -q --no-compile "${pkgs[@]}" keras nbclient nbformat ipykernel
  echo "=== notebook, $b only: $("$py" -c 'import importlib.util as u; print([m for m in ("tensorflow", "jax", "torch") if u.find_spec(m)])')"
  env -u KERAS_BACKEND KERAS_ASWA_SMOKE=1 KERAS_HOME="$(mktemp -d)" \
    "$py" dev/run_notebook.py examples/quickstart.ipynb --expect-backend "$b" \
    || status=1
  # keras-hub, with the lines docs/finetuning.md gives for this backend.
  case $b in
    tensorflow) hub=("$wheel[hub,tensorflow]") ;;
    jax) hub=("$wheel[hub]" jax) ;;
    torch) hub=("$wheel[hub]" "torch==2.13.0") ;;  # docs: torch (pinned, as above: kept)
  esac
  hub_start=$SECONDS
  "$py" -m pip install -q --no-compile "${hub[@]}" \
    && "$py" -m pip install -q --no-compile --no-deps "keras-hub==0.32.*" \
    || status=1
  smoke_start=$SECONDS
  echo "=== finetune_lora.py --smoke, $b: keras-hub installed in $((smoke_start - hub_start)) s"
  env -u KERAS_BACKEND KERAS_BACKEND="$b" KERAS_HOME="$(mktemp -d)" \
    "$py" examples/finetune_lora.py --smoke || status=1
  echo "=== finetune_lora.py --smoke, $b: $((SECONDS - smoke_start)) s"
  echo "=== $b: $((SECONDS - start)) s"
done
exit $status
