#!/usr/bin/env bash
# Creates .venv (once) and installs keras-aswa with every backend and the test
# tools. torch is pinned: unpinned, pip would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[all,test]" "torch==2.13.0"
