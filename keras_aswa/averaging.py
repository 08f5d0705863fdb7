"""The weight arithmetic every averaging callback shares.

`WeightAverage` keeps an equal-weight running average `E` of a model's
floating-point variables and the count `n` of its members: it restarts it,
adds a member, shows the provisional average `E + (θ - E) / (n + 1)` or `E`
itself in the variables and hides it again, adopts a provisional average
that was shown, and writes `E` into the model. ASWA and SWA differ only in
when they call these.

`WeightAverage` keeps the count, the policy, the positions of the float
variables and the `on_write` hook. The policy is the weight `w` of the next
member, `E <- E + w (θ - E)`: `WeightAverage.divisor` alone turns it into
the number the stores take, `1 / w` (`n + 1` for the equal-weight mean; see
`keras_aswa.kernels` for why the reciprocal). The tensors live in a `Store`,
which knows no count, one implementation per place the average lives,
chosen by `make_store`:

- `DeviceStore` (JAX, torch): backend tensors beside the weights, each
  operation one call of a fused kernel over all of them
  (`keras_aswa.kernels`);
- `SlotStore` (TensorFlow): TensorFlow variables of its own, each
  operation one call of one graph that passes only the weight;
- `HostStore` (`offload="host"`, any backend): numpy arrays in host memory,
  one device-to-host copy of the weights per update.

A store shows a provisional average by writing it, rounded to each
variable's dtype, into the variables (the running values are kept, by
reference, until `hide`). Where a variable holds the blend unrounded (its
dtype is the accumulation dtype) the store keeps it from there for `adopt`;
every other entry, and every entry when nothing was kept (`on_write`
rewrote what was shown), is blended again from the running values when
adopted: one rule, the same arithmetic.

Dtype rules: the average accumulates in float32, or float64 for float64
variables, whatever the variable's own dtype, and is rounded to the variable's
dtype once, when written into the model. Variables that are not floating
point (step counters, seed-generator state, int8 kernels) are never averaged:
the model keeps its running values for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
from keras import backend, ops

from keras_aswa import internals, kernels

OFFLOADS = (None, "host")


def accumulation_dtype(dtype) -> str | None:
    """The dtype a variable of `dtype` is averaged in, or None if never.

    Args:
        dtype: A variable's dtype.

    Returns:
        `"float64"` for float64 variables, `"float32"` for every other
        floating-point dtype (bfloat16, float16, float8 included), None for
        integer and boolean dtypes.
    """
    dtype = backend.standardize_dtype(dtype)
    if not backend.is_float_dtype(dtype):
        return None
    return "float64" if dtype == "float64" else "float32"


def check_offload(offload) -> None:
    """Raises ValueError unless `offload` is None or `"host"`."""
    if offload not in OFFLOADS:
        raise ValueError(
            f"offload={offload!r} is not one of None (the average stays on "
            "the weights' devices) or 'host' (in host memory)."
        )


class Store:
    """The protocol: the average `E` of a list of float variables.

    Every method is one pass over the weights at most, one kernel call.
    A `divisor` is the blend weight `w` as its reciprocal `1 / w`: the
    stores blend `E + (θ - E) / divisor` (`keras_aswa.kernels.blend_one`).

    Args:
        variables: The Keras variables to average, all floating point.
        dtypes: The accumulation dtype of each (float32 or float64).

    Attributes:
        average: `E`, one tensor per variable (None before `restart` or
            `load`).
        running: The variables' own values, kept while they show something
            else (None otherwise).
        pending: The provisional average kept for `adopt` after `hide`, None
            where it is blended again (None when nothing is kept).

    Example:

    ```python
    store = make_store(model.trainable_weights, ["float32"] * n)
    store.restart()                # E <- θ
    store.show_provisional(2.0)    # the model holds E + (θ - E) / 2
    store.hide(keep=True)          # θ is back; E + (θ - E) / 2 is kept
    store.adopt(2.0)               # ...and becomes E
    ```
    """

    def __init__(self, variables: Sequence, dtypes: Sequence):
        self.variables = list(variables)
        self.dtypes = list(dtypes)
        self.var_dtypes = [backend.standardize_dtype(v.dtype) for v in self.variables]
        # The variables that hold a provisional average unrounded.
        self.unrounded = [
            d == a for d, a in zip(self.var_dtypes, self.dtypes, strict=True)
        ]
        self.average: list | None = None
        self.running: list | None = None
        self.pending: list | None = None

    def restart(self) -> None:
        """`E <- θ`: the variables' values, in the accumulation dtypes."""
        raise NotImplementedError

    def update(self, divisor: float) -> None:
        """`E <- E + (θ - E) / divisor`."""
        raise NotImplementedError

    def show_ensemble(self) -> None:
        """Writes `E` into the variables, keeping their values until `hide`."""
        raise NotImplementedError

    def show_provisional(self, divisor: float) -> None:
        """Writes `E + (θ - E) / divisor` into the variables, keeping their
        values until `hide`."""
        raise NotImplementedError

    def hide(self, keep: bool) -> None:
        """Puts the kept running values back.

        Args:
            keep: Whether to keep the provisional average the variables
                show for `adopt` (what the variables hold unrounded; the
                rest is blended again there).
        """
        raise NotImplementedError

    def adopt(self, divisor: float) -> None:
        """`E <-` the provisional average of the last `show_provisional`:
        the entries kept by `hide`, the others blended again."""
        raise NotImplementedError

    def discard(self) -> None:
        """Frees the provisional average kept by `hide`, if any."""
        self.pending = None

    def apply(self) -> None:
        """Writes `E` into the variables, rounded to their dtypes."""
        raise NotImplementedError

    def arrays(self) -> list:
        """`E` as numpy arrays of their own."""
        raise NotImplementedError

    def load(self, arrays: list) -> None:
        """`E <-` `arrays`, cast to the accumulation dtypes."""
        raise NotImplementedError


