"""The same seeded run takes the same decisions on every backend.

Each backend's pass runs the reference scenario in-process and in a
subprocess under the next backend (tensorflow -> jax -> torch ->
tensorflow), so the three passes together compare every backend.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
from scenarios import aswa_decisions

NEXT = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}


def run_under(backend):
    env = dict(os.environ, KERAS_BACKEND=backend)
    here = os.path.dirname(__file__)
    out = subprocess.run(
        [sys.executable, os.path.join(here, "scenarios.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_decisions_match_next_backend():
    here = aswa_decisions()
    other = run_under(NEXT[keras.backend.backend()])
    assert other["backend"] == NEXT[here["backend"]]
    assert here["decisions"] == other["decisions"]
    # Floating point differs between backends (kernels, fused ops), so
    # scores and weights agree to float32 noise, not bit for bit.
    np.testing.assert_allclose(here["running"], other["running"], rtol=1e-3)
    for a, b in zip(here["weights"], other["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)
