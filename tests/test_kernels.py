"""The per-backend weight kernels against numpy."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_aswa import kernels


@pytest.mark.parametrize("theta_dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("count", [1, 2, 7, 499])
def test_blend_is_the_running_mean_step(theta_dtype, count):
    rng = np.random.default_rng(count)
    e = rng.normal(size=(64, 33)).astype("float32")
    t = ops.cast(rng.normal(size=(64, 33)), theta_dtype)
    t32 = ops.convert_to_numpy(ops.cast(t, "float32"))
    got = kernels.blend(ops.convert_to_tensor(e), t, count)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), e + (t32 - e) / (count + 1), rtol=1e-6, atol=1e-6
    )


def test_blend_keeps_float64():
    e = np.linspace(0, 1, 10)
    t = np.linspace(1, 3, 10)
    got = kernels.blend(
        ops.convert_to_tensor(e, "float64"), ops.convert_to_tensor(t, "float64"), 3
    )
    if keras.backend.backend() != "jax":  # JAX without x64 has no float64
        assert keras.backend.standardize_dtype(got.dtype) == "float64"
        np.testing.assert_allclose(
            ops.convert_to_numpy(got), e + (t - e) / 4, rtol=1e-15
        )


def test_exchange_returns_the_previous_value_untouched_by_later_writes():
    v = keras.Variable(np.arange(6, dtype="float32").reshape(2, 3))
    new = ops.convert_to_tensor(np.full((2, 3), 9, "float32"))
    previous = kernels.exchange(v, new)
    np.testing.assert_array_equal(ops.convert_to_numpy(v), np.full((2, 3), 9))
    v.assign(np.zeros((2, 3), "float32"))  # in place on torch and TensorFlow
    np.testing.assert_array_equal(
        ops.convert_to_numpy(previous), np.arange(6).reshape(2, 3)
    )
    back = kernels.exchange(v, previous)
    np.testing.assert_array_equal(ops.convert_to_numpy(back), np.zeros((2, 3)))
    np.testing.assert_array_equal(ops.convert_to_numpy(v), np.arange(6).reshape(2, 3))


def test_read_is_detached():
    v = keras.Variable(np.ones(3, "float32"))
    value = kernels.read(v)
    if keras.backend.backend() == "torch":
        assert not value.requires_grad
    np.testing.assert_array_equal(ops.convert_to_numpy(value), np.ones(3))