class DeviceStore(Store):
    """The average as backend tensors beside the weights (JAX, torch).

    Each operation is one call of a fused kernel of `keras_aswa.kernels`
    over all the variables, on their devices and with their sharding. The
    running values kept while something is shown are the variables' own
    buffers, exchanged out by reference: no copy.
    """

    def __init__(self, variables: Sequence, dtypes: Sequence):
        super().__init__(variables, dtypes)
        self._shardings = None
        if backend.backend() == "jax":
            values = kernels.read_all(self.variables)
            self._shardings = kernels.jax_shardings(values)
            self._kernels = kernels.jax_kernels(self._shardings)
            self._load_kernels = kernels.jax_kernels(None)
            to_backend = kernels.jax_dtypes
        else:
            self._kernels = self._load_kernels = kernels.TORCH
            to_backend = kernels.torch_dtypes
        self._dtypes = to_backend(self.dtypes)
        self._var_dtypes = to_backend(self.var_dtypes)

    def restart(self):
        self.pending = None
        thetas = kernels.read_all(self.variables)
        if self.average is None:
            self.average = self._kernels.copy(thetas, self._dtypes)
        else:
            # The old average's buffers, which nothing else refers to (see
            # `arrays`, `load`), take the copy.
            self.average = self._kernels.copy_over(self.average, thetas, self._dtypes)

    def update(self, divisor):
        self.pending = None
        thetas = kernels.read_all(self.variables)
        self.average = self._kernels.blend_over(self.average, thetas, divisor)

    def show_ensemble(self):
        self.pending = None
        values = self._kernels.copy(self.average, self._var_dtypes)
        self.running = kernels.exchange(self.variables, values)

    def show_provisional(self, divisor):
        self.pending = None
        thetas = kernels.read_all(self.variables)
        values = self._kernels.show(self.average, thetas, divisor, self._var_dtypes)
        self.running = kernels.exchange(self.variables, values)

    def hide(self, keep):
        shown = kernels.exchange(self.variables, self.running)
        self.running = None
        if keep:
            self.pending = [
                s if same else None
                for s, same in zip(shown, self.unrounded, strict=True)
            ]

    def adopt(self, divisor):
        kept = self.pending or [None] * len(self.variables)
        self.pending = None
        again = [i for i, p in enumerate(kept) if p is None]
        if again:
            blend = self._kernels.blend
            if self._shardings is not None and len(again) < len(kept):
                shardings = tuple(self._shardings[i] for i in again)
                blend = kernels.jax_kernels(shardings).blend
            blended = blend(
                [self.average[i] for i in again],
                kernels.read_all([self.variables[i] for i in again]),
                divisor,
            )
            for i, value in zip(again, blended, strict=True):
                kept[i] = value
        self.average = kept

    def apply(self):
        values = self._kernels.copy(self.average, self._var_dtypes)
        kernels.exchange(self.variables, values)  # fresh copies, handed over

    def arrays(self):
        # Arrays of their own: the average may be updated in place later.
        return [np.array(ops.convert_to_numpy(a)) for a in self.average]

    def load(self, arrays):
        self.pending = None
        # Copies, on the variables' devices (on JAX, with their sharding).
        tensors = [ops.convert_to_tensor(a) for a in arrays]
        values = self._load_kernels.copy(tensors, self._dtypes)
        if backend.backend() == "jax":
            import jax

            values = [
                jax.device_put(x, v.value.sharding)
                for x, v in zip(values, self.variables, strict=True)
            ]
        self.average = values


