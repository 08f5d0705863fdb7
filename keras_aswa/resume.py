"""Resuming an averaging callback, in one object and three calls.

An averaging callback with a `backup_dir` makes one `Resume` a `fit` and calls
it three times (and twice at the end):

- `open`, at `on_train_begin`: locks the folder, reads the state there and
  checks that it belongs to this fit (the callback, its arguments, the
  validation data, the LoRA bases), before any training;
- `pick`, at the first hook after every `on_train_begin` (Keras'
  `BackupAndRestore` restores in its own): the generation that belongs to
  where Keras resumed, loaded into the callback, and what to replay;
- `save`, after every decision;
- `finish` and `close`, at the end of `fit`: the state is first written
  marked finished, with the model's final weights (before Keras' backup or
  anything else is deleted), then the folder is emptied after Keras deleted
  its backup. A rerun of the same command that finds a finished state trains
  nothing and hands back what the finished run did.

Only the chief process writes, deletes or tidies the folder; the others read
it (see `keras_aswa.distribute`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import warnings

import numpy as np
from keras import ops

from keras_aswa import distribute, internals, kernels, lora
from keras_aswa.distribute import is_chief
from keras_aswa.state import EMPTY, StateFileError, StateStore, retain

EPOCH = "epoch"
AUTO = "auto"


class Resume:
    """The state folder of one callback in one `fit`.

    Args:
        callback: The averaging callback (`AveragingCallback`), whose
            `backup_dir` it manages.
        callbacks: `fit`'s callbacks (to find Keras' `BackupAndRestore`).
    """

    def __init__(self, callback, callbacks: list):
        self.callback = callback
        self.directory = callback.backup_dir
        self.store = StateStore(self.directory)
        self.chief = is_chief(internals.unsynced_model(callback))
        self.keras_backup = callback._keras_backup
        self.callbacks = callbacks
        self.lora: list = []
        self.run = uuid.uuid4().hex  # this average's identifier
        self.finished: dict | None = None  # a finished run's generation
        self.finished_arrays: list | None = None
        self.ended = False  # finish() wrote this fit's end
        self.closed = False

    # --- open ------------------------------------------------------------------

    def open(self, model) -> None:
        """Locks the folder, reads what is there and checks it belongs to
        this fit: a bad or foreign file stops `fit` before training."""
        callback = self.callback
        # What decides the run, computed once (it hashes validation data).
        self.config = _plain(callback._config())
        if self.chief:
            self.store.lock()
        self._check_same_folder()
        self.store.load(tidy=self.chief)
        for _, meta in self.store.generations:
            self._check_config(meta)
        runs = {m["run"] for _, m in self.store.generations if "run" in m}
        if runs:
            self.run = sorted(runs)[0]
        latest = self.store.generations[0][1] if self.store.generations else None
        if latest is not None and latest.get("finished"):
            epochs = (callback.params or {}).get("epochs")
            if latest.get("fit_epochs") not in (None, epochs):
                raise StateFileError(
                    f"{latest['path']} holds the end of a finished run of "
                    f"{latest['fit_epochs']} epochs (killed while it tidied "
                    f"up), and this fit has {epochs}. It was left as it is: "
                    "rerun the same command to get that run's model, or point "
                    "backup_dir elsewhere (or delete it) to start a new average."
                )
            self.finished = latest
            self.finished_arrays = self.store.generations[0][0]
        # Keras merges LoRA adapters into their bases when it saves: the
        # bases are kept, to be put back after it restores.
        self.lora = lora.parts(model)
        if self.lora:
            self._open_lora()
        backup = self.keras_backup
        if (
            self.lora
            and self.chief
            and callback.update_freq == EPOCH
            and backup is not None
            and self.callbacks.index(backup) < self.callbacks.index(callback)
        ):
            internals.run_first_at_epoch_end(backup, self._save_adapters)
        if backup is not None:
            internals.wrap_train_end(
                backup, self._before_keras_end, self._after_keras_end
            )
        if self.finished is not None:
            # The run finished and was killed while it tidied up: nothing to
            # train (pick hands back what it ended with).
            internals.skip_epochs(model, callback.params.get("epochs"))

    def _check_same_folder(self) -> None:
        """With several processes: all must see the same state (one folder
        every process sees), or all stop here, saying so; never hang later
        in collectives that part ways."""
        try:  # the chief creates the folder (lock); the others may not see it yet
            names = os.listdir(self.directory)
        except FileNotFoundError:
            names = []
        listing = sorted(
            (name, os.path.getsize(self.store.path(name)))
            for name in names
            if name.startswith("state.") and name.endswith(".npz")
        )
        digest = hashlib.sha1(json.dumps(listing).encode()).digest()
        found = distribute.gather(digest)
        if found is not None and len(set(found)) > 1:
            raise StateFileError(
                f"The processes of this run see different averaging states in "
                f"backup_dir={self.directory!r} (this process: "
                f"{[n for n, _ in listing] or 'none'}): backup_dir must be a "
                "folder every process sees (a shared file system), written by "
                "the chief only. Nothing was touched."
            )

    def _open_lora(self) -> None:
        keras_restores = (
            self.keras_backup is not None
            and internals.backup_position(self.keras_backup) is not None
        )
        if not self.store.generations and not keras_restores:
            # A new average: a bases file there is another run's (its state
            # files deleted), never read, let alone loaded into this model.
            if self.chief:
                lora.save_bases(self.lora, self.directory, self.run)
            return
        found = lora.bases_run(self.lora, self.directory)
        if self.store.generations:
            if found is not None and found != self.run:
                raise StateFileError(
                    f"{self.store.path(lora.BASES)} holds the LoRA bases of "
                    f"another run than the state beside it "
                    f"({self.store.generations[0][1]['path']}). Both were left "
                    "as they are: delete backup_dir to start a new average."
                )
            if found is None and self.chief:
                lora.save_bases(self.lora, self.directory, self.run)
        elif found is not None:
            # Killed after Keras' first backup and before the state's first
            # write: the bases are this run's.
            self.run = found
        elif self.chief:
            lora.save_bases(self.lora, self.directory, self.run)

    def _save_adapters(self, epoch: int) -> None:
        internals.sync_model(self.callback)
        lora.save_running(self.lora, self.directory, epoch, self.run)

    def _check_config(self, meta: dict) -> None:
        callback = self.callback
        name = type(callback).__name__
        if meta["callback"] != name:
            raise StateFileError(
                f"{meta['path']} was written by {meta['callback']}, not by "
                f"{name}: give each callback its own backup_dir."
            )
        saved, own = meta.get("config", {}), self.config
        # A key the file lacks was not recorded by the release that wrote it.
        differ = sorted(k for k in saved if saved[k] != own.get(k))
        if differ:
            then = ", ".join(_shown(k, saved.get(k)) for k in differ)
            now = ", ".join(_shown(k, own.get(k)) for k in differ)
            raise StateFileError(
                f"{meta['path']} was written by {name}({then}), and this one has "
                f"{now}: its decisions would not continue that run. It was left "
                "as it is: resume with the same arguments (and data), or point "
                "backup_dir elsewhere (or delete it) to start a new average."
            )

    def check_average(self, average) -> None:
        """Checks that the state holds an average of the variables `average`
        holds (made when the model has its variables)."""
        if internals.spans_processes(average.variables):
            raise ValueError(
                f"backup_dir={self.directory!r}: the averaged variables are "
                "sharded across processes (a ModelParallel layout that spans "
                "processes), which the averaging state cannot hold yet. Train "
                "without backup_dir, or with a layout that keeps each variable "
                "within one process (DataParallel, or ModelParallel within "
                "each process)."
            )
        paths = _paths(average, self.callback.model)
        for _, meta in self.store.generations:
            if meta["signature"] != average.signature():
                raise StateFileError(
                    f"{meta['path']} holds an average of other weights (other "
                    "model, shapes, dtypes, or other variables frozen) than the "
                    "ones this fit averages. It was left as it is: point "
                    "backup_dir elsewhere, or delete it to start afresh."
                )
            if "paths" in meta and meta["paths"] != paths:
                changed = [
                    f"{a} -> {b}"
                    for a, b in zip(meta["paths"], paths, strict=False)
                    if a != b
                ][:3]
                raise StateFileError(
                    f"{meta['path']} holds an average of other variables than "
                    f"the ones this fit averages ({', '.join(changed)}): "
                    "variables= (or which layers are frozen) changed. It was "
                    "left as it is: resume with the same variables=, or point "
                    "backup_dir elsewhere (or delete it) to start a new average."
                )

    # --- pick ------------------------------------------------------------------

    def pick(self, epoch: int):
        """Loads into the callback the generation that belongs to where
        Keras resumed `fit` (at `epoch`).

        Returns:
            What to replay, as `_act`'s `(epoch, step, logs)`, or None.
        """
        callback = self.callback
        backup = self.keras_backup
        if self.finished is not None:
            meta = self.finished
            self._load(meta, self.finished_arrays, meta["batches"])
            if callback._average is not None:
                callback._engine()
            return None
        batch = None
        if backup is not None:
            internals.keep_backup_epoch(backup, epoch)
            if isinstance(backup.save_freq, int):
                position = internals.backup_position(backup)
                if position is not None and position["epoch"] == epoch:
                    batch = position["batch"]
        if (
            not self.store.generations
            and epoch > 0
            and not self._before_first(epoch, batch)
        ):
            _new_average(callback, epoch, f" ({self.directory} holds none).")
            return None
        every = callback.update_freq
        if every == AUTO:  # the N chosen in the run that wrote the state
            every = next(
                (m["every"] for _, m in self.store.generations if m["every"]), None
            )
        found = self.store.resume(epoch, batch, callback._steps_per_epoch(), every)
        meta = found.meta
        self._load(meta, found.arrays, found.batches)
        self.store.drop_after(meta, remove=self.chief)
        if self.lora:
            # The running adapters are known where a state was written at
            # the very point Keras restored; elsewhere they are factored
            # out of the merged base again.
            at_backup = found.replay is None and (
                batch is None
                if callback.update_freq == EPOCH
                else meta["batches"] == found.batches
            )
            running = None
            if at_backup and meta is not EMPTY:
                running = meta.get("adapter_arrays")
            elif callback.update_freq == EPOCH and found.replay is not None:
                running = lora.load_running(self.directory, found.replay, self.run)
            internals.sync_model(callback)
            lora.unmerge(self.lora, self.directory, running)
        if callback._average is not None:
            callback._engine()  # loads it now (an average made later, when made)
        if callback.update_freq == EPOCH and found.replay is not None:
            return (found.replay, None, callback._replayed_logs(found.replay))
        if found.replay is not None:
            return (epoch if batch is not None else epoch - 1, found.replay, {})
        if batch is not None and callback.update_freq != EPOCH and self.chief:
            # Keras trains this epoch again from its first batch: the state
            # records where this fit's count starts.
            self.save(epoch, callback._step)
        return None

    def _before_first(self, epoch: int, batch: int | None) -> bool:
        """Whether Keras restored a point before the state's first write, with
        no state yet (so the run's start, `EMPTY`, is resumed): Keras' backup
        of epoch 0 and a kill before the state's write (epoch 1), or, at
        step level, a backup before the first check."""
        backup = self.keras_backup
        if backup is None or internals.backup_position(backup) is None:
            # No backup restored: a fit that starts later by itself
            # (initial_epoch) starts a new average there.
            return False
        if epoch == 1:
            return True
        callback = self.callback
        steps, every = callback._steps_per_epoch(), callback._every
        if callback.update_freq == EPOCH or not steps or not isinstance(every, int):
            return False
        return epoch * steps + (0 if batch is None else batch + 1) < every

    def _load(self, meta: dict, arrays, batches) -> None:
        callback = self.callback
        # A state saved before the first averaged epoch holds no average.
        callback._resumed = (arrays, meta["count"]) if meta["count"] else None
        callback.history = [dict(record) for record in meta["history"]]
        if meta is not EMPTY:
            callback._load_state(meta)
        callback._step = callback._epoch_start = batches or 0
        if meta.get("every"):
            callback._every = meta["every"]

    # --- save ------------------------------------------------------------------

    def save(self, epoch: int, step: int | None, finished: bool = False) -> None:
        """Writes the callback's state after a decision (at `epoch`, and
        `step` at step level); with `finished`, the end of the run, with the
        model's final weights."""
        callback = self.callback
        average = callback._engine()
        arrays = [None] * len(average.variables)
        if not average.empty:
            arrays = [
                None if dtype is None else array
                for array, dtype in zip(average.numpy(), average.dtypes, strict=True)
            ]
        meta = {
            "callback": type(callback).__name__,
            "config": self.config,
            "epoch": epoch,
            "step": step,
            "batches": callback._step
            if callback.update_freq != EPOCH or callback._steps_per_epoch()
            else None,
            "epoch_start": callback._epoch_start,
            "every": None if callback.update_freq == EPOCH else callback._every,
            "count": average.count,
            "signature": average.signature(),
            "paths": _paths(average, callback.model),
            "run": self.run,
            "history": callback.history,
            **callback._state_meta(),
        }
        final = ()
        if finished:
            meta["finished"] = True
            meta["fit_epochs"] = (callback.params or {}).get("epochs")
            internals.sync_model(callback)
            final = [
                np.asarray(ops.convert_to_numpy(kernels.read(v)))
                for v in callback.model.weights
            ]

            def keep(metas):
                return metas[:1]
        else:
            backup = self.keras_backup
            cadence = EPOCH if backup is None else backup.save_freq
            double = backup is not None and backup.double_checkpoint

            def keep(metas):
                return retain(metas, cadence, double)

        self.store.save(
            arrays, meta, keep=keep, adapters=lora.adapters(self.lora), final=final
        )

    # --- the end ---------------------------------------------------------------

    def finish(self) -> None:
        """Writes the end of the run (once), before anything is deleted."""
        if self.ended or self.closed:
            return
        self.ended = True
        callback = self.callback
        if self.finished is None and self.chief and callback._average is not None:
            self.save(callback._epoch, None, finished=True)

    def restore_final(self) -> None:
        """A finished run's rerun: puts back the weights the model ended with."""
        if self.finished is None:
            return
        final = self.finished.get("final_arrays") or []
        model = self.callback.model
        if len(final) != len(model.weights):
            return
        internals.sync_model(self.callback)
        for variable, value in zip(model.weights, final, strict=True):
            variable.assign(np.array(value).reshape(variable.shape))

    def close(self) -> None:
        """Empties the folder (a finished run), once Keras' backup is gone;
        unlocks it."""
        if self.closed:
            return
        self.closed = True
        if self.keras_backup is not None:
            internals.undo_train_end(self.keras_backup)
        if self.chief:
            self.store.clear()
        self.store.unlock()
        internals.skip_epochs(self.callback.model, None)

    def _in_this_fit(self) -> bool:
        """Whether the callback trains in the `fit` now ending (Keras' backup
        may outlive a killed fit into one without the callback)."""
        running = internals.unsynced_model(self.keras_backup)  # that fit's
        if running is not internals.unsynced_model(self.callback):
            return False
        found = internals.fit_locals(running)
        return found is None or self.callback in internals.fit_callbacks(found)

    def _before_keras_end(self) -> None:
        if self._in_this_fit():
            self.callback._end_state()

    def _after_keras_end(self) -> None:
        if self._in_this_fit():
            self.close()

    @property
    def keras_pending(self) -> bool:
        """Whether Keras' backup is still to be deleted (its on_train_end has
        not run): the folder is emptied after it."""
        return self.keras_backup is not None and not self.closed


