"""The weight arithmetic every averaging callback shares.

`WeightAverage` keeps an equal-weight running average of a model's
floating-point variables, on the device where they live, one pass over the
weights and one call over all of them per step (`keras_aswa.kernels`; the
store of TensorFlow, `kernels.SlotStore`, lives there too, the one of JAX
and torch, `TensorStore`, here): no copy through host memory (unless
`offload="host"` asks to keep the average in host memory instead). ASWA and
SWA differ only in when they call `restart`, `update` and `commit`; the
arithmetic, the dtype rules and the swapping in and out of the model live
here once.

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

from keras_aswa import kernels


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


class _Device:
    """Arithmetic on backend tensors beside the weights, one call a list."""

    keeps_blend = False  # read back from the variables that show it

    @staticmethod
    def snapshot(variables, dtypes, into=None):
        return kernels.cast(kernels.read_all(variables), dtypes, into)

    @staticmethod
    def blend(averages, variables, count, reuse=False):
        thetas = kernels.read_all(variables)
        return kernels.blend(averages, thetas, count, reuse)

    @staticmethod
    def show(averages, variables, count, dtypes):
        thetas = kernels.read_all(variables)
        return kernels.show(averages, thetas, count, dtypes), None

    @staticmethod
    def for_variables(averages, dtypes):
        return kernels.cast(averages, dtypes)

    @staticmethod
    def to_numpy(averages):
        # Arrays of their own: the average may be updated in place later.
        return [np.array(ops.convert_to_numpy(a)) for a in averages]

    @staticmethod
    def place(arrays, variables, dtypes):
        # Copies, on the variables' devices (on JAX, with their sharding).
        values = kernels.cast([ops.convert_to_tensor(a) for a in arrays], dtypes)
        if backend.backend() == "jax":
            import jax

            values = [
                jax.device_put(x, v.value.sharding)
                for x, v in zip(values, variables, strict=True)
            ]
        return values


class _Host:
    """Numpy arithmetic on arrays in host memory.

    Frees the accelerator of the average at the price of one device-to-host
    copy of the weights per update and a host-to-device copy per write.
    """

    keeps_blend = True  # in host memory, beside the device's weights

    @staticmethod
    def snapshot(variables, dtypes, into=None):
        del into  # reusing buffers pays on devices; numpy allocates cheaply
        return [
            np.array(ops.convert_to_numpy(kernels.read(v)), dtype=d)
            for v, d in zip(variables, dtypes, strict=True)
        ]

    @staticmethod
    def blend(averages, variables, count, reuse=False):
        return [
            a
            + (ops.convert_to_numpy(kernels.read(v)).astype(a.dtype) - a)
            / a.dtype.type(count + 1)
            for a, v in zip(averages, variables, strict=True)
        ]

    @classmethod
    def show(cls, averages, variables, count, dtypes):
        blended = cls.blend(averages, variables, count)
        return cls.for_variables(blended, dtypes), blended

    @staticmethod
    def for_variables(averages, dtypes):
        return [
            ops.cast(ops.convert_to_tensor(a), d)
            for a, d in zip(averages, dtypes, strict=True)
        ]

    @staticmethod
    def to_numpy(averages):
        return [a.copy() for a in averages]

    @staticmethod
    def place(arrays, variables, dtypes):
        return [np.array(a, dtype=d) for a, d in zip(arrays, dtypes, strict=True)]


class TensorStore:
    """The average of a list of float variables as a list of tensors.

    Backend tensors on the variables' devices (JAX, torch), or numpy arrays
    in host memory (`host=True`). The same interface as
    `keras_aswa.kernels.SlotStore`, which holds the average on TensorFlow.

    Args:
        variables: The Keras variables to average, all floating point.
        dtypes: The accumulation dtype of each (float32 or float64).
        host: Whether to keep the average in host memory.

    Example:

    ```python
    store = TensorStore(model.trainable_weights, ["float32"] * n)
    store.restart()            # E <- θ
    store.swap_in(count=1)     # the model holds E + (θ - E) / 2
    store.swap_out(keep=True)  # θ is back; E + (θ - E) / 2 is kept
    store.commit(count=1)      # ...and becomes E
    ```
    """

    def __init__(self, variables: Sequence, dtypes: Sequence, host: bool = False):
        self.variables = list(variables)
        self.dtypes = list(dtypes)
        self._math = _Host if host else _Device
        self._var_dtypes = [backend.standardize_dtype(v.dtype) for v in self.variables]
        # Variables that hold a provisional average unrounded: it is read
        # back from them instead of being held twice.
        self._same = [
            d == a for d, a in zip(self._var_dtypes, self.dtypes, strict=True)
        ]
        self.average: list | None = None
        self.saved: list | None = None
        self.pending: list | None = None
        self._blended: list | None = None

    def restart(self) -> None:
        """`E <- θ`: the variables' current values, in the accumulation dtypes."""
        self.pending = None
        # The old average's buffers, which nothing else refers to (see
        # `update`), take the copy.
        self.average = self._math.snapshot(self.variables, self.dtypes, self.average)

    def update(self, count: int) -> None:
        """`E <- E + (θ - E) / (count + 1)`."""
        self.pending = None
        # Nothing else refers to the average's buffers (see `to_numpy`,
        # `place`): the new average may be written over the old one.
        self.average = self._math.blend(self.average, self.variables, count, reuse=True)

    def swap_in(self, count: int | None = None) -> None:
        """Writes `E` (count None) or the provisional average into the variables.

        The running values are kept until `swap_out`.
        """
        self.pending = None
        if count is None:
            values = self._math.for_variables(self.average, self._var_dtypes)
        else:
            values, self._blended = self._math.show(
                self.average, self.variables, count, self._var_dtypes
            )
        self.saved = kernels.exchange(self.variables, values)

    def swap_out(self, keep: bool) -> None:
        """Puts the kept running values back.

        Args:
            keep: Whether to keep what the variables show, a provisional
                average, for `commit`.
        """
        shown = kernels.exchange(self.variables, self.saved)
        self.saved = None
        blended, self._blended = self._blended, None
        if keep:
            self.pending = blended or [
                s if same else None for s, same in zip(shown, self._same, strict=True)
            ]

    def commit(self, count: int) -> None:
        """`E <-` the kept provisional average (blended again where rounded)."""
        pending, self.pending = self.pending, None
        again = [i for i, p in enumerate(pending) if p is None]
        if again:
            blended = self._math.blend(
                [self.average[i] for i in again],
                [self.variables[i] for i in again],
                count,
            )
            for i, value in zip(again, blended, strict=True):
                pending[i] = value
        self.average = pending

    def discard(self) -> None:
        """Frees the kept provisional average, if any."""
        self.pending = None

    def arrays(self) -> list:
        """`E` as numpy arrays of their own."""
        return self._math.to_numpy(self.average)

    def load(self, arrays: list) -> None:
        """`E <-` `arrays`, cast to the accumulation dtypes."""
        self.pending = None
        self.average = self._math.place(arrays, self.variables, self.dtypes)

    def apply(self) -> None:
        """Writes `E` into the variables, rounded to their dtypes."""
        values = self._math.for_variables(self.average, self._var_dtypes)
        kernels.exchange(self.variables, values)  # fresh copies, handed over


