"""Adaptive Stochastic Weight Averaging as a Keras callback."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import keras

from keras_aswa import cadence, internals, resume
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
    only when that improves the validation score. At each epoch end (or every
    `update_freq` training batches), with `θ` the running weights, `E` the
    ensemble of `n` snapshots and `s` its score, the provisional ensemble
    `E + (θ - E) / (n + 1)` is scored (`p`), and the running model's score
    is `r`:

    - **hard**: `r` beats `p` and `s`: `E ← θ`, `n = 1`, `s = r`;
    - **soft**: else `p` beats `s`: `E` becomes the provisional ensemble,
      `n = n + 1`, `s = p`;
    - **reject**: else nothing changes.

    "Beats" is `keras.callbacks.EarlyStopping`'s rule: strictly better by
    more than `min_delta`; NaN and infinite scores never win. The running
    model trains on untouched; when training ends the model receives the
    ensemble (`restore_best=True`). The docs' "How ASWA decides" has the
    whole contract; "Fine-tuning a pretrained model" the step level.

    Args:
        monitor: Quantity to compare, as named in the epoch logs (e.g.
            `"val_loss"`, `"val_accuracy"`); with `score_fn`, the name its
            score is logged under.
        mode: `"auto"`, `"min"` or `"max"`. Under `"auto"`, a monitor ending
            in `loss` is minimised and a compiled metric follows its own
            direction.
        min_delta: Minimum change that counts as an improvement.
        start_from_epoch: First epoch (0-based, as Keras numbers them) that
            is scored.
        validation_data: Data to score on instead of `fit`'s validation
            data: `(x, y)` or `(x, y, sample_weight)` arrays, a
            `tf.data.Dataset`, a `keras.utils.PyDataset` or a torch
            `DataLoader`. The running model is then scored on it too.
            Required at step level (unless `score_fn` is given).
        validation_steps: How many batches of `validation_data` each check
            scores (None: all; arrays in batches of 32, as `evaluate`).
        score_fn: `score_fn(model) -> float`, scoring whatever weights the
            model holds, for metrics Keras cannot express (e.g. filtered
            MRR); give `mode`.
        restore_best: Whether the model receives the ensemble when training
            ends, however it stopped.
        update_freq: `"epoch"` (the default), an int `N` (a check every `N`
            of `fit`'s training batches, counted across epochs and resumes
            as `ModelCheckpoint(save_freq=N)` counts them), or `"auto"`
            (recommended for runs of a few epochs): `N` and `K`
            (`validation_steps`) from the fit's counts by
            `keras_aswa.cadence`, at least 24 checks a fit and two an
            epoch, a check on the fit's last batch.
        check_budget: With `"auto"`, the share of the training's forward
            passes the checks may take beyond that floor (0.1: a tenth).
        variables: What the ensemble holds. None: what training changes
            (trainable variables, BatchNorm statistics of trainable layers;
            not frozen layers nor LoRA's base kernels); `"all"`: every float
            variable; or a list of the model's variables.
        swap_on_epoch: Whether the model holds the ensemble between epochs,
            for callbacks placed after this one (e.g. `ModelCheckpoint`).
        batchnorm: `"average"` (the default) averages BatchNormalization
            statistics; `"recompute"` recomputes them over `batchnorm_data`
            for each averaged model (`keras_aswa.update_batchnorm`).
        batchnorm_data: What `"recompute"` passes over, as `fit`'s `x`.
        backup_dir: A folder every process can see where the averaging
            state is written after each decision and read back when `fit`
            resumes (with `keras.callbacks.BackupAndRestore`, in either
            order); see the docs' "Resuming a killed run".
        offload: None keeps the ensemble on the weights' devices; `"host"`
            keeps it in host memory.
        verbose: 0 for silence; 1 for the `"auto"` choice, one line per
            decision and a summary at the end of `fit`.

    Attributes:
        history: One dict per scored or skipped epoch (or check): `"epoch"`,
            `"running"`, `"provisional"`, `"decision"`, `"ensemble_size"`,
            `"ensemble_score"`, and `"step"` at step level.
        ensemble_size: How many snapshots the ensemble averages.
        best_score: The ensemble's score (None before the first decision).
        update_every: `N` at step level (None at epoch level).
        cadence: What `update_freq="auto"` chose (a
            `keras_aswa.cadence.Cadence`), None otherwise.
        timing: Empty until `fit` ends; then seconds: `"fit"`, `"checks"`
            and `"warm_up"` (a check and the averaging compiled before
            training at step level: `"warm_up_check"` plus
            `"warm_up_averaging"`).

    Raises:
        ValueError: On an unknown `mode`, a negative `start_from_epoch`, a
            step-level `update_freq` without `validation_data` or
            `score_fn`, or when training starts without any validation.

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
            **self._identity(),
        }

    def _identity(self) -> dict:
        """What else decides this run's scores: the data scored on and how
        much of it, and (with "auto") the budget N and K are chosen from."""
        if self.score_fn is not None:
            data = None  # the function is the whole score
        elif self.validation_data is not None:
            data = resume.fingerprint(self.validation_data)
        else:
            found = internals.fit_validation(self._fit) or {}
            data = resume.fingerprint([found.get("x"), found.get("y")])
            if found.get("steps") is not None:
                data.append(found["steps"])
        identity = {
            "validation": data,
            "validation_steps": self.validation_steps,
            "score_fn": resume.describe_function(self.score_fn),
        }
        if self.update_freq == "auto":
            identity["check_budget"] = self.check_budget
        return identity

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
