#!/usr/bin/env bash
# The device-agnostic tests and the cost benchmark on a GPU machine, JAX and
# torch (the GPU image has no TensorFlow). Keras travels as wheels in .whl/:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 -d .whl keras==3.15.1 namex optree
# Usage: bash dev/gpu-suite.sh OUTDIR
set -u
out=${1:?OUTDIR}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false KERAS_HOME=/tmp/keras_home
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, torch, keras; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, torch.cuda.get_device_name()); print('keras', keras.__version__)"
} > "$out/gpu.txt" 2>&1
tests="tests/test_decision.py tests/test_averaging.py tests/test_kernels.py
  tests/test_aswa.py tests/test_aswa_errors.py tests/test_scoring.py
  tests/test_swa.py tests/test_interplay.py tests/test_batchnorm.py
  tests/test_precision.py tests/test_callbacks_batchnorm.py
  benchmarks/overhead/tests/test_overhead.py"
for b in torch jax; do
  # shellcheck disable=SC2086
  KERAS_BACKEND=$b timeout 170 python3 -m pytest -v -p no:cacheprovider \
    --durations=5 $tests > "$out/pytest-$b.log" 2>&1
  echo "pytest $b: exit $?" >> "$out/summary.txt"
done
for b in torch jax; do
  KERAS_BACKEND=$b timeout 110 python3 -m benchmarks.overhead --backend $b \
    --rss off --out "$out/overhead-$b.md" > "$out/overhead-$b.log" 2>&1
  echo "overhead $b: exit $?" >> "$out/summary.txt"
done
cat "$out/summary.txt"
