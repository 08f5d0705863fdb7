"""Stochastic Weight Averaging (Izmailov et al. 2018) as a Keras callback."""

from __future__ import annotations

import math

from keras_aswa import internals
from keras_aswa.callbacks import arguments
from keras_aswa.callbacks.base import AveragingCallback


class SWA(AveragingCallback):
    """Stochastic Weight Averaging: the equal-weight mean of epoch-end weights.

    From `start_from_epoch` on, the weights at the end of every `frequency`-th
    epoch join the average; when training ends the model receives it
    (`restore_best=True`). Same arithmetic and dtype rules as `ASWA`: the average
    accumulates in float32 on the weights' device, BatchNormalization moving
    statistics are averaged too, integer variables are left alone.

    SWA does not touch the learning rate. It is usually run with a constant
    or cyclic rate over the averaging phase; pair it with a Keras schedule,
    for example a constant rate after a decay:

    ```python
    steps = epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        0.1, decay_steps=steps // 2, alpha=0.5)  # 0.1 -> 0.05, then flat
    model.compile(keras.optimizers.SGD(schedule), ...)
    model.fit(..., epochs=epochs, callbacks=[SWA(start_from_epoch=0.5)])
    ```

    Args:
        start_from_epoch: First epoch (0-based) averaged: an int, or a float
            in (0, 1) meaning that fraction of `fit`'s epochs (0.75 with 100
            epochs starts at epoch 75).
        frequency: Average every `frequency`-th epoch from the first.
        restore_best: Whether the model receives the average when training
            ends.
        update_freq: `"epoch"` (the default) averages at epoch ends; an int
            `N` averages every `N` of `fit`'s training batches (counted
            across epochs and resumes, as `ModelCheckpoint(save_freq=N)`
            counts them) from `start_from_epoch` on, for runs of
            one to a few epochs; with `steps_per_execution` above 1, at the
            first of Keras' calls (one per execution) at or past each
            multiple of `N`. `frequency` must then stay 1.
        variables: Which variables are averaged. None (the default): what
            training changes (trainable variables and the non-trainable float
            variables of trainable layers, e.g. BatchNorm statistics), not
            frozen layers nor LoRA's frozen base weights. `"all"`: every
            float variable. Or a list of the model's variables.
        swap_on_epoch: Whether the model holds the average between epochs,
            so that callbacks placed after this one (e.g. `ModelCheckpoint`)
            see it; the running weights are swapped back in before the next
            epoch trains. Costs one more copy of the float weights.
        batchnorm: `"average"` (the default) averages BatchNormalization
            moving statistics like every other weight; `"recompute"`
            recomputes them (`keras_aswa.update_batchnorm`) over
            `batchnorm_data` whenever the average is written into the model:
            at the end, and at each epoch end with `swap_on_epoch`. One pass
            over `batchnorm_data` each time.
        batchnorm_data: The data `"recompute"` passes over: what `fit` takes
            as `x` (arrays are batched with `fit`'s batch size).
        backup_dir: A folder where the average, its size, the history and the
            epoch are written atomically after every epoch and read back when
            `fit` resumes (e.g. with `keras.callbacks.BackupAndRestore`).
            Removed when training finishes.
        offload: None (the default) keeps the average beside the weights, on
            their device: one float32 copy of the float weights in device
            memory. `"host"` keeps it in host memory as numpy arrays instead,
            at the price of a device-to-host copy of the weights per update.
        verbose: 0 for silence, 1 for one line per averaged epoch.

    Attributes:
        history: One dict per averaged epoch (or check): `"epoch"`,
            `"ensemble_size"`, and `"step"` at step level.
        ensemble_size: How many snapshots the average holds.

    Raises:
        ValueError: On a negative or out-of-range `start_from_epoch`, a
            `frequency` below 1.

    Example:

    ```python
    swa = keras_aswa.SWA(start_from_epoch=0.75)
    model.fit(x, y, epochs=40, callbacks=[swa])   # the model holds the average
    ```
    """

    def __init__(
        self,
        start_from_epoch: int | float = 0,
        frequency: int = 1,
        restore_best: bool = True,
        update_freq: str | int = "epoch",
        variables=None,
        swap_on_epoch: bool = False,
        batchnorm: str = "average",
        batchnorm_data=None,
        backup_dir: str | None = None,
        offload: str | None = None,
        verbose: int = 0,
    ):
        verbose = arguments.verbosity(verbose)
        super().__init__(
            restore_best=restore_best,
            update_freq=update_freq,
            variables=variables,
            swap_on_epoch=swap_on_epoch,
            batchnorm=batchnorm,
            batchnorm_data=batchnorm_data,
            backup_dir=backup_dir,
            offload=offload,
            verbose=verbose,
        )
        start_from_epoch = arguments.epoch_index_or_fraction(
            "start_from_epoch", start_from_epoch
        )
        frequency = arguments.positive_int(
            "frequency", frequency, "average every frequency-th epoch"
        )
        if self.update_freq == "auto":
            raise ValueError(
                "update_freq='auto' times ASWA's checks, which evaluate the "
                "model; SWA's updates cost no evaluation: pass an int N to "
                "average every N training batches, or 'epoch'."
            )
        if frequency != 1 and self.update_freq != "epoch":
            raise ValueError(
                f"frequency={frequency!r} counts epochs, and update_freq="
                f"{update_freq!r} averages every {update_freq} batches: pass "
                "one or the other."
            )
        self.start_from_epoch = start_from_epoch
        self.frequency = frequency

    __deepcopy__ = arguments.deepcopy_sharing_data

    def _reset_fit(self):
        super()._reset_fit()
        self._first_epoch = 0  # start_from_epoch as an index, in on_train_begin

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._first_epoch = self.start_from_epoch
        if isinstance(self.start_from_epoch, float):
            self._first_epoch = math.floor(
                self.start_from_epoch * self.params["epochs"]
            )

    def _decide(self, epoch, step, logs):
        since = epoch - self._first_epoch
        due = since >= 0 and (step is not None or since % self.frequency == 0)
        if due:
            internals.sync_model(self)
            self._average.update()
            record = {"epoch": epoch, "ensemble_size": self.ensemble_size}
            if step is not None:
                record["step"] = step
            self.history.append(record)
            if self.verbose:
                where = f"SWA epoch {epoch}" + (
                    "" if step is None else f", step {step}"
                )
                self._print(f"{where}: averaged, size {self.ensemble_size}")
        self._log(logs)

    def _log(self, logs):
        logs["swa_size"] = self.ensemble_size

    def _config(self):
        return {
            **super()._config(),
            "start_from_epoch": self.start_from_epoch,
            "frequency": self.frequency,
        }
