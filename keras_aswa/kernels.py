"""The two weight operations whose cost grows with the model, per backend.

Averaging is memory-bound: what it costs is the number of passes over the
weights' bytes. `keras.ops` spends three passes (and three fresh buffers) on
`E + (θ - E) / (n + 1)`, and a copy on every swap. Here each operation is one
pass, or none, on the tensors' own device and layout (JAX keeps the
sharding):

- `blend`: the running-average step as one fused kernel (a jitted function
  on JAX, an XLA-compiled one on TensorFlow, `torch.lerp`, as
  `torch.optim.swa_utils` does, on torch).
- `exchange`: puts a value into a variable and hands back the previous one,
  by reference where the backend allows it (JAX arrays are immutable, torch
  swaps the parameter's storage); TensorFlow copies on write, so the previous
  value survives the assign without an explicit copy.
"""

from __future__ import annotations

import functools

from keras import backend, ops

from keras_aswa import internals


def blend(average, theta, count: int):
    """`average + (theta - average) / (count + 1)`, in `average`'s dtype.

    Args:
        average: The mean of `count` members, a backend tensor.
        theta: One more member, of any floating dtype; read, not kept.
        count: How many members `average` holds.

    Returns:
        A new tensor: the mean of the `count + 1` members.
    """
    return _blend_kernel()(average, theta, count)


def read(variable):
    """The variable's value as a tensor, without copying it.

    On TensorFlow and torch the result shares the variable's buffer: what
    must outlive the next write into the variable is copied, or exchanged
    out of it.

    Args:
        variable: A Keras variable.

    Returns:
        Its value, detached from any autograd graph.
    """
    if backend.backend() == "jax":
        return variable.value  # immutable already; stop_gradient costs a dispatch
    return ops.stop_gradient(variable.value)


def exchange(variable, value):
    """Puts `value` into `variable` and returns the value it held.

    The caller hands `value` over (the variable may use its buffer) and gets
    the previous value, which nothing else will write into.

    Args:
        variable: A Keras variable.
        value: A tensor of the variable's shape and dtype, on its device.

    Returns:
        The previous value, detached from any autograd graph.
    """
    if backend.backend() == "torch":
        return internals.torch_swap_storage(variable.value, value)
    previous = read(variable)
    variable.assign(value)
    return previous


@functools.cache
def _blend_kernel():
    name = backend.backend()
    if name == "jax":
        import jax

        # `count` is traced, not static: one compilation per shape and dtype.
        return jax.jit(lambda e, t, n: e + (t.astype(e.dtype) - e) / (n + 1))
    if name == "torch":
        import torch

        def torch_blend(e, t, n):
            with torch.no_grad():
                return torch.lerp(e, t.to(e.dtype), 1.0 / (n + 1))

        return torch_blend
    if name == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True, reduce_retracing=True)
        def xla_blend(e, t, n):
            return e + (tf.cast(t, e.dtype) - e) / tf.cast(n + 1, e.dtype)

        def tensorflow_blend(e, t, n):
            return xla_blend(e, t, tf.constant(n, tf.int64))

        return tensorflow_blend
    raise NotImplementedError(
        f"keras_aswa trains with the tensorflow, jax or torch backend, not {name!r}."
    )
