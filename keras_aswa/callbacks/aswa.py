"""Adaptive Stochastic Weight Averaging as a Keras callback."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import keras

from keras_aswa import cadence, internals
from keras_aswa.cadence import Cadence
from keras_aswa.callbacks import arguments
from keras_aswa.callbacks.base import AveragingCallback
from keras_aswa.decision import decide, resolve_mode
from keras_aswa.isolation import rng_preserved
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

    The same steps can run every `update_freq` training batches instead of
    every epoch, for runs of one to a few epochs (fine-tuning), scored on
    `validation_data` given to the callback.

    Cost: one extra evaluation per epoch (of the provisional ensemble) when
    the running model's score comes from `fit`'s validation (two with the
    callback's own `validation_data`, or at step level); the weight
    bookkeeping is one fused call over all averaged weights per step, on
    their own device (`keras_aswa.kernels`), and holds at most two extra
    copies of the averaged weights.

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
            evaluated on it too (two evaluations per decision). Required
            with an int `update_freq` (unless `score_fn` is given).
        validation_steps: With `validation_data`, how many of its batches
            each evaluation uses (None: all), so that a check costs a
            fraction of an epoch. Arrays are batched by 32 for it, as
            `evaluate` does by default; their samples are then evaluated in
            batches of `fit`'s `batch_size` where that is larger (the same
            score, in fewer calls).
        score_fn: `score_fn(model) -> float` scoring whatever weights the
            model holds, for metrics Keras cannot express (e.g. filtered MRR
            for link prediction). It scores the running and the provisional
            model. Use `mode` to say which direction is better.
        restore_best: Whether the model receives the ensemble when training
            ends, however it stopped.
        update_freq: `"epoch"` (the default) decides at every epoch end;
            an int `N` decides every `N` of `fit`'s training batches,
            counted across epochs and resumes as `ModelCheckpoint(save_freq=N)`
            counts them (gradient accumulation and skipped loss-scale steps
            do not shift the checks), on the callback's `validation_data` or
            `score_fn`. With `steps_per_execution` above 1, Keras calls back
            once per execution, and a check falls at the first call at or
            past each multiple of `N` (2 and `N=3`: after batches 4, 6, 10,
            12, 16 of two 8-batch epochs). `"auto"` (recommended for runs
            of a few epochs) chooses `N`, and `validation_steps` `K` where
            it is None, from the fit's counts (`keras_aswa.cadence`: the same
            on any machine): every validation batch up to 32, at least 24
            checks over the fit and two an epoch (K then down to 8 where the
            budget is short), checks within `check_budget` beyond that
            floor, and a check on the fit's last batch. A check scores the
            running and the provisional weights in one compiled call of the
            model's `test_step` per batch, without `evaluate` and without
            changing `fit`'s metrics (docs: "Fine-tuning a pretrained
            model").
        check_budget: With `update_freq="auto"`, the share of the
            training's forward passes the checks may take (0.1: a tenth),
            beyond the floor of checks; the warm-up before training (one
            compile of a check and of the averaging) comes on top.
        variables: Which variables the ensemble holds. None (the default):
            what training changes, i.e. the trainable variables and the
            non-trainable float variables of trainable layers (BatchNorm
            statistics), not frozen layers nor LoRA's frozen base weights,
            which the model keeps as they are. `"all"`: every float variable.
            Or a list of the model's variables.
        swap_on_epoch: Whether the model holds the ensemble between epochs,
            so that callbacks placed after this one see it (e.g.
            `ModelCheckpoint` saves the ensemble); the running weights are
            swapped back in before the next epoch trains. Costs one more copy
            of the averaged weights.
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
            score, history, epoch) is written atomically after every epoch
            (every check at step level), and read back when `fit` resumes,
            e.g. with `keras.callbacks.BackupAndRestore` after a crash, in
            either order, wherever the kill fell (the first epoch, between
            the two callbacks' writes, after the last epoch): the state that
            belongs to what Keras restored comes back, and the resumed run
            ends with the same ensemble as an uninterrupted one, as long as
            the running model resumes on the same trajectory (Keras does not
            restore the order in which `shuffle=True` draws batches, and
            `BackupAndRestore(save_freq=N)` trains the restored epoch again
            from its first batch). LoRA bases, which Keras saves merged with
            their adapters, are kept there and put back. Locked for the
            whole `fit`; removed when training finishes. A file that is
            truncated, belongs to another model or was written with other
            arguments stops `fit` with an error naming it.
        offload: None (the default) keeps the ensemble beside the weights,
            on their device and with their sharding: one float32 copy of the
            float weights in device memory. `"host"` keeps it in host memory
            as numpy arrays instead, for models that fill the accelerator, at
            the price of a device-to-host copy of the weights at each update
            and a host-to-device copy at each write.
        verbose: 0 for silence, 1 for one line per decision: the epoch
            (0-based, as in `history`), the decision and why, the scores
            and the ensemble size, after a legend line.

    Attributes:
        history: One dict per scored or skipped epoch (or check) with keys
            `"epoch"`, `"running"`, `"provisional"`, `"decision"`,
            `"ensemble_size"` and `"ensemble_score"`, and `"step"` (`fit`'s
            training batches so far) at step level.
        ensemble_size: How many snapshots the ensemble averages.
        best_score: The ensemble's validation score (None before the first
            scored epoch).
        update_every: The training batches between two checks (the `N` that
            `update_freq="auto"` chose; None at epoch level, or before it
            chose).
        cadence: What `update_freq="auto"` chose for this fit (a
            `keras_aswa.cadence.Cadence`: `every`, `validation_steps`,
            `checks`, `share`), None otherwise.
        timing: Empty until `fit` ends; then seconds: `"fit"` (the whole
            fit), `"checks"` (the decisions, evaluations included) and
            `"warm_up"` (compiling a check and the averaging before
            training, at step level: `"warm_up_check"` plus
            `"warm_up_averaging"`).

    Raises:
        ValueError: On an unknown `mode`, a negative `start_from_epoch`, an
            int `update_freq` without `validation_data` or `score_fn`, or
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
        validation_steps: int | None = None,
        score_fn: Callable | None = None,
        restore_best: bool = True,
        update_freq: str | int = "epoch",
        check_budget: float = 0.1,
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
        if validation_steps is not None and validation_data is None:
            raise ValueError(
                "validation_steps= limits the callback's own validation_data: "
                "pass validation_data= too (fit's validation_steps= limits "
                "fit's validation)."
            )
        if self.update_freq != "epoch" and validation_data is None and score_fn is None:
            raise ValueError(
                f"update_freq={update_freq!r} decides between epoch ends, where "
                "fit has no validation score: pass validation_data=(x_val, "
                "y_val) (and validation_steps= to score on its first batches "
                "only) or score_fn= to ASWA."
            )
        self.monitor = monitor
        self.mode = mode
        self.min_delta = min_delta
        self.start_from_epoch = start_from_epoch
        self.validation_data = validation_data
        self.validation_steps = validation_steps
        self.score_fn = score_fn
        self.check_budget = arguments.share("check_budget", check_budget)
        self._scorer = self._make_scorer()

    __deepcopy__ = arguments.deepcopy_sharing_data

    @property
    def update_every(self) -> int | None:
        """The training batches between two checks (None at epoch level)."""
        return None if self.update_freq == "epoch" else self._every

    def __getstate__(self):
        state = super().__getstate__()
        state["_scorer"] = None  # holds a compiled test function: made anew
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._scorer = self._make_scorer()

    def _make_scorer(self) -> Scorer:
        if self.score_fn is not None:
            return FunctionScore(self.score_fn)
        if self.validation_data is not None:
            return DataValidation(
                self.monitor, self.validation_data, steps=self.validation_steps
            )
        return FitValidation(self.monitor)

    def _reset_fit(self):
        super()._reset_fit()
        self.best_score: float | None = None
        self.cadence: Cadence | None = None  # what update_freq="auto" chose
        self._direction = None
        self._warm_up_seconds = {"warm_up_check": 0.0, "warm_up_averaging": 0.0}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        model = self.model
        self._scorer.on_train_begin(model, self._fit)
        if (
            isinstance(self._scorer, FitValidation)
            and internals.fit_has_validation(self._fit) is False
        ):
            raise ValueError(
                "ASWA needs a validation score, and this fit has none. Pass "
                "validation_data=(x_val, y_val) or validation_split=0.1 to "
                "fit, or validation_data=... or score_fn=... to ASWA."
            )
        # Resolve "auto" before any training is spent where the compiled
        # metrics are built already (JAX, torch); TensorFlow builds them in
        # the first step, so there it waits for the first decision.
        try:
            self._direction = resolve_mode(self.monitor, self.mode, model)
        except ValueError:
            self._direction = None
        running_key = f"aswa_running_{self.monitor}"
        for callback in internals.fit_callbacks(self._fit):
            if getattr(callback, "monitor", None) == running_key and isinstance(
                callback, keras.callbacks.ModelCheckpoint
            ):
                # It compares the running model's scores from the first check.
                internals.set_monitor_direction(callback)
        if self.update_freq == "auto":
            self._every = self._choose()
        if self.update_freq != "epoch":
            if model.built:
                self._warm_up(model)
            else:
                self._every = None  # `_choose_every` warms up at the first batch
        self._warn_if_no_check()

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self._scorer.on_train_end()

    def _warm_up(self, model) -> None:
        """Compiles a check (at its own batch shapes) and the averaging now,
        outside the training; the seconds go to `timing["warm_up"]`."""
        # Neither the batch order nor fit's metrics may change.
        with rng_preserved(), internals.training_state_kept(model):
            start = time.perf_counter()
            self._scorer.warm_up(model)
            compiled = time.perf_counter()
            self._engine().warm_up()
            self._warm_up_seconds = {
                "warm_up_check": compiled - start,
                "warm_up_averaging": time.perf_counter() - compiled,
            }

    def _warn_if_no_check(self) -> None:
        steps, epochs = (
            (self.params or {}).get("steps"),
            (self.params or {}).get("epochs"),
        )
        if not isinstance(self.update_freq, int) or not steps or not epochs:
            return
        if self.update_freq > steps * epochs:
            warnings.warn(
                f"update_freq={self.update_freq} is more than the {steps * epochs} "
                "training batches of this fit, so ASWA would never check: pass "
                f"update_freq='auto', or an int of at most {steps * epochs}.",
                stacklevel=3,
            )

    def _choose(self) -> int:
        """`update_freq="auto"`: N and K by `keras_aswa.cadence`, from this
        fit's counts; K is set on the scorer, N returned."""
        steps = self._steps_per_epoch()
        epochs = (self.params or {}).get("epochs")
        total = steps * epochs if steps and epochs else None
        self.cadence = cadence.choose(
            total_steps=total,
            steps_per_epoch=steps,
            validation_batches=self._scorer.batches(),
            batch_size=self._batch_size,
            validation_batch_size=self._scorer.batch_samples(),
            check_budget=self.check_budget,
            validation_steps=self.validation_steps,
            counted=not isinstance(self._scorer, FunctionScore),
        )
        if self.cadence.validation_steps is not None:
            self._scorer.limit(self.cadence.validation_steps)
        self._last_check = total  # the last weights are a candidate
        if self.verbose:
            self._print(_describe_cadence(self.cadence, self.check_budget, total))
        return self.cadence.every

    def _choose_every(self):
        # A model built by its first batch (TensorFlow without an Input):
        # the check compiles now, before the next batches train.
        self._warm_up(self.model)
        return self.update_freq if self.cadence is None else self.cadence.every

    def _decide(self, epoch, step, logs):
        if epoch < self.start_from_epoch:
            # The keys exist from the first epoch on: CSVLogger fixes its
            # columns then.
            self._log(logs)
            return
        model = self.model
        if self._direction is None:
            self._direction = resolve_mode(self.monitor, self.mode, model)
        average = self._average
        running, provisional = self._scorer.scores(model, logs, average)
        if running is not None and step is None and self.monitor not in logs:
            # For callbacks after this one. Not at a check within an epoch:
            # its batch logs are no validation (the progress bar would show
            # a K-batch score as fit's val_loss).
            logs[self.monitor] = running
        if provisional is None:
            decision = decide(running, None, None, self._direction, initialised=False)
        else:
            decision = decide(
                running, provisional, self.best_score, self._direction, self.min_delta
            )
        before = self.best_score
        if decision in ("init", "hard"):
            average.restart()
            self.best_score = running
        elif decision == "soft":
            average.commit()  # the ensemble that was scored
            self.best_score = provisional
        else:
            average.discard()
        record = {
            "epoch": epoch,
            "running": running,
            "provisional": provisional,
            "decision": decision,
            "ensemble_size": self.ensemble_size,
            "ensemble_score": self.best_score,
        }
        if step is not None:
            record["step"] = step
        self.history.append(record)
        self._log(logs)
        if running is not None:
            # For ModelCheckpoint(monitor=...) after this callback: the
            # running model's score, at every check.
            logs[f"aswa_running_{self.monitor}"] = running
        if self.verbose:
            legend = _LEGEND + "\n" if len(self.history) == 1 else ""
            self._print(legend + self._describe(record, before))

    def _replayed_logs(self, epoch):
        # The running model's score of a replayed epoch end, as fit had it.
        if not isinstance(self._scorer, FitValidation):
            return {}
        model = self.model
        if not internals.fit_validates_at(self._fit, epoch):
            return {}
        return {self.monitor: self._scorer.current(model)}

    def _log(self, logs):
        logs[f"aswa_{self.monitor}"] = (
            math.nan if self.best_score is None else self.best_score
        )
        logs["aswa_size"] = self.ensemble_size

    def _config(self):
        return {
            **super()._config(),
            "monitor": self.monitor,
            "mode": self.mode,
            "min_delta": self.min_delta,
            "start_from_epoch": self.start_from_epoch,
        }

    def _state_meta(self):
        steps = None if self.cadence is None else self.cadence.validation_steps
        return {"best_score": self.best_score, "validation_steps": steps}

    def _load_state(self, meta):
        self.best_score = meta["best_score"]
        if meta.get("validation_steps") is not None:
            # The K that "auto" chose in the run that wrote the state.
            self._scorer.limit(meta["validation_steps"])

    def _extra_timing(self):
        return {"warm_up": sum(self._warm_up_seconds.values()), **self._warm_up_seconds}

    def _summary(self):
        if not self.history:
            return None
        counts = {d: 0 for d in _REASONS}
        for record in self.history:
            counts[record["decision"]] += 1
        decisions = ", ".join(f"{d} {n}" for d, n in counts.items() if n)
        where = "step" if "step" in self.history[-1] else "epoch"
        made = [r for r in self.history if r["decision"] not in ("reject", "skip")]
        start = next(
            (r for r in reversed(made) if r["decision"] in ("init", "hard")), None
        )
        if start is None:
            ensemble = "no ensemble"
        elif self.ensemble_size == 1:
            ensemble = (
                "no averaging: the ensemble is the running model at "
                f"{where} {start[where]}"
            )
        else:
            ensemble = (
                f"the ensemble averages {self.ensemble_size} snapshots, from "
                f"{where} {start[where]} to {made[-1][where]}"
            )
        scored = [r["running"] for r in self.history if r["running"] is not None]
        last = "-" if not scored else f"{scored[-1]:.6g}"
        best = "-" if self.best_score is None else f"{self.best_score:.6g}"
        fit = self.timing["fit"]
        added = self.timing["checks"] + self.timing["warm_up"]
        share = added / fit if fit else 0.0
        return (
            f"ASWA summary: {len(self.history)} decisions ({decisions}); "
            f"{ensemble}.\n"
            f"  {self.monitor}: ensemble {best}, running model at the last "
            f"check {last}.\n"
            f"  time added: {added:.1f} s, {100 * share:.1f}% of the fit's "
            f"{fit:.1f} s (checks {self.timing['checks']:.1f} s, warm-up "
            f"{self.timing['warm_up']:.1f} s)."
        )

    def _describe(self, record, before):
        def fmt(x):
            return "-" if x is None else f"{x:.8f}"

        where = f"ASWA epoch {record['epoch']}"
        if "step" in record:
            where += f", step {record['step']}"
        decision = record["decision"]
        return (
            f"{where}: {decision} ({_REASONS[decision]}): r {self.monitor}="
            f"{fmt(record['running'])}, p={fmt(record['provisional'])}, "
            f"e={fmt(before)} -> {fmt(self.best_score)} "
            f"(size {record['ensemble_size']})"
        )


