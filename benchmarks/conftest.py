"""The benchmarks' tests run in the test suite's process set-up.

`tests/conftest.py` fixes the environment before Keras is first imported
(quiet TensorFlow, a private KERAS_HOME, JAX's simulated devices, full
float32 matrix products). Importing it here (`tests/` is on pytest's
`pythonpath`) keeps that true whichever directory pytest collects first;
where pytest has already loaded it, this is the same module.
"""

import conftest  # noqa: F401