class HostStore(Store):
    """The average as numpy arrays in host memory (`offload="host"`).

    Frees the accelerator of the average at the price of one device-to-host
    copy of the weights per update and a host-to-device copy per write. The
    provisional average is kept in host memory, unrounded, when shown.
    """

    def __init__(self, variables: Sequence, dtypes: Sequence):
        super().__init__(variables, dtypes)
        self._blended: list | None = None

    def _blend(self, averages, variables, divisor):
        return [
            kernels.blend_one(
                a,
                ops.convert_to_numpy(kernels.read(v)).astype(a.dtype),
                a.dtype.type(divisor),
            )
            for a, v in zip(averages, variables, strict=True)
        ]

    def _for_variables(self, averages):
        return [
            ops.cast(ops.convert_to_tensor(a), d)
            for a, d in zip(averages, self.var_dtypes, strict=True)
        ]

    def restart(self):
        self.pending = None
        self.average = [
            np.array(ops.convert_to_numpy(kernels.read(v)), dtype=d)
            for v, d in zip(self.variables, self.dtypes, strict=True)
        ]

    def update(self, divisor):
        self.pending = None
        self.average = self._blend(self.average, self.variables, divisor)

    def show_ensemble(self):
        self.pending = None
        values = self._for_variables(self.average)
        self.running = kernels.exchange(self.variables, values)

    def show_provisional(self, divisor):
        self.pending = None
        self._blended = self._blend(self.average, self.variables, divisor)
        values = self._for_variables(self._blended)
        self.running = kernels.exchange(self.variables, values)

    def hide(self, keep):
        kernels.exchange(self.variables, self.running)
        self.running = None
        blended, self._blended = self._blended, None
        if keep and blended is not None:
            self.pending = blended

    def adopt(self, divisor):
        kept, self.pending = self.pending, None
        self.average = kept or self._blend(self.average, self.variables, divisor)

    def apply(self):
        kernels.exchange(self.variables, self._for_variables(self.average))

    def arrays(self):
        return [a.copy() for a in self.average]

    def load(self, arrays):
        self.pending = None
        self.average = [
            np.array(a, dtype=d) for a, d in zip(arrays, self.dtypes, strict=True)
        ]


