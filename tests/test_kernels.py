"""The per-backend weight kernels against numpy."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_aswa import kernels

# On TensorFlow the arithmetic runs inside `SlotStore` (tests/test_averaging.py).
tensor_kernels = pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="TensorFlow averages in a SlotStore, not with list kernels",
)


def _kernels():
    """The backend's kernels and its dtype conversion (JAX: one device)."""
    if keras.backend.backend() == "jax":
        return kernels.jax_kernels(None), kernels.jax_dtypes
    return kernels.TORCH, kernels.torch_dtypes


def blend(averages, thetas, count, reuse=False):
    """The mean's step: `count` members averaged, one more (divisor n + 1)."""
    k, _ = _kernels()
    return (k.blend_over if reuse else k.blend)(averages, thetas, float(count + 1))


def show(averages, thetas, count, dtypes):
    k, to_backend = _kernels()
    return k.show(averages, thetas, float(count + 1), to_backend(dtypes))


def cast(values, dtypes):
    k, to_backend = _kernels()
    return k.copy(values, to_backend(dtypes))


SHAPES = [(64, 33), (7,), (3, 2, 5), ()]


def _members(seed, dtype):
    rng = np.random.default_rng(seed)
    e = [rng.normal(size=s).astype("float32") for s in SHAPES]
    t = [ops.cast(rng.normal(size=s), dtype) for s in SHAPES]
    t32 = [ops.convert_to_numpy(ops.cast(x, "float32")) for x in t]
    return e, t, t32


@tensor_kernels
@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("theta_dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("count", [1, 2, 7, 499])
def test_blend_is_the_running_mean_step_of_every_variable(theta_dtype, count, reuse):
    e, t, t32 = _members(count, theta_dtype)
    got = blend([ops.convert_to_tensor(x) for x in e], t, count, reuse)
    assert len(got) == len(SHAPES)
    for g, a, b in zip(got, e, t32, strict=True):
        assert keras.backend.standardize_dtype(g.dtype) == "float32"
        np.testing.assert_allclose(
            ops.convert_to_numpy(g), a + (b - a) / (count + 1), rtol=1e-6, atol=1e-6
        )


@tensor_kernels
def test_blend_keeps_float64():
    e = np.linspace(0, 1, 10)
    t = np.linspace(1, 3, 10)
    (got,) = blend(
        [ops.convert_to_tensor(e, "float64")], [ops.convert_to_tensor(t, "float64")], 3
    )
    if keras.backend.backend() != "jax":  # JAX without x64 has no float64
        assert keras.backend.standardize_dtype(got.dtype) == "float64"
        np.testing.assert_allclose(
            ops.convert_to_numpy(got), e + (t - e) / 4, rtol=1e-15
        )


@tensor_kernels
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_show_rounds_the_float32_blend_once(dtype):
    e, t, t32 = _members(3, "float32")
    dtypes = [dtype, "float32", dtype, "float32"]
    got = show([ops.convert_to_tensor(x) for x in e], t, 4, dtypes)
    for g, a, b, d in zip(got, e, t32, dtypes, strict=True):
        assert keras.backend.standardize_dtype(g.dtype) == d
        rounded = ops.cast(ops.cast(a + (b - a) / np.float32(5), d), "float32")
        # Up to one rounding step of `d`: the float32 blend may differ from
        # numpy's in its last bit, and that may round the other way.
        np.testing.assert_allclose(
            ops.convert_to_numpy(ops.cast(g, "float32")),
            ops.convert_to_numpy(rounded),
            rtol={"float32": 1e-6, "bfloat16": 2**-8, "float16": 2**-11}[d],
            atol=1e-6,
        )


@tensor_kernels
def test_cast_copies():
    values = [ops.convert_to_tensor(np.arange(6, dtype="float32")), ops.ones((2, 2))]
    got = cast(values, ["float32", "bfloat16"])
    np.testing.assert_array_equal(ops.convert_to_numpy(got[0]), np.arange(6))
    assert keras.backend.standardize_dtype(got[1].dtype) == "bfloat16"
    if keras.backend.backend() == "torch":  # JAX arrays are immutable
        assert got[0].data_ptr() != values[0].data_ptr()
        got[0].add_(1)
        np.testing.assert_array_equal(ops.convert_to_numpy(values[0]), np.arange(6))


def test_exchange_returns_the_previous_values_untouched_by_later_writes():
    vs = [
        keras.Variable(np.arange(6, dtype="float32").reshape(2, 3)),
        keras.Variable(np.ones(4, "float32")),
    ]
    new = [
        ops.convert_to_tensor(np.full((2, 3), 9, "float32")),
        ops.convert_to_tensor(np.full(4, 5, "float32")),
    ]
    previous = kernels.exchange(vs, new)
    np.testing.assert_array_equal(ops.convert_to_numpy(vs[0]), np.full((2, 3), 9))
    np.testing.assert_array_equal(ops.convert_to_numpy(vs[1]), np.full(4, 5))
    vs[0].assign(np.zeros((2, 3), "float32"))  # in place on torch and TensorFlow
    np.testing.assert_array_equal(
        ops.convert_to_numpy(previous[0]), np.arange(6).reshape(2, 3)
    )
    back = kernels.exchange(vs, previous)
    np.testing.assert_array_equal(ops.convert_to_numpy(back[0]), np.zeros((2, 3)))
    np.testing.assert_array_equal(ops.convert_to_numpy(back[1]), np.full(4, 5))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(vs[0]), np.arange(6).reshape(2, 3)
    )
    np.testing.assert_array_equal(ops.convert_to_numpy(vs[1]), np.ones(4))


def test_read_is_detached():
    v = keras.Variable(np.ones(3, "float32"))
    value = kernels.read(v)
    if keras.backend.backend() == "torch":
        assert not value.requires_grad
    np.testing.assert_array_equal(ops.convert_to_numpy(value), np.ones(3))


def test_blend_one_divides_as_the_running_mean_always_did():
    # The weight travels as its reciprocal: `e + (t - e) / (n + 1)` bit for
    # bit, which a multiply by a rounded 1 / (n + 1) is not.
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        multiplied_differs = False
        for n in range(1, 60):
            e, t = (rng.standard_normal(2000).astype(dtype) for _ in range(2))
            got = kernels.blend_one(e, t, dtype(n + 1))
            np.testing.assert_array_equal(got, e + (t - e) / dtype(n + 1))
            multiplied_differs |= bool(np.any(got != e + dtype(1 / (n + 1)) * (t - e)))
        assert multiplied_differs
