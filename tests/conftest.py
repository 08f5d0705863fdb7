"""Test set-up: quiet TensorFlow, a private KERAS_HOME, one backend a process.

The backend is fixed per process: run the suite once per backend with
`KERAS_BACKEND=tensorflow|jax|torch python -m pytest`.
"""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="keras_home_"))
# Lets tests import the shared scenarios module and the benchmarks package.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def backend():
    return keras.backend.backend()
