#!/usr/bin/env bash
# Creates .venv (once) and installs keras-aswa with every backend, the
# examples' packages and the test tools. torch is pinned. On Linux, pip's
# default torch is the CUDA build (several GB of NVIDIA packages); for the CPU
# build add PyTorch's CPU wheel index:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash dev/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# PYTHONWARNINGS: silences setuptools' boxed "Editable installation" notice,
# which pip -q still shows.
PYTHONWARNINGS="ignore:Editable installation" \
  .venv/bin/python -m pip install -q -e ".[all,test]" "torch==2.13.0"
