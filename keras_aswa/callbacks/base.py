"""What every averaging callback shares: when it acts, its average, its state."""

from __future__ import annotations

import time
import warnings

import keras
import numpy as np
from keras import ops

from keras_aswa import internals, kernels, selection
from keras_aswa.averaging import WeightAverage, check_offload
from keras_aswa.batchnorm import update_batchnorm
from keras_aswa.callbacks import arguments
from keras_aswa.callbacks.peers import check_peers
from keras_aswa.isolation import rng_preserved
from keras_aswa.resume import Resume, new_average_warning

BATCHNORM_MODES = ("average", "recompute")
EPOCH = "epoch"
AUTO = "auto"


class AveragingCallback(keras.callbacks.Callback):
    """Base of the averaging callbacks: owns a `WeightAverage` of the model.

    Subclasses hold the policy (`_decide`: fold the current weights in, or
    not); this class decides when it runs (every epoch end, or every
    `update_freq` training batches: `_act`), which variables are averaged
    (`_engine`), resumes and saves the state (through a
    `keras_aswa.resume.Resume`), writes the average into the model when
    training ends (with `restore_best`), and exposes it.
    Like Keras' `EarlyStopping`, what belongs to one `fit` is declared and
    reset in one method, `_reset_fit`, at the start of each.

    Args:
        restore_best: Whether `on_train_end` writes the average into the
            model.
        update_freq: `"epoch"` to act at every epoch end, or an int `N` to
            act every `N` of `fit`'s training batches, counted across epochs
            and resumes (as `ModelCheckpoint(save_freq=N)` counts; not the
            optimizer's iterations, which gradient accumulation and skipped
            loss-scale steps hold back).
        variables: Which variables are averaged: None for what training
            changes (see `keras_aswa.selection`), `"all"` for every float
            variable, or a list of the model's variables.
        swap_on_epoch: Whether the model holds the average between epochs:
            written in at the end of each epoch, after this callback's own
            work, and swapped back out before the next epoch trains. Callbacks
            placed after this one (e.g. `ModelCheckpoint`) then see the
            average. Costs one more copy of the averaged weights.
        batchnorm: `"average"` averages BatchNormalization moving statistics
            like every other weight; `"recompute"` recomputes them with
            `update_batchnorm` over `batchnorm_data` each time an average is
            written into the model.
        batchnorm_data: The data `"recompute"` passes over (what `fit` takes
            as `x`; arrays are batched with `fit`'s batch size).
        backup_dir: Where the averaging state is written after every epoch
            (or check) and read back when a `fit` resumes (see
            `keras_aswa.state`).
        offload: None keeps the average beside the weights on their device;
            `"host"` keeps it in host memory (see `WeightAverage`).
        verbose: 0 for silence, 1 for one line per decision.
    """

    def __init__(
        self,
        restore_best: bool = True,
        update_freq: str | int = EPOCH,
        variables=None,
        swap_on_epoch: bool = False,
        batchnorm: str = "average",
        batchnorm_data=None,
        backup_dir: str | None = None,
        offload: str | None = None,
        verbose: int = 0,
    ):
        super().__init__()
        check_offload(offload)
        selection.check_argument(variables)
        update_freq = arguments.update_frequency("update_freq", update_freq)
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(
                f"batchnorm={batchnorm!r} is not one of {BATCHNORM_MODES}: "
                "'average' averages the moving statistics, 'recompute' "
                "recomputes them over batchnorm_data."
            )
        if batchnorm == "recompute" and batchnorm_data is None:
            raise ValueError(
                "batchnorm='recompute' passes over data to recompute the "
                "BatchNormalization statistics: pass batchnorm_data=, e.g. the "
                "training inputs x_train, a tf.data.Dataset or a PyDataset "
                "(a few hundred batches are plenty)."
            )
        self.restore_best = restore_best
        self.update_freq = update_freq
        self.variables = variables
        self.swap_on_epoch = swap_on_epoch
        self.batchnorm = batchnorm
        self.batchnorm_data = batchnorm_data
        self.backup_dir = None if backup_dir is None else str(backup_dir)
        self.offload = offload
        self.verbose = verbose
        self._reset_fit()
        if self.update_freq != EPOCH:
            # Only step-level callbacks take batch hooks: Keras dispatches the
            # batches of a fit without any asynchronously.
            internals.take_train_batch_end(self, self._count_batches)

    def __getstate__(self):
        # What belongs to a fit (the model, its average with its compiled
        # kernels, the locked state folder) is not pickled: a pickled
        # callback keeps its arguments and history, as a deep copy does.
        state = self.__dict__.copy()
        for name in (
            "_model",
            "_fit",
            "_average",
            "_resumed",
            "_state",
            "_keras_backup",
        ):
            state[name] = None
        return state

    # --- fit's lifecycle -----------------------------------------------------

    def on_train_begin(self, logs=None):
        if self._hide_average():
            # An earlier fit was interrupted between this callback's epoch end
            # and the next epoch: the running weights went back before training.
            warnings.warn(
                f"The last fit with this {type(self).__name__} was interrupted "
                "while the model held its average (swap_on_epoch=True): the "
                "running weights were put back before this fit.",
                stacklevel=2,
            )
        # One instance may serve several fits: each starts afresh, and chooses
        # its variables anew (a layer may have been (un)frozen in between).
        self._reset_fit()
        model = self.model
        self._fit = internals.fit_locals(model)  # the one look at fit's frame
        callbacks = internals.fit_callbacks(self._fit)
        check_peers(self, callbacks, getattr(model, "optimizer", None))
        self._batch_size = internals.fit_batch_size(self._fit) or 32
        self._keras_backup = next(
            (c for c in callbacks if isinstance(c, keras.callbacks.BackupAndRestore)),
            None,
        )
        if self.backup_dir is not None:
            # Read now, so that a bad file stops fit before training; which
            # generation applies is known once Keras' BackupAndRestore has
            # restored (in its own on_train_begin): `_pick` picks it.
            self._state = Resume(self, callbacks)
            self._state.open(model)
        if model.built and model.weights:
            self._engine()  # a model built later (TF, no Input) waits

    def _reset_fit(self) -> None:
        """The state of one `fit`, declared here and set afresh when it
        begins (subclasses extend it)."""
        self.history: list[dict] = []
        self.timing: dict[str, float] = {}  # filled at the end of fit
        self._fit: dict | None = None  # fit's locals, looked at once a fit
        self._batch_size = 32
        self._average: WeightAverage | None = None
        self._resumed = None  # (arrays, count) for an engine made later
        self._state: Resume | None = None  # with a backup_dir
        self._keras_backup = None
        self._pending_resume = True  # until the first epoch (or the end)
        self._ending = False  # once the end of fit began (`_end_state`)
        self._step = 0  # fit's training batches so far, across resumes
        # The batches between two checks: update_freq, or, with "auto", None
        # until chosen from the first batches' timings.
        self._every = self.update_freq if isinstance(self.update_freq, int) else None
        # A batch that is checked whatever N ("auto": the fit's last one).
        self._last_check: int | None = None
        self._fit_start = time.perf_counter()
        self._check_seconds = 0.0
        self._epoch_start = 0  # ... before the current epoch
        self._epoch = 0
        self._last_batch = -1
        self._in_epoch = False  # between fit's first epoch and its end

    def on_epoch_begin(self, epoch, logs=None):
        if self._pending_resume:
            self._pick(epoch)
        self._epoch = epoch
        self._last_batch = -1
        self._in_epoch = True
        self._epoch_start = self._step
        self._hide_average()

    def _count_batches(self, batch, logs=None):
        """`on_train_batch_end` of a step-level callback."""
        # Keras numbers batches within the epoch; with steps_per_execution it
        # calls this once per execution, with the last batch's number, and
        # numbers an epoch's last, shorter execution as a full one.
        steps = self._steps_per_epoch()
        if steps:
            batch = min(batch, steps - 1)
        before = self._step
        self._step += batch - self._last_batch
        self._last_batch = batch
        if self._every is None:
            self._every = self._choose_every()
        due = self._step // self._every > before // self._every
        if due or (
            self._last_check is not None and before < self._last_check <= self._step
        ):
            self._act(self._epoch, self._step, logs if logs is not None else {})

    def _choose_every(self) -> int:
        """The batches between two checks, at the first batch end of a fit
        that could not set them before (a model built by its first batch)."""
        raise NotImplementedError

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.update_freq == EPOCH:
            steps = self._steps_per_epoch()
            self._step = self._epoch_start + steps if steps else self._step
            self._act(epoch, None, logs)
        else:
            self._log(logs)  # the state after the epoch's last check
        if self.swap_on_epoch and self._average is not None and not self._average.empty:
            internals.sync_model(self)
            self._average.show_ensemble()

    def _hide_average(self) -> bool:
        """Puts the running weights back where the model holds the average
        (`swap_on_epoch`); whether it did."""
        if self._average is None or not self._average.showing:
            return False
        internals.sync_model(self)
        self._average.hide()
        return True

    def on_train_end(self, logs=None):
        self._end_state()
        with rng_preserved():
            if self._state is not None and not self._state.keras_pending:
                # With Keras' backup still there (later in fit's list), the
                # folder is emptied after it is deleted (`Resume.close`).
                self._state.close()
            self._state = None
            if self.restore_best:
                self._apply_average()
        self.timing = {
            "fit": time.perf_counter() - self._fit_start,
            "checks": self._check_seconds,
            **self._extra_timing(),
        }
        self._fit = None  # fit's locals hold its data
        if self.verbose:
            summary = self._summary()
            if summary:
                self._print(summary)

    def _end_state(self) -> None:
        """The end of fit up to its state written as finished; runs once, in
        `on_train_end` or, where Keras' BackupAndRestore ends first, before
        it deletes its backup."""
        if self._ending:
            return
        self._ending = True
        if self._pending_resume:
            # fit trained no epoch: Keras resumed after the last one. The
            # average it ended with comes back all the same.
            self._pick(internals.fit_initial_epoch(self.model, self._fit))
        self._in_epoch = False
        if self._keras_backup is not None:
            internals.undo_first_at_epoch_end(self._keras_backup)
        with rng_preserved():
            self._hide_average()
            if self._state is not None:
                self._state.restore_final()  # the rerun of a finished run
                self._state.finish()

    def _finished(self) -> bool:
        """Whether this fit reruns a run that had finished (killed while it
        tidied up): it trains nothing and hands back what that run did."""
        return self._state is not None and self._state.finished is not None

    def _extra_timing(self) -> dict:
        """Further entries of `timing` (seconds) a subclass measures."""
        return {}

    def _summary(self) -> str | None:
        """The line printed at the end of `fit` with `verbose=1`."""
        return None

    # --- acting --------------------------------------------------------------

    def _act(self, epoch: int, step: int | None, logs: dict) -> None:
        """Runs the policy at an epoch end (step None) or a step-level check."""
        # The evaluations and BatchNormalization passes below must leave the
        # random state that orders training batches as it was.
        if self._finished():
            return
        start = time.perf_counter()
        with rng_preserved():
            self._engine()
            self._decide(epoch, step, logs)
            # Every worker holds the same average (they take the same
            # decisions); one writes it, and all read it on resume.
            if self._state is not None and self._state.chief:
                self._state.save(epoch, step)
        self._check_seconds += time.perf_counter() - start

    def _decide(self, epoch: int, step: int | None, logs: dict) -> None:
        """The subclass' policy: fold the current weights in, or not."""
        raise NotImplementedError

    def _log(self, logs: dict) -> None:
        """Adds the callback's figures to `logs`."""

    def _replayed_logs(self, epoch: int) -> dict:
        """What `fit`'s logs held at a replayed epoch end, as far as needed."""
        return {}

    def _config(self) -> dict:
        """The arguments a resumed state must have been written with."""
        return {"update_freq": self.update_freq}

    def _state_meta(self) -> dict:
        """What a subclass keeps beyond the average and the history."""
        return {}

    def _load_state(self, meta: dict) -> None:
        """Reads back what `_state_meta` kept."""

    def _engine(self) -> WeightAverage:
        """The average of this fit, made (in this one place) when the model
        has its variables, with the state `Resume.pick` picked loaded into it."""
        if self._average is None:
            model = self.model
            held = selection.averaged_variables(model, self.variables)
            if not held:
                raise ValueError(
                    f"{type(self).__name__} has nothing to average: no variable "
                    f"of model {model.name!r} is trained (every layer is frozen, "
                    "or variables= chose none)."
                )
            on_write = (
                self._recompute_batchnorm if self.batchnorm == "recompute" else None
            )
            self._average = WeightAverage(held, offload=self.offload, on_write=on_write)
            if self._state is not None:
                self._state.check_average(self._average)
        if self._resumed is not None:
            self._average.load(*self._resumed)
            self._resumed = None
        return self._average

    def _steps_per_epoch(self) -> int | None:
        # None when unknown: a dataset of unknown length, or a custom loop
        # that calls the hooks without `params`.
        return (self.params or {}).get("steps")

    def _recompute_batchnorm(self):
        update_batchnorm(self.model, self.batchnorm_data, batch_size=self._batch_size)

    # --- resuming (see keras_aswa.resume) -------------------------------------

    def _pick(self, epoch: int) -> None:
        """Continues from the saved state that matches what Keras restored.

        Runs once a fit, after every callback's `on_train_begin` (Keras'
        `BackupAndRestore` restores the weights in its own): at the first
        epoch, or at the end of a fit that trains none.
        """
        self._pending_resume = False
        if self._state is None:
            new_average_warning(self, epoch)
            return
        replay = self._state.pick(epoch)
        if replay is not None:
            self._act(*replay)
        if self._finished():
            self.model.stop_training = True  # trains nothing more

    # --- the end and the public API ------------------------------------------

    def _apply_average(self):
        if self._average is None or self._average.empty:
            warnings.warn(
                f"{type(self).__name__} averaged no epoch, so the model keeps "
                "its final running weights.",
                stacklevel=3,
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
        # Within an epoch (its end included: Keras' progress bar ends its line
        # after every other callback's on_epoch_end), fit's progress bar
        # (verbose=1) holds the line without ending it: start one of our own.
        open_bar = self._in_epoch and (self.params or {}).get("verbose") == 1
        print(("\n" if open_bar else "") + message, flush=True)

    @property
    def ensemble_size(self) -> int:
        """How many snapshots the average holds (0 before the first)."""
        return 0 if self._average is None else self._average.count

    @property
    def ensemble_nbytes(self) -> int:
        """The bytes the ensemble holds: its averaged copies, nothing else.

        One copy of each held variable (by default what training changes;
        see `keras_aswa.selection` and `variables=`), in its accumulation
        dtype: 4 bytes an element for float32, bfloat16 and float16
        variables, 8 for float64. By default frozen variables (a frozen
        backbone, LoRA's base kernels, int8 kernels and their scales) are
        not held, so not counted; neither are the model's own weights, nor
        the temporary copies ASWA keeps while it scores a provisional
        ensemble. The copies live on the weights' devices, or in host memory
        with `offload="host"`. Computed from shapes and dtypes: nothing is
        copied. 0 before the first `fit`, and from the start of each `fit`
        until its first snapshot.
        """
        return 0 if self._average is None else self._average.nbytes()

    def ensemble_weights(self) -> list[np.ndarray]:
        """The averaged weights, one numpy array per entry of `model.weights`.

        Averaged entries are in float32 (float64 for float64 variables),
        before rounding to the variable's dtype. The entries of variables
        the ensemble does not hold (frozen ones, int8 kernels and their
        scales, non-float ones) are host copies of the running model's
        current values, so that `model.set_weights` accepts the list. The
        list therefore takes host memory for the whole model, a frozen
        backbone included: `ensemble_nbytes` is what the ensemble itself
        holds, and `apply_ensemble()` writes the ensemble into the model
        without a host copy.

        Raises:
            RuntimeError: If nothing has been averaged yet.
        """
        self._require_average()
        model = self.model
        if internals.spans_processes(model.weights):
            raise RuntimeError(
                "ensemble_weights() copies every weight to this process' "
                "memory, and some are sharded across processes (a "
                "ModelParallel layout that spans processes): call "
                "apply_ensemble() on every process instead, then save the "
                "model as the layout allows (model.save_weights on every "
                "process, or a checkpointing library such as Orbax)."
            )
        held = dict(
            zip(
                (id(v) for v in self._average.variables),
                self._average.numpy(),
                strict=True,
            )
        )
        return [
            held[id(v)] if id(v) in held else ops.convert_to_numpy(kernels.read(v))
            for v in model.weights
        ]

    def apply_ensemble(self) -> None:
        """Writes the average into the model now, e.g. after an interrupt.

        Raises:
            RuntimeError: If nothing has been averaged yet.
        """
        self._require_average()
        internals.sync_model(self)
        self._average.apply()

    def _require_average(self):
        if self._average is None or self._average.empty:
            raise RuntimeError(
                f"{type(self).__name__} has no average yet: train with it in "
                "`fit(callbacks=[...])` for at least one averaged epoch."
            )
