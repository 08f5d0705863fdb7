#!/usr/bin/env bash
# The demo: ASWA on scikit-learn's digits, decisions per epoch, then the test
# accuracy of the last running model against the ASWA ensemble.
# Usage: bash dev/demo.sh [tensorflow|jax|torch]   (default: jax)
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh
KERAS_BACKEND="${1:-jax}" TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python examples/quickstart.py
