"""Test set-up: quiet TensorFlow, a private KERAS_HOME, one backend a process.

The backend is fixed per process: run the suite once per backend with
`KERAS_BACKEND=tensorflow|jax|torch python -m pytest`.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="keras_home_"))

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def backend():
    return keras.backend.backend()
