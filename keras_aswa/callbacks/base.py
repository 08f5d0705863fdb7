"""What every averaging callback shares: the average, its lifecycle, its I/O."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from keras_aswa.averaging import WeightAverage
from keras_aswa.batchnorm import update_batchnorm
from keras_aswa.callbacks.context import fit_callbacks, fit_locals
from keras_aswa.callbacks.isolation import rng_preserved
from keras_aswa.distribute import is_chief
from keras_aswa.state import StateFileError, clear_state, load_states, save_state

BATCHNORM_MODES = ("average", "recompute")


class AveragingCallback(keras.callbacks.Callback):
    """Base of the averaging callbacks: owns a `WeightAverage` of the model.

    Subclasses decide, at each epoch end, whether to restart or update the
    average; this class resets it when training begins, writes it into the
    model when training ends (with `restore`), and exposes it.

    Args:
        restore: Whether `on_train_end` writes the average into the model.
        swap_on_epoch: Whether the model holds the average between epochs:
            written in at the end of each epoch, after this callback's own
            work, and swapped back out before the next epoch trains. Callbacks
            placed after this one (e.g. `ModelCheckpoint`) then see the
            average. Costs one more copy of the float weights.
        batchnorm: `"average"` averages BatchNormalization moving statistics
            like every other weight; `"recompute"` recomputes them with
            `update_batchnorm` over `batchnorm_data` each time an average is
            written into the model.
        batchnorm_data: The data `"recompute"` passes over (what `fit` takes
            as `x`; arrays are batched with `fit`'s batch size).
        backup_dir: Where the averaging state is written after every epoch
            and read back when a `fit` resumes (see `keras_aswa.state`).
        offload: None keeps the average beside the weights on their device;
            `"host"` keeps it in host memory (see `WeightAverage`).
        verbose: 0 for silence, 1 for one line per epoch.
    """

    def __init__(
        self,
        restore: bool = True,
        swap_on_epoch: bool = False,
        batchnorm: str = "average",
        batchnorm_data=None,
        backup_dir: str | None = None,
        offload: str | None = None,
        verbose: int = 0,
    ):
        super().__init__()
        WeightAverage([], offload=offload)  # checks the value now
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
        self._restore = restore
        self.swap_on_epoch = swap_on_epoch
        self.batchnorm = batchnorm
        self.batchnorm_data = batchnorm_data
        self.backup_dir = None if backup_dir is None else str(backup_dir)
        self.offload = offload
        self.verbose = verbose
        self._average: WeightAverage | None = None
        self.history: list[dict] = []

    def on_train_begin(self, logs=None):
        # One instance may serve several `fit` calls: each starts afresh.
        self._average = WeightAverage(self.model.weights, offload=self.offload)
        self.history = []
        self._batch_size = (fit_locals(self._model) or {}).get("batch_size") or 32
        self._first_epoch_seen = False
        # Read (and checked) now, so that a bad file stops fit before training;
        # which generation applies is known at the first epoch.
        self._saved = [] if self.backup_dir is None else load_states(self.backup_dir)
        for _, meta in self._saved:
            self._check_state(meta)
        self._warn_about_peers()

    def on_epoch_begin(self, epoch, logs=None):
        if not self._first_epoch_seen:
            self._first_epoch_seen = True
            self._resume(epoch)
        if self._average.swapped_in:
            self._sync()
            self._average.swap_out()

    def _resume(self, epoch):
        """Restores the saved state that ends just before `epoch`, if any."""
        for arrays, meta in self._saved:
            if meta["epoch"] == epoch - 1:
                self._average.load(arrays, meta["count"])
                self.history = meta["history"]
                self._restore_state(meta)
                return
        if self._saved:
            latest = self._saved[0][1]
            raise StateFileError(
                f"{latest['path']} holds the average up to epoch "
                f"{latest['epoch']}, but fit starts at epoch {epoch}. Resume "
                "with keras.callbacks.BackupAndRestore (or initial_epoch="
                f"{latest['epoch'] + 1}), or delete the file to start afresh."
            )
        if epoch > 0:
            warnings.warn(
                f"fit is resuming at epoch {epoch} (initial_epoch or "
                f"BackupAndRestore): {type(self).__name__} starts a new "
                "average here, since no earlier one was kept (pass "
                "backup_dir= to keep it).",
                stacklevel=3,
            )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        with rng_preserved():
            self._update(epoch, logs)
            self._end_epoch(epoch)

    def _update(self, epoch: int, logs: dict) -> None:
        """The subclass' policy: fold this epoch's weights in, or not."""
        raise NotImplementedError

    def _end_epoch(self, epoch):
        # Every worker of a multi-worker run holds the same average (they take
        # the same decisions); one writes it, and all read it on resume.
        if self.backup_dir is not None and is_chief(self._model):
            self._save(epoch)
        if self.swap_on_epoch and not self._average.empty:
            self._sync()
            self._average.swap_in()
            self._written()

    def _save(self, epoch):
        arrays = [None] * len(self._average.variables)
        if not self._average.empty:
            arrays = [
                None if dtype is None else array
                for array, dtype in zip(
                    self._average.numpy(), self._average.dtypes, strict=True
                )
            ]
        meta = {
            "callback": type(self).__name__,
            "epoch": epoch,
            "count": self._average.count,
            "signature": self._average.signature(),
            "history": self.history,
            **self._state_meta(),
        }
        save_state(self.backup_dir, arrays, meta)

    def _check_state(self, meta):
        if meta.get("callback") != type(self).__name__:
            raise StateFileError(
                f"{meta['path']} was written by {meta.get('callback')}, not by "
                f"{type(self).__name__}: give each callback its own backup_dir."
            )
        if meta["signature"] != self._average.signature():
            raise StateFileError(
                f"{meta['path']} holds an average of other weights (other "
                "model, shapes or dtypes) than this model's. It was left as it "
                "is: point backup_dir elsewhere, or delete it to start afresh."
            )

    def _state_meta(self) -> dict:
        """What a subclass keeps beyond the average and the history."""
        return {}

    def _restore_state(self, meta: dict) -> None:
        """Reads back what `_state_meta` kept."""

    def _written(self):
        """Call after writing an average into the model."""
        if self.batchnorm == "recompute":
            update_batchnorm(
                self.model, self.batchnorm_data, batch_size=self._batch_size
            )

    def on_train_end(self, logs=None):
        with rng_preserved():
            self._finish()

    def _finish(self):
        if self._average.swapped_in:
            self._sync()
            self._average.swap_out()
        if self.backup_dir is not None and is_chief(self._model):
            # The run finished: a later fit starts afresh, as with
            # BackupAndRestore.
            clear_state(self.backup_dir)
        if self._restore:
            self._restore_average()

    def _restore_average(self):
        if self._average.empty:
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

    def _warn_about_peers(self):
        """Says who wins where other callbacks also write weights at the end.

        Keras runs `on_train_end` in list order, so the last writer wins.
        """
        if not self._restore:
            return
        name = type(self).__name__
        callbacks = fit_callbacks(self._model)
        later = False
        for cb in callbacks:
            if cb is self:
                later = True
                continue
            writes = (
                isinstance(cb, keras.callbacks.EarlyStopping)
                and cb.restore_best_weights
            ) or (isinstance(cb, AveragingCallback) and cb._restore)
            if writes:
                winner = type(cb).__name__ if later else name
                warnings.warn(
                    f"{name} and {type(cb).__name__} both write weights into the "
                    "model when training ends; Keras runs them in list order, so "
                    f"the later one, {winner}, decides the final weights. Pass "
                    f"restore_best_weights=False / restore_best=False to the one "
                    "you don't want, or reorder the callbacks.",
                    stacklevel=3,
                )
            if (
                later
                and isinstance(cb, keras.callbacks.BackupAndRestore)
                and self.swap_on_epoch
            ):
                warnings.warn(
                    f"BackupAndRestore after {name}(swap_on_epoch=True) would back "
                    "up the average instead of the running model; place it before.",
                    stacklevel=3,
                )
        optimizer = getattr(self._model, "optimizer", None)
        if getattr(optimizer, "use_ema", False):
            warnings.warn(
                f"The optimizer has use_ema=True: fit writes its EMA weights into "
                f"the model at the end, then {name} replaces them with its average "
                f"(of the running weights, not the EMA). Pass restore=False to "
                f"{name} to keep the EMA weights.",
                stacklevel=3,
            )

    def _sync(self):
        # Reading `self.model` (not `self._model`) makes the JAX trainer write
        # its state into the variables the average reads and writes.
        return self.model

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
        self._written()

    def _require_average(self):
        if self._average is None or self._average.empty:
            raise RuntimeError(
                f"{type(self).__name__} has no average yet: train with it in "
                "`fit(callbacks=[...])` for at least one averaged epoch."
            )
