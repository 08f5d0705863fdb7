"""The weight arithmetic every averaging callback shares.

`WeightAverage` keeps an equal-weight running average of a model's
floating-point variables, on the device where they live, one pass over the
weights per step (`keras_aswa.kernels`): no copy through host memory (unless
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


def _fresh(value, dtype):
    # A new buffer in `dtype`. On JAX a variable takes ownership of what it is
    # assigned, and a snapshot must not share the variable's buffer: neither
    # may alias the other.
    if backend.standardize_dtype(value.dtype) != backend.standardize_dtype(dtype):
        return ops.cast(value, dtype)
    return ops.copy(value)


class _OnDevice:
    """The average as backend tensors beside the weights, on their device."""

    # A provisional average shown in a variable of its own dtype is read back
    # from it afterwards, instead of being held twice.
    keeps_blend = False

    @staticmethod
    def snapshot(variable, dtype):
        return _fresh(kernels.read(variable), dtype)

    @staticmethod
    def blend(average, variable, count):
        # E + (θ - E) / (n + 1): the equal-weight average of n + 1 members.
        return kernels.blend(average, kernels.read(variable), count)

    @staticmethod
    def for_variable(value, variable, fresh=False):
        # `fresh`: just computed, so the variable may take it over as it is.
        if fresh:
            return ops.cast(value, variable.dtype)
        return _fresh(value, variable.dtype)

    @staticmethod
    def to_numpy(value):
        return ops.convert_to_numpy(value)

    @staticmethod
    def place(array, variable, dtype):
        # On the variable's device, and on JAX with its sharding.
        value = ops.convert_to_tensor(array, dtype)
        if backend.backend() == "jax":
            import jax

            value = jax.device_put(value, variable.value.sharding)
        return value


class _OnHost:
    """The average as numpy arrays in host memory, with numpy arithmetic.

    Frees the accelerator of the average at the price of one device-to-host
    copy of the weights per update and a host-to-device copy per write.
    """

    keeps_blend = True  # in host memory, beside the device's weights

    @staticmethod
    def snapshot(variable, dtype):
        return np.array(ops.convert_to_numpy(kernels.read(variable)), dtype=dtype)

    @staticmethod
    def blend(average, variable, count):
        theta = ops.convert_to_numpy(kernels.read(variable)).astype(average.dtype)
        return average + (theta - average) / average.dtype.type(count + 1)

    @staticmethod
    def for_variable(value, variable, fresh=False):
        return ops.cast(ops.convert_to_tensor(value), variable.dtype)

    @staticmethod
    def to_numpy(value):
        return value.copy()

    @staticmethod
    def place(array, variable, dtype):
        return np.array(array, dtype=dtype)


_STORAGE = {None: _OnDevice, "host": _OnHost}

# What a provisional block leaves to `commit` when `on_write` rewrote what it
# showed: the scored values are not the blend, so blend again.
_REBLEND = object()


class WeightAverage:
    """An equal-weight running average of a list of Keras variables.

    Args:
        variables: The variables to average, usually `model.weights`. Their
            order is the order of `numpy()`.
        offload: None keeps the average on the variables' devices (with
            their sharding); `"host"` keeps it in
            host memory as numpy arrays, for models that fill the
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
        if offload not in _STORAGE:
            raise ValueError(
                f"offload={offload!r} is not one of None (the average stays on "
                "the weights' devices) or 'host' (in host memory)."
            )
        self.offload = offload
        self.on_write = on_write
        self._storage = _STORAGE[offload]
        self.variables = list(variables)
        self.dtypes = [accumulation_dtype(v.dtype) for v in self.variables]
        self._saved = None
        self._pending = None
        self._showing_provisional = False
        self.reset()

    def reset(self) -> None:
        """Forgets the average: no members."""
        self.swap_out()
        self.average: list | None = None
        self.count = 0
        self._pending = None

    @property
    def empty(self) -> bool:
        return self.average is None

    def restart(self) -> None:
        """Restarts the average from the variables' current values (n = 1)."""
        self._pending = None
        if self.average is None:
            self.average = [None] * len(self.variables)
        # In place, one variable at a time, so that the old and the new average
        # are never alive whole at once.
        for i, (v, dtype) in enumerate(zip(self.variables, self.dtypes, strict=True)):
            self.average[i] = (
                None if dtype is None else self._storage.snapshot(v, dtype)
            )
        self.count = 1

    def update(self) -> None:
        """Adds the variables' current values as one more member."""
        if self.average is None:
            self.restart()
            return
        self._pending = None
        for i, (v, avg) in enumerate(zip(self.variables, self.average, strict=True)):
            if avg is not None:
                self.average[i] = self._storage.blend(avg, v, self.count)
        self.count += 1

    @property
    def swapped_in(self) -> bool:
        """Whether the variables hold an average and their own values wait."""
        return self._saved is not None

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
        if self._saved is not None:
            raise RuntimeError("The average is already swapped into the model.")
        self._saved, self._pending = [], None
        self._showing_provisional = provisional
        try:
            for i, (v, avg) in enumerate(
                zip(self.variables, self.average, strict=True)
            ):
                if avg is None:
                    continue
                kept = None
                if provisional:
                    blended = self._storage.blend(avg, v, self.count)
                    value = self._storage.for_variable(blended, v, fresh=True)
                    kept = blended if self._storage.keeps_blend else None
                else:
                    value = self._storage.for_variable(avg, v)
                self._saved.append((i, v, kernels.exchange(v, value), kept))
            if self.on_write is not None:
                self.on_write()
        except BaseException:
            self.swap_out()
            raise

    def swap_out(self) -> None:
        """Puts back the values `swap_in` kept; a no-op if none are kept."""
        saved, self._saved = self._saved or [], None
        pending = [None] * len(self.variables)
        for i, v, previous, kept in saved:
            shown = kernels.exchange(v, previous)
            if kept is None and backend.standardize_dtype(v.dtype) == self.dtypes[i]:
                kept = shown  # the provisional average itself, at full precision
            pending[i] = kept
        if saved and self._showing_provisional:
            self._pending = _REBLEND if self.on_write is not None else pending

    def commit(self) -> None:
        """Adopts the provisional average of the last `provisional()` block.

        The same as `update()` right after the block, without blending again
        what the block computed already (unless `on_write` rewrote it).

        Raises:
            RuntimeError: If no provisional block ended since the average last
                changed.
        """
        if self._pending is None:
            raise RuntimeError(
                "No provisional average to commit: commit() follows a "
                "provisional() block, before the average changes."
            )
        pending, self._pending = self._pending, None
        if pending is _REBLEND:
            self.update()
            return
        for i, (v, avg) in enumerate(zip(self.variables, self.average, strict=True)):
            if avg is not None:
                kept = pending[i]
                self.average[i] = (
                    kept
                    if kept is not None
                    else self._storage.blend(avg, v, self.count)
                )
        self.count += 1

    def discard(self) -> None:
        """Frees the provisional average of the last block, if still held."""
        self._pending = None

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
        for v, avg in zip(self.variables, self.average, strict=True):
            if avg is not None:
                v.assign(self._storage.for_variable(avg, v))
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
        return [
            ops.convert_to_numpy(kernels.read(v))
            if avg is None
            else self._storage.to_numpy(avg)
            for v, avg in zip(self.variables, self.average, strict=True)
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
        self._pending = None
        self.average = [
            None if dtype is None else self._storage.place(array, v, dtype)
            for v, array, dtype in zip(self.variables, arrays, self.dtypes, strict=True)
        ]
        self.count = count

    def _require_members(self):
        if self.average is None:
            raise RuntimeError(
                "The weight average has no member yet: no epoch has been "
                "averaged. Train for at least one scored epoch first."
            )
