"""The weight arithmetic every averaging callback shares.

`WeightAverage` keeps an equal-weight running average of a model's
floating-point variables, on the device where they live, with `keras.ops`
only: no copy through host memory. ASWA and SWA differ only in when they call
`restart` and `update`; the arithmetic, the dtype rules and the swapping in
and out of the model live here once.

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


def _read(variable):
    # Detached from autograd (torch). On TF and torch the read may alias the
    # variable's buffer: whatever must outlive the next assign is copied.
    return ops.stop_gradient(variable.value)


def _fresh(value, dtype):
    # A new buffer in `dtype`. On JAX a variable takes ownership of what it is
    # assigned, and a snapshot must not share the variable's buffer: neither
    # may alias the other.
    if backend.standardize_dtype(value.dtype) != backend.standardize_dtype(dtype):
        return ops.cast(value, dtype)
    return ops.copy(value)


def _placed(variable, array, dtype):
    # On the variable's device, and on JAX with its sharding, like a snapshot.
    value = ops.convert_to_tensor(array, dtype)
    if backend.backend() == "jax":
        import jax

        value = jax.device_put(value, variable.value.sharding)
    return value


def _blend(average, variable, count):
    # E + (θ - E) / (n + 1): the equal-weight average of n + 1 members.
    theta = ops.cast(_read(variable), average.dtype)
    return ops.add(average, ops.divide(ops.subtract(theta, average), count + 1))


class WeightAverage:
    """An equal-weight running average of a list of Keras variables.

    Args:
        variables: The variables to average, usually `model.weights`. Their
            order is the order of `numpy()`.

    Example:

    ```python
    average = WeightAverage(model.weights)
    average.restart()        # E <- θ, n = 1
    ...                      # train
    average.update()         # E <- E + (θ - E) / (n + 1), n = n + 1
    with average.provisional():
        model.evaluate(...)  # the model holds E + (θ - E) / (n + 1)
    average.apply()          # the model holds E
    ```
    """

    def __init__(self, variables: Sequence):
        self.variables = list(variables)
        self.dtypes = [accumulation_dtype(v.dtype) for v in self.variables]
        self._saved = None
        self.reset()

    def reset(self) -> None:
        """Forgets the average: no members."""
        self.swap_out()
        self.average: list | None = None
        self.count = 0

    @property
    def empty(self) -> bool:
        return self.average is None

    def restart(self) -> None:
        """Restarts the average from the variables' current values (n = 1)."""
        self.average = [
            None if dtype is None else _fresh(_read(v), dtype)
            for v, dtype in zip(self.variables, self.dtypes, strict=True)
        ]
        self.count = 1

    def update(self) -> None:
        """Adds the variables' current values as one more member."""
        if self.average is None:
            self.restart()
            return
        # In place, one variable at a time, so that the old and the new average
        # are never alive whole at once.
        for i, (v, avg) in enumerate(zip(self.variables, self.average, strict=True)):
            if avg is not None:
                self.average[i] = _blend(avg, v, self.count)
        self.count += 1

    @property
    def swapped_in(self) -> bool:
        """Whether the variables hold an average and their own values wait."""
        return self._saved is not None

    def swap_in(self, provisional: bool = False) -> None:
        """Writes the average into the variables, keeping their values.

        `swap_out` puts the kept values back exactly. Costs one extra copy of
        the float variables (the kept values) until then.

        Args:
            provisional: Write the provisional average `E + (θ - E) / (n + 1)`
                (the variables' current values `θ` added as one more member)
                instead of the average `E`.

        Raises:
            RuntimeError: If the average has no member yet, or is swapped in.
        """
        self._require_members()
        if self._saved is not None:
            raise RuntimeError("The average is already swapped into the model.")
        self._saved = []
        try:
            for v, avg in zip(self.variables, self.average, strict=True):
                if avg is None:
                    continue
                if provisional:
                    # Fresh from the arithmetic: the variable may own it.
                    value = ops.cast(_blend(avg, v, self.count), v.dtype)
                else:
                    value = _fresh(avg, v.dtype)
                self._saved.append((v, ops.copy(_read(v))))
                v.assign(value)
        except BaseException:
            self.swap_out()
            raise

    def swap_out(self) -> None:
        """Puts back the values `swap_in` kept; a no-op if none are kept."""
        saved, self._saved = self._saved or [], None
        for v, value in saved:
            v.assign(value)

    @contextlib.contextmanager
    def provisional(self) -> Iterator[None]:
        """Shows the provisional average in the model for the block.

        Inside the block the variables hold `E + (θ - E) / (n + 1)`; on
        leaving it they hold exactly their values from before, whatever
        happened inside.

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
                v.assign(_fresh(avg, v.dtype))

    def numpy(self) -> list[np.ndarray]:
        """The average as numpy arrays, in the order of `variables`.

        Float entries are in their accumulation dtype (float32 or float64);
        non-float entries are the variables' current values.

        Raises:
            RuntimeError: If the average has no member yet.
        """
        self._require_members()
        return [
            ops.convert_to_numpy(_read(v) if avg is None else avg)
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
        self.average = [
            None if dtype is None else _placed(v, array, dtype)
            for v, array, dtype in zip(self.variables, arrays, self.dtypes, strict=True)
        ]
        self.count = count

    def _require_members(self):
        if self.average is None:
            raise RuntimeError(
                "The weight average has no member yet: no epoch has been "
                "averaged. Train for at least one scored epoch first."
            )
