"""What every averaging callback shares: the average, its lifecycle, its I/O."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from keras_aswa.averaging import WeightAverage


class AveragingCallback(keras.callbacks.Callback):
    """Base of the averaging callbacks: owns a `WeightAverage` of the model.

    Subclasses decide, at each epoch end, whether to restart or update the
    average; this class resets it when training begins, writes it into the
    model when training ends (with `restore`), and exposes it.

    Args:
        restore: Whether `on_train_end` writes the average into the model.
        verbose: 0 for silence, 1 for one line per epoch.
    """

    def __init__(self, restore: bool = True, verbose: int = 0):
        super().__init__()
        self._restore = restore
        self.verbose = verbose
        self._average: WeightAverage | None = None

    def on_train_begin(self, logs=None):
        # One instance may serve several `fit` calls: each starts afresh.
        self._average = WeightAverage(self.model.weights)

    def on_train_end(self, logs=None):
        if not self._restore:
            return
        if self._average is None or self._average.empty:
            warnings.warn(
                f"{type(self).__name__} averaged no epoch, so the model keeps "
                "its final running weights.",
                stacklevel=2,
            )
            return
        self.apply_ensemble()
        if self.verbose:
            self._print(
                f"{type(self).__name__}: the model now holds the average of "
                f"{self.ensemble_size} snapshot(s)."
            )

    def _print(self, message: str) -> None:
        # Keras' progress lines go to stdout too; flush to keep their order.
        print(message, flush=True)

    @property
    def ensemble_size(self) -> int:
        """How many snapshots the average holds (0 before the first)."""
        return 0 if self._average is None else self._average.count

    def ensemble_weights(self) -> list[np.ndarray]:
        """The averaged weights, one numpy array per entry of `model.weights`.

        Float entries are in float32 (float64 for float64 variables), before
        rounding to the variable's dtype; entries of non-float variables hold
        the running model's values, so `model.set_weights` accepts the list.

        Raises:
            RuntimeError: If nothing has been averaged yet.
        """
        self._require_average()
        return self._average.numpy()

    def apply_ensemble(self) -> None:
        """Writes the average into the model now, e.g. after an interrupt.

        Raises:
            RuntimeError: If nothing has been averaged yet.
        """
        self._require_average()
        self._sync()
        self._average.apply()

    def _sync(self):
        # Reading `self.model` (not `self._model`) makes the JAX trainer write
        # its state into the variables the average reads and writes.
        return self.model

    def _require_average(self):
        if self._average is None or self._average.empty:
            raise RuntimeError(
                f"{type(self).__name__} has no average yet: train with it in "
                "`fit(callbacks=[...])` for at least one averaged epoch."
            )