def _new_average(callback, epoch: int, why: str) -> None:
    if epoch > 0:
        warnings.warn(
            f"fit is resuming at epoch {epoch} (initial_epoch or "
            f"BackupAndRestore): {type(callback).__name__} starts a new "
            "average here, since no earlier one was kept" + why,
            stacklevel=4,
        )


def new_average_warning(callback, epoch: int) -> None:
    """Warns that a fit resuming at `epoch` starts a new average (no
    backup_dir)."""
    _new_average(callback, epoch, " (pass backup_dir= to keep it).")


def _paths(average, model) -> list[str]:
    """Which of the model's variables `average` holds: each one's place in
    `model.weights` and its path, without the numbers Keras appends to
    default names (they differ between two builds of the same model)."""
    index = {id(v): i for i, v in enumerate(model.weights)}
    return [
        f"{index.get(id(v), -1)}:"
        + _NUMBERED.sub("", str(getattr(v, "path", getattr(v, "name", ""))))
        for v in average.variables
    ]


_NUMBERED = re.compile(r"_\d+(?=/|$)")


def _plain(value):
    """`value` as it reads back from JSON (tuples as lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _shown(key: str, value) -> str:
    text = f"{key}={value!r}"
    return text if len(text) <= 120 else text[:117] + "..."


# --- A run's identity ----------------------------------------------------------

_ROWS = 16  # rows hashed at each end of an array


def fingerprint(data):
    """A cheap, JSON-serialisable description of `data` (validation data):
    for arrays their shapes, dtypes and a hash of their first and last rows;
    for a `tf.data.Dataset` its cardinality and element spec; for a
    `PyDataset` its type and length. Two different data sets of the same
    description are possible; the same data always gives the same one."""
    if data is None:
        return None
    if isinstance(data, dict):
        return {str(k): fingerprint(v) for k, v in sorted(data.items(), key=str)}
    if isinstance(data, list | tuple):
        return [fingerprint(v) for v in data]
    if isinstance(data, np.ndarray) or (
        hasattr(data, "shape") and hasattr(data, "dtype") and not _is_dataset(data)
    ):
        return _array_print(data)
    name = type(data).__name__
    if _is_dataset(data):
        try:
            cardinality = int(data.cardinality())
        except Exception:  # noqa: BLE001 (a dataset that cannot tell)
            cardinality = None
        spec = str(data.element_spec)
        return {"type": name, "cardinality": cardinality, "spec": spec}
    try:
        length = len(data)
    except TypeError:
        length = None
    return {"type": name, "length": length}


def _is_dataset(data) -> bool:
    return hasattr(data, "element_spec") and hasattr(data, "cardinality")


def _array_print(array) -> dict:
    shape = [int(d) for d in array.shape]
    found = {"shape": shape, "dtype": str(array.dtype)}
    if not shape:
        ends = [np.asarray(ops.convert_to_numpy(array))]
    elif shape[0] <= 2 * _ROWS:
        ends = [np.asarray(ops.convert_to_numpy(array))]
    else:
        ends = [
            np.asarray(ops.convert_to_numpy(array[:_ROWS])),
            np.asarray(ops.convert_to_numpy(array[-_ROWS:])),
        ]
    digest = hashlib.sha1()
    for end in ends:
        digest.update(np.ascontiguousarray(end).tobytes())
    found["sha1"] = digest.hexdigest()[:16]
    return found


def describe_function(function) -> str | None:
    """A function's name, as a run's identity records it (None for none)."""
    if function is None:
        return None
    module = getattr(function, "__module__", None) or ""
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}.{name}" if module else name
