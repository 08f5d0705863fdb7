#!/usr/bin/env bash
# The demo: ASWA on scikit-learn's digits, a table of its decisions per epoch
# with a legend, then the test accuracy of the last running model against the
# ASWA ensemble.
# Usage: bash dev/demo.sh [tensorflow|jax|torch]   (default: jax)
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh
backend="${1:-jax}"
if [ "$backend" = tensorflow ]; then
  KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python examples/quickstart.py
else
  # .venv holds every backend, and Keras' set_random_seed imports TensorFlow
  # whenever it is installed, only to seed it, which prints TensorFlow's
  # start-up notices. Under JAX or torch the demo runs as in an environment
  # without TensorFlow.
  KERAS_BACKEND="$backend" .venv/bin/python -c '
import runpy, sys
sys.modules["tensorflow"] = None
sys.argv = ["examples/quickstart.py"]
runpy.run_path("examples/quickstart.py", run_name="__main__")'
fi