class WeightAverage:
    """An equal-weight running average of a list of Keras variables.

    Args:
        variables: The variables to average, usually `model.weights`. Their
            order is the order of `numpy()`.
        offload: None keeps the average on the variables' devices (with
            their sharding), computed by `keras_aswa.kernels`; `"host"` keeps
            it in host memory as numpy arrays, for models that fill the
            accelerator: one device-to-host copy of the weights per update.
        on_write: Called with no argument each time an average has been
            written into the variables (`swap_in`, `provisional`, `apply`),
            e.g. to recompute BatchNormalization statistics for it. What it
            changes in the variables is not adopted by `commit`, which then
            blends again.

    Example:

    ```python
    average = WeightAverage(model.weights)
    average.restart()        # E <- θ, n = 1
    ...                      # train
    average.update()         # E <- E + (θ - E) / (n + 1), n = n + 1
    with average.provisional():
        model.evaluate(...)  # the model holds E + (θ - E) / (n + 1)
    average.commit()         # ...which becomes E (or: discard() it)
    average.apply()          # the model holds E
    ```
    """

    def __init__(self, variables: Sequence, offload: str | None = None, on_write=None):
        if offload not in (None, "host"):
            raise ValueError(
                f"offload={offload!r} is not one of None (the average stays on "
                "the weights' devices) or 'host' (in host memory)."
            )
        self.offload = offload
        self.on_write = on_write
        self.variables = list(variables)
        self.dtypes = [accumulation_dtype(v.dtype) for v in self.variables]
        # Positions of the averaged (floating-point) variables.
        self._floats = [i for i, d in enumerate(self.dtypes) if d is not None]
        self._store = None
        self._showing_provisional = False
        # The provisional block's values were rewritten by `on_write`:
        # `commit` blends again.
        self._reblend = False
        self.reset()

    def _new_store(self):
        variables = [self.variables[i] for i in self._floats]
        dtypes = [self.dtypes[i] for i in self._floats]
        if self.offload is None and backend.backend() == "tensorflow":
            return kernels.SlotStore(variables, dtypes)
        return TensorStore(variables, dtypes, host=self.offload == "host")

    def reset(self) -> None:
        """Forgets the average: no members."""
        self.swap_out()
        self._store = self._new_store()
        self._members = False
        self.count = 0

    @property
    def empty(self) -> bool:
        return not self._members

    @property
    def average(self) -> list | None:
        """The average's tensors, one per variable (None for non-float ones)."""
        return None if self.empty else self._spread(self._store.average)

    def held(self) -> dict:
        """What the average keeps beside `average`, one entry per variable.

        Returns:
            `"running"`: the variables' own values, kept while an average is
            swapped in; `"provisional"`: the provisional average kept for
            `commit` (None where it is blended again instead). Each a list
            with None for non-float variables, or None when nothing is kept.

        Example:

        >>> with average.provisional():
        ...     average.held()["running"]   # θ, waiting
        """
        store = self._store
        return {
            "running": None if store.saved is None else self._spread(store.saved),
            "provisional": None
            if store.pending is None
            else self._spread(store.pending),
        }

    def warm_up(self) -> None:
        """Runs once what a decision runs, so that it compiles now.

        TensorFlow traces its graphs and XLA, like JAX, compiles its kernels
        at their first call: a dry run moves that out of the first decisions.
        It restarts the average, shows and commits a provisional average and
        restarts again, then forgets the average (the buffers stay for the
        next restart). The variables end with their values bit for bit: a
        provisional average is swapped out again. A no-op on an average with
        members. `on_write` is not called.
        """
        if not self.empty:
            return
        on_write, self.on_write = self.on_write, None
        try:
            self.restart()
            with self.provisional():
                pass
            self.commit()
            self.restart()
        finally:
            self.on_write = on_write
            self._store.discard()
            self._members = False
            self.count = 0

    def _spread(self, values):
        """One entry per variable from one per averaged variable."""
        out = [None] * len(self.variables)
        for i, value in zip(self._floats, values, strict=True):
            out[i] = value
        return out

    def restart(self) -> None:
        """Restarts the average from the variables' current values (n = 1)."""
        self._store.restart()
        self._reblend = False
        self._members = True
        self.count = 1

    def update(self) -> None:
        """Adds the variables' current values as one more member."""
        if self.empty:
            self.restart()
            return
        self._store.update(self.count)
        self._reblend = False
        self.count += 1

    @property
    def swapped_in(self) -> bool:
        """Whether the variables hold an average and their own values wait."""
        return self._store.saved is not None

    def swap_in(self, provisional: bool = False) -> None:
        """Writes the average into the variables, keeping their values.

        `swap_out` puts the kept values back exactly. The kept values are
        one extra copy of the float variables until then (held by reference
        where the backend allows it: nothing is copied to keep them).

        Args:
            provisional: Write the provisional average `E + (θ - E) / (n + 1)`
                (the variables' current values `θ` added as one more member)
                instead of the average `E`; `commit` can then adopt it.

        Raises:
            RuntimeError: If the average has no member yet, or is swapped in.
        """
        self._require_members()
        if self.swapped_in:
            raise RuntimeError("The average is already swapped into the model.")
        self._showing_provisional = provisional
        self._reblend = False
        self._store.swap_in(self.count if provisional else None)
        if self.on_write is not None:
            try:
                self.on_write()
            except BaseException:
                self.swap_out()
                raise

    def swap_out(self) -> None:
        """Puts back the values `swap_in` kept; a no-op if none are kept."""
        if self._store is not None and self.swapped_in:
            rewritten = self._showing_provisional and self.on_write is not None
            self._store.swap_out(keep=self._showing_provisional and not rewritten)
            self._reblend = rewritten

    def commit(self) -> None:
        """Adopts the provisional average of the last `provisional()` block.

        The same as `update()` right after the block, without blending again
        what the block computed already (unless `on_write` rewrote it).

        Raises:
            RuntimeError: If no provisional block ended since the average last
                changed.
        """
        if self._reblend:
            self.update()
            return
        if self._store.pending is None:
            raise RuntimeError(
                "No provisional average to commit: commit() follows a "
                "provisional() block, before the average changes."
            )
        self._store.commit(self.count)
        self.count += 1

    def discard(self) -> None:
        """Frees the provisional average of the last block, if still held."""
        self._reblend = False
        self._store.discard()

    @contextlib.contextmanager
    def provisional(self) -> Iterator[None]:
        """Shows the provisional average in the model for the block.

        Inside the block the variables hold `E + (θ - E) / (n + 1)`; on
        leaving it they hold exactly their values from before, whatever
        happened inside. The provisional average stays held (one copy of the
        float variables) until `commit`, `discard` or any change of the
        average.

        Raises:
            RuntimeError: If the average has no member yet.
        """
        self.swap_in(provisional=True)
        try:
            yield
        finally:
            self.swap_out()

    def apply(self) -> None:
        """Writes the average into the variables, rounded to their dtype.

        Non-float variables keep their values.

        Raises:
            RuntimeError: If the average has no member yet.
        """
        self._require_members()
        self._store.apply()
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
        out = self._spread(self._store.arrays())
        return [
            ops.convert_to_numpy(kernels.read(v)) if a is None else a
            for v, a in zip(self.variables, out, strict=True)
        ]

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
        self.swap_out()
        self._store.load([arrays[i] for i in self._floats])
        self._reblend = False
        self._members = True
        self.count = count

    def _require_members(self):
        if self.average is None:
            raise RuntimeError(
                "The weight average has no member yet: no epoch has been "
                "averaged. Train for at least one scored epoch first."
            )