class SlotStore(Store):
    """The average on TensorFlow, in TensorFlow variables of its own.

    Holds `E`, the running values kept while something else is shown and
    the provisional average kept for `adopt` in slot variables beside the
    model's; each operation is one call of one graph over all of them, which
    passes only the divisor, a tensor (TensorFlow charges every tensor that crosses a
    graph's boundary tens of microseconds, more than a small variable's
    arithmetic). Assigning one variable's value to another shares the buffer
    (TensorFlow copies on write), so keeping and putting back values costs
    no pass over the bytes: only the blend does, in one XLA-compiled kernel
    (`kernels.tf_blend`).

    The graphs are called through their concrete functions, traced at the
    first call with each value of their Python arguments (the divisor is a
    tensor: one trace whatever the weight): a `tf.function`
    call would match its arguments against its traces, hashing every
    variable it captures, milliseconds for a store of hundreds.
    """

    def __init__(self, variables: Sequence, dtypes: Sequence):
        import tensorflow as tf

        super().__init__(variables, dtypes)
        self._tf = tf

        def slots(dtypes):
            # Of any shape, so that a slot releases its buffer when emptied.
            return [
                tf.Variable(tf.zeros([0], d), shape=tf.TensorShape(None))
                for d in dtypes
            ]

        self._e = slots(self.dtypes)
        self._s = slots(self.var_dtypes)
        self._p = slots(self.dtypes)
        # The model's own tf.Variables, read and written without Keras'
        # per-call checks: a graph of fewer ops, each costing microseconds.
        self._own = [internals.variable_storage(v) for v in self.variables]
        self._nothing = {
            d: tf.zeros([0], d) for d in set(self.dtypes + self.var_dtypes)
        }
        self._traced: dict = {}

    def _graph(self, name: str, *args):
        """The concrete function of graph `name` for `args` (traced once per
        value of its Python arguments)."""
        key = (name, *(a for a in args if isinstance(a, bool)))
        if key not in self._traced:
            function = self._tf.function(getattr(self, name), autograph=False)
            self._traced[key] = function.get_concrete_function(*args)
        return self._traced[key]

    def _w(self, divisor):
        # float64: n + 1 exactly, cast to each average's dtype in the blend.
        return self._tf.constant(divisor, self._tf.float64)

    # The graphs' bodies.

    @staticmethod
    def _put(targets, values):
        for target, value in zip(targets, values, strict=True):
            target.assign(value)

    @staticmethod
    def _get(slots):
        return [s.read_value() for s in slots]

    def _empty(self, slots):
        self._put(
            slots, [self._nothing[backend.standardize_dtype(s.dtype)] for s in slots]
        )

    def _cast(self, values, dtypes):
        return [self._tf.cast(x, d) for x, d in zip(values, dtypes, strict=True)]

    def _where(self, items, unrounded):
        return [x for x, u in zip(items, self.unrounded, strict=True) if u == unrounded]

    def _restart_graph(self):
        self._put(self._e, self._cast(self._get(self._own), self.dtypes))

    def _update_graph(self, w):
        blend = kernels.tf_blend(tuple(self.dtypes))
        self._put(self._e, blend(self._get(self._e), self._get(self._own), w))

    def _show_ensemble_graph(self):
        self._put(self._s, self._get(self._own))
        self._put(self._own, self._cast(self._get(self._e), self.var_dtypes))

    def _show_provisional_graph(self, w):
        running = self._get(self._own)
        self._put(self._s, running)
        blend = kernels.tf_blend(tuple(self.var_dtypes))
        self._put(self._own, blend(self._get(self._e), running, w))

    def _hide_graph(self, keep):
        if keep:  # what the variables show, where it is unrounded
            self._put(
                self._where(self._p, True), self._where(self._get(self._own), True)
            )
        self._put(self._own, self._get(self._s))
        self._empty(self._s)

    def _adopt_graph(self, w, kept):
        again = list(range(len(self._e)))
        if kept:
            for i in again:
                if self.unrounded[i]:
                    self._e[i].assign(self._p[i].read_value())
            again = [i for i in again if not self.unrounded[i]]
        if again:  # the same arithmetic again, from the running values
            blend = kernels.tf_blend(tuple(self.dtypes[i] for i in again))
            blended = blend(
                [self._e[i].read_value() for i in again],
                [self._own[i].read_value() for i in again],
                w,
            )
            self._put([self._e[i] for i in again], blended)
        self._empty(self._p)

    def _discard_graph(self):
        self._empty(self._p)

    def _apply_graph(self):
        self._put(self._own, self._cast(self._get(self._e), self.var_dtypes))

    # The protocol.

    def restart(self):
        self.discard()
        self._graph("_restart_graph")()
        self.average = self._e

    def update(self, divisor):
        self.discard()
        w = self._w(divisor)
        self._graph("_update_graph", w)(w)

    def show_ensemble(self):
        self.discard()
        self._graph("_show_ensemble_graph")()
        self.running = self._s

    def show_provisional(self, divisor):
        self.discard()
        w = self._w(divisor)
        self._graph("_show_provisional_graph", w)(w)
        self.running = self._s

    def hide(self, keep):
        self._graph("_hide_graph", keep)(keep)
        self.running = None
        if keep:
            self.pending = [
                p if u else None for p, u in zip(self._p, self.unrounded, strict=True)
            ]

    def adopt(self, divisor):
        kept = self.pending is not None
        w = self._w(divisor)
        self._graph("_adopt_graph", w, kept)(w, kept)
        self.pending = None

    def discard(self):
        if self.pending is not None:
            self._graph("_discard_graph")()
            self.pending = None

    def apply(self):
        self._graph("_apply_graph")()

    def arrays(self):
        return [np.array(e.numpy()) for e in self._e]

    def load(self, arrays):
        self.discard()
        for e, array, dtype in zip(self._e, arrays, self.dtypes, strict=True):
            e.assign(ops.convert_to_tensor(array, dtype))
        self.average = self._e


