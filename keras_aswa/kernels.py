"""The weight operations whose cost grows with the model, per backend.

Averaging is memory-bound: what it costs is the number of passes over the
weights' bytes and, for models of many small variables, the number of calls
from Python. Each operation here is one call over the whole list of
variables, and one pass over their bytes or none, on the tensors' own device
and layout (JAX keeps the sharding):

- `blend`: the running-average step `E + (θ - E) / (n + 1)` of every
  variable at once (one jitted function on JAX, `torch._foreach_lerp`, as
  `torch.optim.swa_utils` does, on torch), and `show`, the same rounded to
  the variables' dtypes;
- `exchange`: puts values into variables and hands back the previous ones,
  by reference (JAX arrays are immutable, torch swaps the parameters'
  storage).

TensorFlow charges every tensor that crosses a `tf.function`'s boundary (tens
of microseconds each, more than a small variable's arithmetic). There the
average and the values a swap keeps live in variables of their own
(`SlotStore`), and each operation is one call that passes only the count.

What still grows with the number of variables, measured on CPU
(`python -m benchmarks.overhead --by-count`): inside TensorFlow's one call, a
read or an assign per variable, microseconds each in its executor; on JAX,
the jitted call's handling of each array it takes and returns; on torch,
`_foreach_*` looping over the tensors, each small one on one core.
"""

from __future__ import annotations

import functools

import numpy as np
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


def blend(averages: list, thetas: list, count: int, reuse: bool = False) -> list:
    """`average + (theta - average) / (count + 1)` for each pair, in one call.

    JAX and torch only (TensorFlow: `SlotStore`).

    Args:
        averages: Backend tensors, each the mean of `count` members, in its
            accumulation dtype (float32, or float64).
        thetas: One more member for each, of any floating dtype; read, not
            kept.
        count: How many members each average holds.
        reuse: Whether the results may take over the averages' buffers
            because nothing uses the averages afterwards: JAX donates them,
            torch updates them in place.

    Returns:
        Tensors in the averages' dtypes: the means of `count + 1` members.

    Example:

    >>> blend([keras.ops.ones(2)], [keras.ops.zeros(2)], count=3)
    [Array([0.75, 0.75], dtype=float32)]
    """
    return _kernels().blend(list(averages), list(thetas), count, reuse)


def show(averages: list, thetas: list, count: int, dtypes: list) -> list:
    """`blend`, each result rounded once to its variable's dtype.

    Args:
        averages: As for `blend`.
        thetas: As for `blend`.
        count: As for `blend`.
        dtypes: The dtype of the variable each result goes into.

    Returns:
        New tensors in `dtypes`, which a variable may take over.

    Example:

    >>> show([keras.ops.ones(2)], [keras.ops.zeros(2)], 1, ["bfloat16"])
    [Array([0.5, 0.5], dtype=bfloat16)]
    """
    return _kernels().show(list(averages), list(thetas), count, tuple(dtypes))


def cast(values: list, dtypes: list, into: list | None = None) -> list:
    """Copies of `values` in `dtypes`, never sharing a buffer with them.

    Args:
        values: Backend tensors.
        dtypes: One dtype for each.
        into: Tensors of the results' shapes and dtypes that nothing uses any
            more: the copies reuse their buffers (JAX donates them, torch
            copies into them), sparing an allocation and a free per tensor.

    Returns:
        New tensors, which a variable may take over.

    Example:

    >>> cast([keras.ops.ones(2)], ["float16"])
    [Array([1., 1.], dtype=float16)]
    """
    if into is None:
        return _kernels().cast(list(values), tuple(dtypes))
    return _kernels().cast_into(list(into), list(values))


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


@functools.cache
def _jax_jit(fn, static, donate, shardings):
    import jax

    # `count` is traced, not static: one compilation per list of shapes.
    # Sharded lists name their output shardings: XLA would otherwise hand
    # back equivalent ones spelled differently (P(None,) for P()).
    # `keep_unused`: a donated argument the function does not read (`_copy_over`)
    # would otherwise be dropped, and its buffers not reused.
    return jax.jit(
        fn,
        static_argnums=static,
        donate_argnums=donate,
        keep_unused=True,
        out_shardings=None if shardings is None else list(shardings),
    )


class _Jax:
    @staticmethod
    def _call(fn, like, *args, static=(), donate=()):
        shardings = None
        if like and len(like[0].sharding.device_set) > 1:
            shardings = tuple(x.sharding for x in like)
        return _jax_jit(fn, static, donate, shardings)(*args)

    def blend(self, averages, thetas, count, reuse):
        # A replaced average is donated: XLA may write the new one over it.
        donate = (0,) if reuse else ()
        return self._call(_blend_all, averages, averages, thetas, count, donate=donate)

    @staticmethod
    @functools.cache  # per list of dtypes, not per call
    def _canonical(dtypes):
        import jax

        # float64 is float32 unless jax_enable_x64: ask for what JAX holds,
        # rather than for float64 and a truncation warning at every call.
        return tuple(jax.dtypes.canonicalize_dtype(d) for d in dtypes)

    def show(self, averages, thetas, count, dtypes):
        dtypes = self._canonical(tuple(dtypes))
        return self._call(
            _show_all, thetas, averages, thetas, count, dtypes, static=(3,)
        )

    def cast(self, values, dtypes):
        dtypes = self._canonical(tuple(dtypes))
        return self._call(_copy_all, values, values, dtypes, static=(1,))

    def cast_into(self, into, values):
        dtypes = tuple(x.dtype for x in into)
        return self._call(
            _copy_over, into, into, values, dtypes, static=(2,), donate=(0,)
        )


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


