"""The fused weight operations, per backend: what a store calls.

Averaging is memory-bound: what it costs is the number of passes over the
weights' bytes and, for models of many small variables, the number of calls
from Python. Each kernel here is one call over the whole list of variables,
and one pass over their bytes or none, on the tensors' own device and layout
(JAX keeps the sharding):

- `blend`: the step `E <- E + w (θ - E)` of every variable at once, with a
  weight `w` that the caller chooses (`keras_aswa.averaging.WeightAverage`
  turns its policy into it: `1 / (n + 1)` for the equal-weight mean), in
  one jitted function on JAX, torch's fused list lerp, as
  `torch.optim.swa_utils` does, on torch, one XLA-compiled function on
  TensorFlow; `blend_over` the same written over the old average, and
  `show`, the same rounded to the variables' dtypes;
- `copy`, `copy_over`: copies in other dtypes (into buffers that nothing
  uses any more);
- `exchange`: puts values into variables and hands back the previous ones,
  by reference (JAX arrays are immutable, torch swaps the parameters'
  storage).

`jax_kernels` and `TORCH` have the same five functions; TensorFlow's blend
is `tf_blend`, called inside the graphs of `keras_aswa.averaging.SlotStore`.

The weight travels as its reciprocal, the `divisor` `1 / w` (`n + 1` for the
mean), and every blend but torch's divides by it (`blend_one`, the formula's
one place; torch's lerp multiplies by `1 / divisor`, as it always did): a
multiply by `w` rounded to float32 would round differently from the
division in about one element of 60, and change a run's decisions.

What still grows with the number of variables, measured on CPU
(`python -m benchmarks.overhead --by-count`): inside TensorFlow's one call, a
read or an assign per variable, microseconds each in its executor; on JAX,
the jitted call's handling of each array it takes and returns; on torch,
`_foreach_*` looping over the tensors, each small one on one core.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

from keras import backend, ops

from keras_aswa import internals


def read(variable):
    """The variable's value as a tensor, without copying it.

    On TensorFlow and torch the result shares the variable's buffer: what
    must outlive the next write into the variable is copied, or exchanged
    out of it.

    Args:
        variable: A Keras variable.

    Returns:
        Its value, detached from any autograd graph.

    Example:

    >>> read(keras.Variable([1.0, 2.0]))
    Array([1., 2.], dtype=float32)
    """
    return read_all([variable])[0]


def read_all(variables: list) -> list:
    """`read` of each variable: one dispatch on the backend for the list.

    Args:
        variables: Keras variables.

    Returns:
        Their values, as `read` returns them.
    """
    name = backend.backend()
    if name == "jax":  # immutable already
        return [internals.variable_storage(v) for v in variables]
    if name == "torch":
        return [internals.variable_storage(v).detach() for v in variables]
    return [ops.stop_gradient(v.value) for v in variables]


def exchange(variables: list, values: list) -> list:
    """Puts `values` into `variables` and returns the values they held.

    The caller hands `values` over (a variable may use their buffers) and
    gets the previous values, which nothing else will write into.

    Args:
        variables: Keras variables.
        values: One tensor for each, of its shape and dtype, on its device.

    Returns:
        The previous values, detached from any autograd graph.

    Example:

    >>> v = keras.Variable([1.0, 2.0])
    >>> exchange([v], [keras.ops.zeros(2)])   # v holds zeros
    [Array([1., 2.], dtype=float32)]
    """
    name = backend.backend()
    if name == "torch":
        return internals.torch_swap_storage(
            [internals.variable_storage(v) for v in variables], values
        )
    previous = read_all(variables)
    for variable, value in zip(variables, values, strict=True):
        if name == "jax":
            # `assign` without its conversion and checks (`values` are of the
            # variable's dtype and shape); keeps the variable's layout.
            internals.assign_unchecked(variable, value)
        else:
            variable.assign(value)
    return previous


def blend_one(e, t, divisor):
    """`E + w (θ - E)` for one variable, the weight `w` given as `1 / divisor`.

    The blend's one formula, written with operators so that numpy arrays,
    JAX arrays and TensorFlow tensors all take it (torch's kernels use its
    fused lerp instead).

    Args:
        e: The average `E`, in the accumulation dtype.
        t: The member `θ`, already in `e`'s dtype.
        divisor: `1 / w`, a scalar of `e`'s dtype (or a Python number).

    Returns:
        The blend, of `e`'s dtype.

    Example:

    A third member, 4, on the mean 1 of two (`(1 + 1 + 4) / 3`):

    >>> blend_one(np.float32(1), np.float32(4), np.float32(3))
    np.float32(2.0)
    """
    return e + (t - e) / divisor


# --- JAX ----------------------------------------------------------------------


def _blend_all(averages, thetas, divisor):
    return [
        blend_one(e, t.astype(e.dtype), divisor)
        for e, t in zip(averages, thetas, strict=True)
    ]


def _show_all(averages, thetas, divisor, dtypes):
    return [
        blend.astype(d)
        for blend, d in zip(_blend_all(averages, thetas, divisor), dtypes, strict=True)
    ]


def _copy_all(values, dtypes):
    import jax.numpy as jnp

    # A copy even where the dtype is unchanged: a variable takes over what it
    # is assigned, and nothing else may share its buffer.
    return [
        jnp.array(x, dtype=d, copy=True) for x, d in zip(values, dtypes, strict=True)
    ]


def _copy_over(into, values, dtypes):
    del into  # donated: XLA writes the copies over it
    return _copy_all(values, dtypes)


@functools.cache
def jax_kernels(shardings: tuple | None) -> SimpleNamespace:
    """The JAX kernels for lists of arrays laid out as `shardings`.

    Cached per layout, so that a list of shapes compiles once per process.
    `divisor` (a Python float) is traced, not static: one compilation per
    list of shapes, whatever the weights.

    Args:
        shardings: The arrays' shardings, for arrays over several devices
            (XLA would otherwise hand back equivalent ones spelled
            differently, P(None,) for P()); None on one device.

    Returns:
        Jitted `blend(averages, thetas, divisor)`, `blend_over` (the same,
        the averages donated: XLA may write the new ones over them),
        `show(averages, thetas, divisor, dtypes)`, `copy(values, dtypes)` and
        `copy_over(into, values, dtypes)` (`into` donated), the dtypes as
        `jax_dtypes` returns them.
    """
    import jax

    def jit(fn, static=(), donate=()):
        # `keep_unused`: a donated argument the function does not read
        # (`_copy_over`) would otherwise be dropped, and its buffers not reused.
        return jax.jit(
            fn,
            static_argnums=static,
            donate_argnums=donate,
            keep_unused=True,
            out_shardings=None if shardings is None else list(shardings),
        )

    return SimpleNamespace(
        blend=jit(_blend_all),
        blend_over=jit(_blend_all, donate=(0,)),
        show=jit(_show_all, static=(3,)),
        copy=jit(_copy_all, static=(1,)),
        copy_over=jit(_copy_over, static=(2,), donate=(0,)),
    )


def jax_shardings(arrays: list) -> tuple | None:
    """What `jax_kernels` takes for arrays laid out as `arrays`."""
    if arrays and len(arrays[0].sharding.device_set) > 1:
        return tuple(x.sharding for x in arrays)
    return None


def jax_dtypes(dtypes) -> tuple:
    """The dtypes JAX holds for `dtypes`: float64 is float32 unless
    jax_enable_x64; asking for what JAX holds spares a truncation warning at
    every call."""
    import jax

    return tuple(jax.dtypes.canonicalize_dtype(d) for d in dtypes)


# --- torch --------------------------------------------------------------------


def _torch_blend(averages, thetas, divisor):
    thetas = _torch_like(averages, thetas)
    return internals.torch_lerp_all(averages, thetas, 1.0 / divisor)


def _torch_blend_over(averages, thetas, divisor):
    thetas = _torch_like(averages, thetas)
    internals.torch_lerp_all(averages, thetas, 1.0 / divisor, in_place=True)
    return averages


def _torch_like(averages, thetas):
    return [
        t if t.dtype == e.dtype else t.to(e.dtype)
        for e, t in zip(averages, thetas, strict=True)
    ]


def _torch_show(averages, thetas, divisor, dtypes):
    blended = _torch_blend(averages, thetas, divisor)
    return [
        p if p.dtype == d else p.to(d) for p, d in zip(blended, dtypes, strict=True)
    ]


def _torch_copy(values, dtypes):
    import torch

    with torch.no_grad():
        return [x.to(d, copy=True) for x, d in zip(values, dtypes, strict=True)]


def _torch_copy_over(into, values, dtypes):
    del dtypes  # those of `into`
    internals.torch_copy_all(into, values)
    return into


TORCH = SimpleNamespace(
    blend=_torch_blend,
    blend_over=_torch_blend_over,
    show=_torch_show,
    copy=_torch_copy,
    copy_over=_torch_copy_over,
)
"""The torch kernels, with the signatures of `jax_kernels`' (torch dtypes)."""


def torch_dtypes(dtypes) -> tuple:
    """The torch dtypes of Keras dtype names."""
    return tuple(internals.torch_dtype(d) for d in dtypes)


# --- TensorFlow ---------------------------------------------------------------


@functools.cache
def tf_blend(dtypes: tuple):
    """The blend of a list, fused by XLA, its results cast to `dtypes`.

    Cached per dtypes, not per store, so that XLA compiles it once per list
    of shapes in a process, not once per `fit`. Takes `(averages, thetas,
    divisor)`, the divisor a float64 scalar tensor (`1 / w`, see above).
    """
    import tensorflow as tf

    @tf.function(jit_compile=True, autograph=False)
    def blend_all(averages, thetas, divisor):
        return [
            tf.cast(blend_one(e, tf.cast(t, e.dtype), tf.cast(divisor, e.dtype)), d)
            for e, t, d in zip(averages, thetas, dtypes, strict=True)
        ]

    return blend_all
