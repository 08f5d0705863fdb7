"""Adaptive Stochastic Weight Averaging as a Keras callback."""

from __future__ import annotations

import math
from collections.abc import Callable

from keras_aswa.callbacks import arguments
from keras_aswa.callbacks.base import AveragingCallback
from keras_aswa.callbacks.context import fit_has_validation
from keras_aswa.decision import decide, resolve_mode
from keras_aswa.scoring import (
    DataValidation,
    FitValidation,
    FunctionScore,
    Scorer,
)


class ASWA(AveragingCallback):
    """Adaptive Stochastic Weight Averaging (Demir, Sharma, Ngonga Ngomo 2024).

    Keeps a running average of the model's weights (the ensemble) that grows
    only when that improves the validation score. At the end of each epoch,
    with `θ` the running model's weights, `E` the ensemble of `n` snapshots
    and `s` its score:

    - the provisional ensemble `E + (θ - E) / (n + 1)` is scored (`p`),
    - **hard** update: if the running model's score `r` beats both `p` and
      `s`, the ensemble restarts from `θ` (`n = 1`, `s = r`);
    - **soft** update: else, if `p` beats `s`, the provisional ensemble is
      accepted (`n = n + 1`, `s = p`);
    - **reject**: else the ensemble stays as it is.

    The running model trains on untouched; at the end of training the model
    receives the ensemble (`restore_best=True`). "Beats" follows
    `keras.callbacks.EarlyStopping`: strictly better by more than
    `min_delta`; NaN and infinite scores never win.

    Cost: one extra evaluation per epoch (of the provisional ensemble) when
    the running model's score comes from `fit`'s validation; the weight
    bookkeeping runs with `keras.ops` on the weights' own device and holds at
    most two extra copies of the float weights.

    Args:
        monitor: Quantity to compare, as named in the epoch logs (e.g.
            `"val_loss"`, `"val_accuracy"`). With `score_fn`, the name under
            which its score is logged.
        mode: `"auto"`, `"min"` or `"max"`. Under `"auto"`, a monitor ending
            in `loss` is minimised and a compiled metric follows its own
            direction (accuracy is maximised).
        min_delta: Minimum change that counts as an improvement.
        start_from_epoch: First epoch (0-based, as Keras numbers them) that
            is scored; earlier epochs are neither scored nor averaged.
        validation_data: Data to score on instead of `fit`'s validation
            data: arrays as an `(x, y)` or `(x, y, sample_weight)` tuple, a
            `tf.data.Dataset`, a `keras.utils.PyDataset`, or a torch
            `DataLoader` on the torch backend. The running model is then
            evaluated on it too (two evaluations per epoch).
        score_fn: `score_fn(model) -> float` scoring whatever weights the
            model holds, for metrics Keras cannot express (e.g. filtered MRR
            for link prediction). It scores the running and the provisional
            model. Use `mode` to say which direction is better.
        restore_best: Whether the model receives the ensemble when training
            ends, however it stopped.
        swap_on_epoch: Whether the model holds the ensemble between epochs,
            so that callbacks placed after this one see it (e.g.
            `ModelCheckpoint` saves the ensemble); the running weights are
            swapped back in before the next epoch trains. Costs one more copy
            of the float weights.
        batchnorm: `"average"` (the default) averages BatchNormalization
            moving statistics like every other weight. `"recompute"`
            recomputes them (`keras_aswa.update_batchnorm`) for the
            provisional ensemble before it is scored and for the final
            ensemble, as the paper's image experiments did: one pass over
            `batchnorm_data` per epoch, in training mode, on top of the
            evaluation. An ensemble restarted by a hard update keeps the
            running model's score, measured with the running statistics.
        batchnorm_data: The data `"recompute"` passes over: what `fit` takes
            as `x` (arrays are batched with `fit`'s batch size), e.g. the
            training inputs or a subset of them.
        backup_dir: A folder where the averaging state (ensemble, size,
            score, history, epoch) is written atomically after every epoch,
            and read back when `fit` resumes, e.g. with
            `keras.callbacks.BackupAndRestore` after a crash: the resumed run
            ends with the same ensemble as an uninterrupted one. Removed when
            training finishes. A file that is truncated or belongs to another
            model stops `fit` with an error naming it.
        offload: None (the default) keeps the ensemble beside the weights,
            on their device and with their sharding: one float32 copy of the
            float weights in device memory. `"host"` keeps it in host memory
            as numpy arrays instead, for models that fill the accelerator, at
            the price of a device-to-host copy of the weights at each update
            and a host-to-device copy at each write.
        verbose: 0 for silence, 1 for one line per epoch with the decision,
            the scores and the ensemble size.

    Attributes:
        history: One dict per scored or skipped epoch with keys `"epoch"`,
            `"running"`, `"provisional"`, `"decision"`, `"ensemble_size"`
            and `"ensemble_score"`.
        ensemble_size: How many snapshots the ensemble averages.
        best_score: The ensemble's validation score (None before the first
            scored epoch).

    Raises:
        ValueError: On an unknown `mode`, a negative `start_from_epoch`, or
            when training starts without any validation to score on.

    Example:

    ```python
    aswa = keras_aswa.ASWA()
    model.fit(x, y, validation_split=0.1, epochs=50, callbacks=[aswa])
    print(aswa.ensemble_size, aswa.best_score)
    ```
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        min_delta: float = 0.0,
        start_from_epoch: int = 0,
        validation_data=None,
        score_fn: Callable | None = None,
        restore_best: bool = True,
        swap_on_epoch: bool = False,
        batchnorm: str = "average",
        batchnorm_data=None,
        backup_dir: str | None = None,
        offload: str | None = None,
        verbose: int = 0,
    ):
        verbose = arguments.verbosity(verbose)
        super().__init__(
            restore=restore_best,
            swap_on_epoch=swap_on_epoch,
            batchnorm=batchnorm,
            batchnorm_data=batchnorm_data,
            backup_dir=backup_dir,
            offload=offload,
            verbose=verbose,
        )
        if mode not in ("auto", "min", "max"):
            resolve_mode(monitor, mode)  # raises, saying what to pass
        start_from_epoch = arguments.epoch_index("start_from_epoch", start_from_epoch)
        min_delta = arguments.min_delta(min_delta)
        arguments.validation_data(validation_data)
        if validation_data is not None and score_fn is not None:
            raise ValueError(
                "Pass either validation_data or score_fn, not both: score_fn "
                "is the whole score."
            )
        self.monitor = monitor
        self.mode = mode
        self.min_delta = min_delta
        self.start_from_epoch = start_from_epoch
        self.validation_data = validation_data
        self.score_fn = score_fn
        self.restore_best = restore_best
        self._scorer = self._make_scorer()
        self._reset()

    __deepcopy__ = arguments.deepcopy_sharing_data

    def _make_scorer(self) -> Scorer:
        if self.score_fn is not None:
            return FunctionScore(self.score_fn)
        if self.validation_data is not None:
            return DataValidation(self.monitor, self.validation_data)
        return FitValidation(self.monitor)

    def _reset(self):
        self.best_score: float | None = None
        self._direction = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._reset()
        model = self.model
        self._scorer.on_train_begin(model)
        if (
            isinstance(self._scorer, FitValidation)
            and fit_has_validation(model) is False
        ):
            raise ValueError(
                "ASWA needs a validation score, and this fit has none. Pass "
                "validation_data=(x_val, y_val) or validation_split=0.1 to "
                "fit, or validation_data=... or score_fn=... to ASWA."
            )
        # Resolve "auto" before any training is spent where the compiled
        # metrics are built already (JAX, torch); TensorFlow builds them in
        # the first step, so there it waits for the first epoch end.
        try:
            self._direction = resolve_mode(self.monitor, self.mode, model)
        except ValueError:
            self._direction = None

    def _update(self, epoch, logs):
        if epoch < self.start_from_epoch:
            # The keys exist from the first epoch on: CSVLogger fixes its
            # columns then.
            self._log(logs)
            return
        model = self.model
        if self._direction is None:
            self._direction = resolve_mode(self.monitor, self.mode, model)
        running = self._scorer.running(model, logs)
        if running is not None and self.monitor not in logs:
            logs[self.monitor] = running  # for callbacks after this one
        provisional = None
        if running is None or self._average.empty:
            decision = decide(running, None, None, self._direction, initialised=False)
        else:
            with self._average.provisional():
                self._written()
                provisional = self._scorer.current(model)
            decision = decide(
                running, provisional, self.best_score, self._direction, self.min_delta
            )
        self._apply(decision, running, provisional)
        self.history.append(
            {
                "epoch": epoch,
                "running": running,
                "provisional": provisional,
                "decision": decision,
                "ensemble_size": self.ensemble_size,
                "ensemble_score": self.best_score,
            }
        )
        self._log(logs)
        if self.verbose:
            self._print(self._describe(epoch, self.history[-1]))

    def _log(self, logs):
        logs[f"aswa_{self.monitor}"] = (
            math.nan if self.best_score is None else self.best_score
        )
        logs["aswa_size"] = self.ensemble_size

    def _apply(self, decision, running, provisional):
        if decision in ("init", "hard"):
            self._average.restart()
            self.best_score = running
        elif decision == "soft":
            if self.batchnorm == "recompute":
                # The scored model's BatchNorm statistics were recomputed in
                # place: blend the averaged ones again.
                self._average.update()
            else:
                self._average.commit()  # the ensemble that was scored
            self.best_score = provisional
        else:
            self._average.discard()

    def _state_meta(self):
        return {"best_score": self.best_score}

    def _restore_state(self, meta):
        self.best_score = meta["best_score"]

    def _describe(self, epoch, record):
        def fmt(x):
            return "-" if x is None else f"{x:.4f}"

        return (
            f"Epoch {epoch + 1}: ASWA {record['decision']}: running "
            f"{self.monitor}={fmt(record['running'])}, provisional="
            f"{fmt(record['provisional'])}, ensemble={fmt(self.best_score)} "
            f"(size {record['ensemble_size']})"
        )