_LEGEND = (
    "ASWA: r = running model, p = provisional ensemble (the ensemble with this "
    "snapshot added), e = ensemble; epochs count from 0, as in aswa.history "
    "and plot_history."
)
_REASONS = {
    "init": "first scored epoch",
    "hard": "r beats p and e",
    "soft": "p beats e",
    "reject": "p does not beat e",
    "skip": "no usable score",
}


def _describe_cadence(chosen: Cadence, check_budget: float, total: int | None) -> str:
    """The line `update_freq="auto"` prints: what it chose, and how to
    choose it again."""
    on = (
        ""
        if chosen.validation_steps is None
        else f" on {chosen.validation_steps} validation batches"
    )
    checks = (
        ""
        if chosen.checks is None
        else f" ({chosen.checks} checks over the fit's {total} batches, its "
        "last included)"
    )
    cost = (
        ""
        if chosen.share is None
        else f"; they count {100 * chosen.share:.0f}% of the training's forward "
        f"passes (check_budget={check_budget:g}"
        + (
            f", exceeded for at least {cadence.MIN_CHECKS} checks a fit"
            if chosen.share > check_budget
            else ""
        )
        + ")"
    )
    again = f"update_freq={chosen.every}" + (
        ""
        if chosen.validation_steps is None
        else f", validation_steps={chosen.validation_steps}"
    )
    return (
        f"ASWA update_freq='auto': a check every {chosen.every} batches{on}"
        f"{checks}{cost}. The same checks: ASWA({again})."
    )