def _mean(e, t, n):
    return e + (t.astype(e.dtype) - e) / (n + 1)


def _blend_all(averages, thetas, n):
    return [_mean(e, t, n) for e, t in zip(averages, thetas, strict=True)]


def _show_all(averages, thetas, n, dtypes):
    return [
        _mean(e, t, n).astype(d)
        for e, t, d in zip(averages, thetas, dtypes, strict=True)
    ]


class _Torch:
    def __init__(self):
        import torch

        self._torch = torch
        self._dtype = functools.cache(internals.torch_dtype)

    def blend(self, averages, thetas, count, reuse):
        torch = self._torch
        with torch.no_grad():
            thetas = [
                t if t.dtype == e.dtype else t.to(e.dtype)
                for e, t in zip(averages, thetas, strict=True)
            ]
            if reuse:
                torch._foreach_lerp_(averages, thetas, 1.0 / (count + 1))
                return averages
            return list(torch._foreach_lerp(averages, thetas, 1.0 / (count + 1)))

    def show(self, averages, thetas, count, dtypes):
        blended = self.blend(averages, thetas, count, reuse=False)
        return [
            p if p.dtype == (t := self._dtype(d)) else p.to(t)
            for p, d in zip(blended, dtypes, strict=True)
        ]

    def cast_into(self, into, values):
        with self._torch.no_grad():
            self._torch._foreach_copy_(into, values)
        return into

    def cast(self, values, dtypes):
        with self._torch.no_grad():
            return [
                x.to(self._dtype(d), copy=True)
                for x, d in zip(values, dtypes, strict=True)
            ]


@functools.cache
def _kernels():
    name = backend.backend()
    if name == "jax":
        return _Jax()
    if name == "torch":
        return _Torch()
    raise NotImplementedError(
        f"keras_aswa trains with the tensorflow, jax or torch backend, not {name!r}"
        " (on TensorFlow, the average is a SlotStore)."
    )


