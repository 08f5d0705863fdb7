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
  .venv/bin/python -m pip install -q -e ".[all,test,hub]" "torch==2.13.0"
# keras-hub (examples/finetune_lora.py) without its dependency on the full
# `tensorflow` wheel (through tensorflow-text): the hub extra holds its other
# dependencies (grain included, which keras-hub's fit takes on every backend),
# and tensorflow-text goes in beside tensorflow-cpu, matching its version (see
# docs/finetuning.md; tests/test_finetune_example.py's preset test needs it).
tf_version=$(.venv/bin/python -c "import importlib.metadata as m; print('.'.join(m.version('tensorflow-cpu').split('.')[:2]))")
.venv/bin/python -m pip install -q --no-deps "keras-hub==0.32.*" "tensorflow-text==${tf_version}.*"
