"""Test set-up: quiet TensorFlow, a private KERAS_HOME, one backend a process.

The backend is fixed per process: run the suite once per backend with
`KERAS_BACKEND=tensorflow|jax|torch python -m pytest`.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="keras_home_"))
# Four simulated host devices for JAX's multi-device tests (test_multidevice.py);
# XLA reads this once, when jax is first imported.
_xla_flags = os.environ.get("XLA_FLAGS", "")
if os.environ.get("KERAS_BACKEND") == "jax" and "device_count" not in _xla_flags:
    _xla_flags += " --xla_force_host_platform_device_count=4"
    os.environ["XLA_FLAGS"] = _xla_flags.strip()

# On GPUs, JAX and TensorFlow multiply float32 matrices in TF32 by default
# (10-bit mantissas): the tests compare against numpy, so ask for full float32.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import keras  # noqa: E402
import pytest  # noqa: E402

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(False)


@pytest.fixture
def backend():
    return keras.backend.backend()