class SlotStore:
    """The average of a list of variables on TensorFlow, in variables of its own.

    Holds `E` (the average), the running values kept while something else is
    shown (`saved`) and the provisional average kept for `commit`
    (`pending`) in TensorFlow variables beside the model's; each operation
    is one call of one `tf.function` over all of them. Assigning one
    variable's value to another shares the buffer (TensorFlow copies on
    write), so keeping and putting back values costs no pass over the bytes:
    only the averaging arithmetic does, in one XLA-compiled kernel.

    The same interface as `keras_aswa.averaging.TensorStore`, which holds the
    average on JAX, torch and in host memory.

    Args:
        variables: The Keras variables to average, all floating point.
        dtypes: The accumulation dtype of each (float32 or float64).

    Example:

    ```python
    store = SlotStore(model.trainable_weights, ["float32"] * n)
    store.restart()            # E <- θ
    store.swap_in(count=1)     # the model holds E + (θ - E) / 2
    store.swap_out(keep=True)  # θ is back; E + (θ - E) / 2 is kept
    store.commit(count=1)      # ...and becomes E
    ```
    """

    def __init__(self, variables: list, dtypes: list):
        import tensorflow as tf

        self.variables = list(variables)
        self.dtypes = list(dtypes)
        self.average: list | None = None
        self.saved: list | None = None
        self.pending: list | None = None
        var_dtypes = [backend.standardize_dtype(v.dtype) for v in self.variables]
        # Variables that hold the provisional average unrounded: it is read
        # back from them afterwards. The others blend again on `commit`.
        same = [d == a for d, a in zip(var_dtypes, self.dtypes, strict=True)]
        self._same = same

        def slots(dtypes):
            # Of any shape, so that a slot releases its buffer when emptied.
            return [
                tf.Variable(tf.zeros([0], d), shape=tf.TensorShape(None))
                for d in dtypes
            ]

        self._e, self._s, self._p = slots(dtypes), slots(var_dtypes), slots(dtypes)

        # The model's own tf.Variables, read and written without Keras'
        # per-call checks: a graph of fewer ops, each costing microseconds.
        own = [internals.variable_storage(v) for v in self.variables]
        nothing = {d: tf.zeros([0], d) for d in set(self.dtypes + var_dtypes)}

        def get(slots):
            return [s.read_value() for s in slots]

        def where(items, kept):
            return [x for x, s in zip(items, same, strict=True) if s == kept]

        def put(targets, values):
            for target, value in zip(targets, values, strict=True):
                target.assign(value)

        def empty(slots):
            put(slots, [nothing[backend.standardize_dtype(s.dtype)] for s in slots])

        to_average = _tf_kernel(tuple(self.dtypes))
        to_variables = _tf_kernel(tuple(var_dtypes))
        function = _tf_concrete

        @function
        def restart():
            put(
                self._e,
                [tf.cast(t, d) for t, d in zip(get(own), self.dtypes, strict=True)],
            )

        @function
        def update(n):
            put(self._e, to_average(get(self._e), get(own), n))

        @function
        def swap_in(n):
            running = get(own)
            put(self._s, running)
            put(own, to_variables(get(self._e), running, n))

        @function
        def show():
            put(self._s, get(own))
            put(
                own,
                [tf.cast(e, d) for e, d in zip(get(self._e), var_dtypes, strict=True)],
            )

        @function
        def swap_out(keep):
            if keep:  # what the variables show, where it is unrounded
                put(where(self._p, True), where(get(own), True))
            put(own, get(self._s))
            empty(self._s)

        @function
        def commit(n):
            put(where(self._e, True), get(where(self._p, True)))
            rounded = where(self._e, False)
            if rounded:  # the same arithmetic again, from the running values
                again = _tf_kernel(tuple(where(self.dtypes, False)))
                put(rounded, again(get(rounded), get(where(own, False)), n))
            empty(self._p)

        @function
        def discard():
            empty(self._p)

        @function
        def apply():
            put(
                own,
                [tf.cast(e, d) for e, d in zip(get(self._e), var_dtypes, strict=True)],
            )

        self._restart, self._update, self._swap_in = restart, update, swap_in
        self._show, self._swap_out, self._commit = show, swap_out, commit
        self._discard, self._apply = discard, apply
        self._count = lambda count: tf.constant(count, tf.int64)

    def restart(self) -> None:
        """`E <- θ`: the variables' current values, in the accumulation dtypes."""
        self.discard()
        self._restart()
        self.average = self._e

    def update(self, count: int) -> None:
        """`E <- E + (θ - E) / (count + 1)`."""
        self.discard()
        self._update(self._count(count))

    def swap_in(self, count: int | None = None) -> None:
        """Writes `E` (count None) or the provisional average into the variables.

        The running values are kept until `swap_out`.
        """
        self.discard()
        if count is None:
            self._show()
        else:
            self._swap_in(self._count(count))
        self.saved = self._s

    def swap_out(self, keep: bool) -> None:
        """Puts the kept running values back.

        Args:
            keep: Whether to keep what the variables show, a provisional
                average, for `commit`.
        """
        self._swap_out(keep)
        self.saved = None
        if keep:
            self.pending = [
                p if s else None for p, s in zip(self._p, self._same, strict=True)
            ]

    def commit(self, count: int) -> None:
        """`E <-` the kept provisional average (blended again where rounded)."""
        self._commit(self._count(count))
        self.pending = None

    def discard(self) -> None:
        """Frees the kept provisional average, if any."""
        if self.pending is not None:
            self._discard()
            self.pending = None

    def arrays(self) -> list:
        """`E` as numpy arrays of their own."""
        return [np.array(e.numpy()) for e in self._e]

    def load(self, arrays: list) -> None:
        """`E <-` `arrays`, cast to the accumulation dtypes."""
        self.discard()
        for e, array, dtype in zip(self._e, arrays, self.dtypes, strict=True):
            e.assign(ops.convert_to_tensor(array, dtype))
        self.average = self._e

    def apply(self) -> None:
        """Writes `E` into the variables, rounded to their dtypes."""
        self._apply()


def _tf_concrete(fn):
    """`fn` as a `tf.function`, called through its concrete functions.

    A `tf.function` call matches its arguments against its traces, hashing
    every variable the function captures: milliseconds for a store of
    hundreds. A concrete function, traced at the first call with each value
    of the Python arguments (booleans here), is called without that.
    """
    import tensorflow as tf

    function = tf.function(fn, autograph=False)
    traced = {}

    def call(*args):
        key = tuple(a for a in args if isinstance(a, bool))
        if key not in traced:
            traced[key] = function.get_concrete_function(*args)
        return traced[key](*args)

    return call


@functools.cache
def _tf_kernel(dtypes: tuple):
    """The blend of `SlotStore`, fused by XLA, its results cast to `dtypes`.

    Cached per dtypes, not per store, so that XLA compiles it once per list
    of shapes in a process, not once per `fit`.
    """
    import tensorflow as tf

    @tf.function(jit_compile=True, autograph=False)
    def blend_all(averages, thetas, n):
        return [
            tf.cast(e + (tf.cast(t, e.dtype) - e) / tf.cast(n + 1, e.dtype), d)
            for e, t, d in zip(averages, thetas, dtypes, strict=True)
        ]

    return blend_all