def make_store(variables: Sequence, dtypes: Sequence, offload=None) -> Store:
    """The store for `variables` on this backend (`offload`: see
    `WeightAverage`)."""
    if offload == "host":
        return HostStore(variables, dtypes)
    if backend.backend() == "tensorflow":
        return SlotStore(variables, dtypes)
    if backend.backend() in ("jax", "torch"):
        return DeviceStore(variables, dtypes)
    raise NotImplementedError(
        "keras_aswa trains with the tensorflow, jax or torch backend, not "
        f"{backend.backend()!r}."
    )


class WeightAverage:
    """An equal-weight running average of a list of Keras variables.

    Args:
        variables: The variables to average, usually `model.weights`. Their
            order is the order of `numpy()`.
        offload: None keeps the average on the variables' devices (with
            their sharding); `"host"` keeps it in host memory as numpy
            arrays, for models that fill the accelerator: one device-to-host
            copy of the weights per update.
        on_write: Called with no argument each time an average has been
            written into the variables (`show_ensemble`, `show_provisional`,
            `apply`), e.g. to recompute BatchNormalization statistics for
            it. What it changes in the variables is not adopted by `commit`,
            which then blends again.

    Attributes:
        store: The `Store` that holds the tensors.
        count: How many members the average holds (0: none).

    The weight of each member is the policy, `divisor`'s alone: a subclass
    that returns another averages otherwise (e.g. `1 / (1 - momentum)`, an
    exponential moving average of the members).

    Example:

    ```python
    average = WeightAverage(model.weights)
    average.restart()        # E <- θ, n = 1
    ...                      # train
    average.update()         # E <- E + (θ - E) / (n + 1), n = n + 1
    average.show_provisional()
    model.evaluate(...)      # the model holds E + (θ - E) / (n + 1)
    average.hide()           # θ is back
    average.commit()         # ...and the provisional average is E (or: discard())
    average.apply()          # the model holds E
    ```
    """

    def __init__(self, variables: Sequence, offload: str | None = None, on_write=None):
        check_offload(offload)
        self.offload = offload
        self.on_write = on_write
        self.variables = list(variables)
        self.dtypes = [accumulation_dtype(v.dtype) for v in self.variables]
        # Positions of the averaged (floating-point) variables.
        self._floats = [i for i, d in enumerate(self.dtypes) if d is not None]
        self.store = make_store(
            [self.variables[i] for i in self._floats],
            [self.dtypes[i] for i in self._floats],
            offload,
        )
        self.count = 0
        # What the variables show: None, "ensemble" or "provisional".
        self._shown: str | None = None
        # A provisional average was shown and hidden since the last change.
        self._adoptable = False

    @property
    def empty(self) -> bool:
        return self.count == 0

    def divisor(self) -> float:
        """The weight `w` of the next member, as the stores take it: `1 / w`.

        `n + 1` for the equal-weight mean: the next member counts as much as
        each of the `n` already averaged.
        """
        return float(self.count + 1)

    @property
    def showing(self) -> bool:
        """Whether the variables show an average and their own values wait."""
        return self._shown is not None

    @property
    def average(self) -> list | None:
        """The average's tensors, one per variable (None for non-float ones)."""
        return None if self.empty else self._spread(self.store.average)

    def _spread(self, values):
        """One entry per variable from one per averaged variable."""
        out = [None] * len(self.variables)
        for i, value in zip(self._floats, values, strict=True):
            out[i] = value
        return out

    def warm_up(self) -> None:
        """Runs once what a decision runs, so that it compiles now.

        TensorFlow traces its graphs and XLA, like JAX, compiles its kernels
        at their first call: a dry run moves that out of the first decisions.
        It restarts the average, shows and commits a provisional average and
        restarts again, then forgets the average (the buffers stay for the
        next restart). The variables end with their values bit for bit: a
        provisional average is hidden again. A no-op on an average with
        members. `on_write` is not called.
        """
        if not self.empty:
            return
        on_write, self.on_write = self.on_write, None
        try:
            self.restart()
            self.show_provisional()
            self.hide()
            self.commit()
            self.restart()
        finally:
            self.on_write = on_write
            self.store.discard()
            self._adoptable = False
            self.count = 0

    def restart(self) -> None:
        """Restarts the average from the variables' current values (n = 1)."""
        self.store.restart()
        self._adoptable = False
        self.count = 1

    def update(self) -> None:
        """Adds the variables' current values as one more member."""
        if self.empty:
            self.restart()
            return
        self.store.update(self.divisor())
        self._adoptable = False
        self.count += 1

    def show_ensemble(self) -> None:
        """Writes the average `E` into the variables, keeping their values.

        `hide` puts the kept values back exactly. They are held by reference
        where the backend allows it: nothing is copied to keep them.

        Raises:
            RuntimeError: If the average has no member yet, or is shown.
        """
        self._require_hidden()
        self._adoptable = False
        self.store.show_ensemble()
        self._shown = "ensemble"
        self._written()

    def show_provisional(self) -> None:
        """Writes the provisional average `E + (θ - E) / (n + 1)` into the
        variables (their values `θ` added as one more member), keeping
        their values; after `hide`, `commit` can adopt it.

        Raises:
            RuntimeError: If the average has no member yet, or is shown.
        """
        self._require_hidden()
        self._adoptable = False
        self.store.show_provisional(self.divisor())
        self._shown = "provisional"
        self._written()

    def provisional_values(self) -> list:
        """The values `show_provisional` would write, one per variable (None
        for non-float ones), with the variables holding their own values
        again when it returns; `commit` can adopt it.

        The values are the store's own (one blend, no copy): the variables
        hold them only for the span of this call.

        Raises:
            RuntimeError: If the average has no member yet, or is shown, or
                an `on_write` hook would rewrite what is shown.
        """
        if self.on_write is not None:
            raise RuntimeError(
                "provisional_values() gives the blend alone; with on_write, "
                "score what show_provisional() writes instead."
            )
        self.show_provisional()
        try:
            values = kernels.read_all([self.variables[i] for i in self._floats])
        finally:
            self.hide()
        return self._spread(values)

    def _require_hidden(self):
        self._require_members()
        if self.showing:
            raise RuntimeError("The average is already shown in the model.")

    def _written(self):
        if self.on_write is not None:
            try:
                self.on_write()
            except BaseException:
                self.hide()
                raise

    def hide(self) -> None:
        """Puts back the values a `show_*` kept; a no-op if none are kept.

        After `show_provisional`, keeps the provisional average for `commit`
        (to be blended again where `on_write` rewrote it).
        """
        if self._shown is None:
            return
        provisional = self._shown == "provisional"
        self.store.hide(keep=provisional and self.on_write is None)
        self._shown = None
        self._adoptable = provisional

    def commit(self) -> None:
        """Adopts the provisional average of the last `show_provisional`.

        The same as `update()` right after it, without blending again what
        it computed already.

        Raises:
            RuntimeError: If no provisional average was shown and hidden
                since the average last changed.
        """
        if not self._adoptable:
            raise RuntimeError(
                "No provisional average to commit: commit() follows "
                "show_provisional() and hide(), before the average changes."
            )
        self.store.adopt(self.divisor())
        self._adoptable = False
        self.count += 1

    def discard(self) -> None:
        """Frees the provisional average of the last `show_provisional`."""
        self._adoptable = False
        self.store.discard()

    @contextlib.contextmanager
    def provisional(self) -> Iterator[None]:
        """`show_provisional()` for the block, `hide()` after it, whatever
        happened inside.

        Raises:
            RuntimeError: If the average has no member yet.
        """
        self.show_provisional()
        try:
            yield
        finally:
            self.hide()

    def apply(self) -> None:
        """Writes the average into the variables, rounded to their dtype.

        Non-float variables keep their values.

        Raises:
            RuntimeError: If the average has no member yet.
        """
        self._require_members()
        self.store.apply()
        if self.on_write is not None:
            self.on_write()

    def numpy(self) -> list[np.ndarray]:
        """The average as numpy arrays, in the order of `variables`.

        Float entries are in their accumulation dtype (float32 or float64);
        non-float entries are the variables' current values.

        Raises:
            RuntimeError: If the average has no member yet.
        """
        self._require_members()
        out = self._spread(self.store.arrays())
        return [
            ops.convert_to_numpy(kernels.read(v)) if a is None else a
            for v, a in zip(self.variables, out, strict=True)
        ]

    def nbytes(self) -> int:
        """The bytes the average holds (0 with no member), from shapes and
        dtypes."""
        if self.empty:
            return 0
        return sum(
            int(np.prod(v.shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            for v, dtype in zip(self.variables, self.dtypes, strict=True)
            if dtype is not None
        )

    def signature(self) -> list:
        """Shape and accumulation dtype of each entry: what a saved state must match."""
        return [
            [list(v.shape), dtype]
            for v, dtype in zip(self.variables, self.dtypes, strict=True)
        ]

    def load(self, arrays: list, count: int) -> None:
        """Restores an average saved with `numpy()` (non-float entries ignored).

        Args:
            arrays: One array per variable, as `numpy()` returns them.
            count: How many members they average.
        """
        self.hide()
        self.store.load([arrays[i] for i in self._floats])
        self._adoptable = False
        self.count = count

    def _require_members(self):
        if self.empty:
            raise RuntimeError(
                "The weight average has no member yet: no epoch has been "
                "averaged. Train for at least one scored epoch first."
            )
