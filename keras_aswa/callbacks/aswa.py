"""Adaptive Stochastic Weight Averaging as a Keras callback."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import numpy as np

from keras_aswa import internals, resume
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
            it is None, so that the checks take at most `check_budget` of
            the fit's training time: the evaluation (on one validation
            batch) and the averaging (on a dry run) are compiled before
            training, in a warm-up reported apart in `timing["warm_up"]`,
            and the evaluation timed on one batch and on the most a check
            may use (the faster of two calls where the first may compile),
            which gives its fixed and its per-batch seconds (once `K` is
            chosen, one more evaluation on `K` batches, where neither was on
            `K`, compiles their shapes, in the warm-up too); the first five
            training batches are timed, and each affords `check_budget`
            times their median time of checks. Then `K` is all the
            validation batches, at most 32,
            fewer where that keeps eight checks per epoch within the budget,
            but at least 8 (or all, where fewer): frequent checks on 8
            batches chose better ensembles than rare ones on more; and `N`
            the fewest batches whose share of the budget covers a check (two
            evaluations of `K` batches), at most half an epoch. Where two
            checks an epoch on 8 batches exceed the budget, there is one an
            epoch (`N` at most an epoch) on 8 batches, even where that
            exceeds the budget (short epochs): a check costs then at most
            what validating every epoch on 8 batches costs.
            Where the epoch's length is unknown, `K` is all the batches (at
            most 32) and `N` is not capped. Checks fall at the multiples of
            `N` from the batch where it is chosen on. `start_from_epoch`
            still counts epochs.
        check_budget: With `update_freq="auto"`, the share of the fit's
            training time the checks may take (0.1: a tenth), except where
            one check an epoch on 8 batches exceeds it; the warm-up before
            training comes on top.
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
        timing: Empty until `fit` ends; then seconds: `"fit"` (the whole
            fit), `"checks"` (the decisions, evaluations included) and
            `"warm_up"` (compiling the evaluation and the averaging before
            training, at step level).

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
        self._direction = None
        self._warm_up_seconds = 0.0
        # (fixed, per-batch) seconds of an evaluation, timed by "auto"'s warm-up
        self._evaluation_cost: tuple[float, float] | None = None
        self._stamps: list[float] = []  # batch ends, until "auto" chooses N
        self._chosen: dict = {}
        self._resumed_steps = None  # the K of the state resumed from

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
        if self.update_freq != "epoch" and model.built:
            self._warm_up(model)
        self._warn_if_no_check()

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self._scorer.on_train_end()

    def _warm_up(self, model) -> None:
        """Compiles the evaluation and the averaging now, outside the
        training whose share the checks count; with "auto", times the
        evaluation too."""
        with rng_preserved():  # the batch order must not change
            start = time.perf_counter()
            self._scorer.warm_up(model)
            self._engine().warm_up()
            self._warm_up_seconds = time.perf_counter() - start
            if self.update_freq == "auto":
                self._evaluation_cost = self._time_evaluations(model)

    def _time_evaluations(self, model) -> tuple[float, float]:
        """An evaluation's cost as `(fixed, per_batch)` seconds: a call's
        overhead and each batch's share, from evaluations on 1 batch and on
        the most a check may use (where the batches are a choice; else
        `(one check's evaluation, 0)`). Where an evaluation's shapes may be
        new (its last batch shorter), the faster of two calls: the first may
        compile, and noise only adds. Their time counts as warm-up."""

        def timed(steps, calls=2):
            return min(self._evaluate_once(model, steps) for _ in range(calls))

        most = self._scorer.batches()
        if self.validation_steps is not None or most is None:
            return timed(None), 0.0
        most = min(most, _MAX_BATCHES)
        one = timed(1, calls=1)  # its shapes compiled by the warm-up
        if most == 1:
            return one, 0.0
        # Per batch: the slope between the two, never below zero (noise).
        per_batch = max(0.0, (timed(most) - one) / (most - 1))
        return max(0.0, one - per_batch), per_batch

    def _evaluate_once(self, model, steps) -> float:
        """Evaluates once on `steps` batches (see `Scorer.warm_up`); its
        seconds, which count as warm-up."""
        start = time.perf_counter()
        self._scorer.warm_up(model, steps)
        seconds = time.perf_counter() - start
        self._warm_up_seconds += seconds
        return seconds

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

    def _choose_every(self) -> int | None:
        """The rule of `update_freq="auto"`; see the class docstring."""
        if self._evaluation_cost is None:
            # Built by its first batch (TensorFlow): compiled and timed now,
            # before the batches that are timed.
            self._warm_up(self.model)
        now = time.perf_counter()
        self._stamps.append(now)
        steps = self._steps_per_epoch()
        enough = len(self._stamps) >= _TIMED_BATCHES + 1
        if not enough and (steps is None or len(self._stamps) < steps):
            return None
        # The first batch compiled the training step: timed from the second.
        gaps = np.diff(self._stamps[1:])
        step_seconds = float(np.median(gaps)) if gaps.size else now - self._fit_start
        # The seconds of checks a training batch affords. The warm-up, spent
        # once, is not charged: on a fit of a few seconds it takes most of
        # the budget, and a rule that charged it checked a 2-epoch MLP on
        # Fashion-MNIST once an epoch, i.e. kept the last model.
        rate = self.check_budget * step_seconds
        # Two checks an epoch at least, or one where two on _MIN_BATCHES
        # batches would exceed the budget: fewer checks, each on enough data.
        floor_every = max(1, steps // _CHECKS_PER_EPOCH) if steps else None
        batches = self._scorer.batches()  # K: None where unknown, or a score_fn
        fixed, per_batch = self._evaluation_cost

        def check_seconds(k):  # two evaluations of k batches
            return 2 * (fixed + per_batch * k)

        if self.validation_steps is None and batches is not None:

            def affordable(every):  # the batches a check every `every` affords
                if every is None:
                    return _MAX_BATCHES
                spare = rate * every / 2 - fixed
                if spare < 0:
                    return 0
                return _MAX_BATCHES if per_batch == 0 else math.floor(spare / per_batch)

            # More batches only where _AIMED_CHECKS an epoch afford them:
            # frequent checks on _MIN_BATCHES beat rare ones on more (the
            # quality benchmark's 2-epoch runs).
            aim_every = max(1, steps // _AIMED_CHECKS) if steps else None
            there = batches
            fewest = min(batches, _MIN_BATCHES)
            if affordable(aim_every) >= fewest:
                batches = min(batches, _MAX_BATCHES, affordable(aim_every))
            elif affordable(floor_every) >= fewest:
                batches = fewest
            else:
                # Over the budget rather than on fewer batches: on one batch
                # of 32 images, once an epoch, the checks chose worse than
                # the last model (the quality benchmark's fine-tuning runs).
                floor_every = steps
                batches = fewest
            timed_on = (1, min(there, _MAX_BATCHES))  # by _time_evaluations
            self._scorer.limit(batches)
            if batches not in timed_on:
                # Compiled now for the shapes of K batches (a last, shorter
                # one), not in the first check.
                with rng_preserved():
                    self._evaluate_once(self.model, None)
        check = check_seconds(batches or 1)
        every = floor_every or 1
        if rate > 0:
            every = max(1, math.ceil(check / rate))
        if floor_every is not None:
            every = min(every, floor_every)
        self._chosen = {
            "update_every": every,
            "validation_steps": batches,
            "step_seconds": step_seconds,
            "evaluation_seconds": {"fixed": fixed, "per_batch": per_batch},
            "warm_up_seconds": self._warm_up_seconds,
        }
        if self.verbose:
            self._print(
                f"ASWA update_freq='auto': a check every {every} batches"
                + ("" if batches is None else f", on {batches} validation batches")
                + f" (a training batch took {1000 * step_seconds:.1f} ms, "
                f"a check {1000 * check:.1f} ms, "
                f"check_budget={self.check_budget:g} of the training time; "
                f"the warm-up took {self._warm_up_seconds:.1f} s)."
            )
        return every

    def _decide(self, epoch, step, logs):
        if epoch < self.start_from_epoch:
            # The keys exist from the first epoch on: CSVLogger fixes its
            # columns then.
            self._log(logs)
            return
        model = self.model
        if self._direction is None:
            self._direction = resolve_mode(self.monitor, self.mode, model)
        running = self._scorer.running(model, logs)
        if running is not None and step is None and self.monitor not in logs:
            # For callbacks after this one. Not at a check within an epoch:
            # its batch logs are no validation (the progress bar would show
            # a K-batch score as fit's val_loss).
            logs[self.monitor] = running
        average = self._average
        provisional = None
        if running is None or average.empty:
            decision = decide(running, None, None, self._direction, initialised=False)
        else:
            average.show_provisional()
            try:
                provisional = self._scorer.current(model)
            finally:
                average.hide()
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
        # K: chosen in this fit, or in the run it resumed (kept across resumes).
        steps = self._chosen.get("validation_steps") or self._resumed_steps
        return {"best_score": self.best_score, "validation_steps": steps}

    def _load_state(self, meta):
        self.best_score = meta["best_score"]
        if meta.get("validation_steps") is not None:
            # The K that "auto" chose in the run that wrote the state.
            self._resumed_steps = meta["validation_steps"]
            self._scorer.limit(meta["validation_steps"])

    def _extra_timing(self):
        return {"warm_up": self._warm_up_seconds}

    def _summary(self):
        if not self.history:
            return None
        counts = {d: 0 for d in _REASONS}
        for record in self.history:
            counts[record["decision"]] += 1
        decisions = ", ".join(f"{d} {n}" for d, n in counts.items() if n)
        where = "step" if "step" in self.history[-1] else "epoch"
        first = next(
            (
                r[where]
                for r in reversed(self.history)
                if r["decision"] in ("init", "hard")
            ),
            None,
        )
        last = next(
            (
                r[where]
                for r in reversed(self.history)
                if r["decision"] != "reject" and r["decision"] != "skip"
            ),
            None,
        )
        span = "" if first is None else f" from {where} {first} to {last}"
        fit = self.timing["fit"]
        share = self.timing["checks"] / fit if fit else 0.0
        best = "-" if self.best_score is None else f"{self.best_score:.6g}"
        return (
            f"ASWA summary: {len(self.history)} decisions ({decisions}); "
            f"ensemble of {self.ensemble_size} snapshot(s){span}; best "
            f"{self.monitor} {best}; checks took {self.timing['checks']:.1f} s, "
            f"{100 * share:.1f}% of the fit's {fit:.1f} s (warm-up: "
            f"{self._warm_up_seconds:.1f} s)."
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


# update_freq="auto": timed training batches before N is chosen, timed
# evaluations of one batch, the checks an epoch gets at least where the
# budget allows, and the fewest and most validation batches a check scores
# (on fewer than 8 batches of 32 a score moves with the batches more than
# with the weights: on Fashion-MNIST, checks on 1 to 4 batches chose worse
# ensembles).
_TIMED_BATCHES = 5
_CHECKS_PER_EPOCH = 2
_AIMED_CHECKS = 8
_MIN_BATCHES = 8
_MAX_BATCHES = 32

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
