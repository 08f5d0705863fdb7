"""Averaging state on disk, for resuming a run that was killed.

One `.npz` file a generation, holding the averaged arrays and, as a JSON
string, everything else (size, score, history, epoch, fit's batch count, the
callback's arguments): no pickle. Writes are atomic (a temporary file, then a
rename), and a lock on the folder, held for the whole `fit`, keeps a second
process out.

Which generation a resumed `fit` needs depends on what Keras'
`BackupAndRestore` restored, and its backup and this state are written by two
callbacks, in either order, at their own cadences. So every write keeps the
generations that any backup Keras may still restore needs (`retain`), and
`StateStore.resume` picks the one that belongs to the restored point. Before
any write, the run's start is a generation too: the empty state, `EMPTY`.
"""

from __future__ import annotations

import glob
import json
import numbers
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no lock (one process per folder is the user's)
    fcntl = None

_PATTERN = "state.{:08d}.npz"
_NAME = re.compile(r"^state\.(\d{8})\.npz$")
_META = "__meta__"
_TEMPORARY = ".state-*.npz"
_LOCK = ".lock"
LORA_BASES = "lora_bases.npz"  # see keras_aswa.lora
LORA_RUNNING = "lora_running.npz"
FORMAT = 3

# The state before any write: no average, no history, no batch trained.
EMPTY = {
    "every": None,
    "epoch": -1,
    "step": None,
    "batches": 0,
    "epoch_start": 0,
    "count": 0,
    "history": [],
}


# What numpy raises reading a truncated, damaged or foreign .npz file.
UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


class StateFileError(ValueError):
    """A state file that cannot be used: unreadable, or from another run."""


@dataclass
class Resumed:
    """What `StateStore.resume` found.

    Attributes:
        arrays: The averaged arrays (None entries for what is not held), or
            None for the empty state.
        meta: The generation's metadata (`EMPTY` for the empty state).
        replay: The epoch end (epoch level) or the check (step level: its
            batch count) that Keras' backup includes and the state does not:
            killed between the two callbacks' writes. None if none.
        batches: How many of `fit`'s training batches the restored model has
            trained (None when `fit`'s length is unknown).
    """

    arrays: list | None
    meta: dict
    replay: int | tuple | None
    batches: int | None


# Processes hold a lock per folder; one process may hand it from one callback
# to the next (a notebook re-running a cell after an interrupted fit).
_held: dict[str, int] = {}


class StateStore:
    """The averaging state of one callback in one folder.

    Args:
        directory: Where the state lives (created at `lock`).

    Example:

    ```python
    store = StateStore("backup/aswa")
    store.lock()                      # for the whole fit
    store.load()                      # reads and checks what is there
    found = store.resume(epoch=5, batches=None, update_freq="epoch")
    store.save(arrays, {"epoch": 5, "batches": 60, ...}, keep=...)
    store.clear()                     # after a finished run; unlocks
    ```
    """

    def __init__(self, directory: str):
        self.directory = str(directory)
        self.generations: list[tuple[list, dict]] = []
        self._names: list[str] = []  # of the generation files, oldest first

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def lock(self) -> None:
        """Creates the folder and takes it for this process.

        Raises:
            StateFileError: If the path is not a folder, cannot be written,
                or another process trains with it.
        """
        try:
            os.makedirs(self.directory, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StateFileError(
                f"backup_dir={self.directory!r} is not a folder (a file of "
                "that name, or above it, exists): pass the path of a folder, "
                "which is created if it does not exist."
            ) from None
        if fcntl is None or self._key() in _held:
            return
        try:
            fd = os.open(self.path(_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StateFileError(
                f"backup_dir={self.directory!r} cannot be written ({e}): pass "
                "a folder this process may write to."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateFileError(
                f"backup_dir={self.directory!r} is in use by another process "
                "that is training with it now: give each run its own "
                "backup_dir. Nothing in it was touched."
            ) from None
        _held[self._key()] = fd

    def unlock(self) -> None:
        """Lets other processes use the folder."""
        fd = _held.pop(self._key(), None)
        if fd is not None:
            os.close(fd)

    def _key(self) -> str:
        return os.path.realpath(self.directory)

    def load(self, tidy: bool = True) -> None:
        """Reads the generations there are, latest first.

        Args:
            tidy: Whether to remove the temporary files left by a write that
                was killed: never a valid state (the rename that would have
                made them one did not happen). Only the writer, holding the
                lock, tidies.

        Raises:
            StateFileError: If a state file is truncated, not a state file,
                of another format version, or inconsistent with itself.
        """
        if tidy:
            for stale in glob.glob(self.path(_TEMPORARY)):
                os.remove(stale)
        names = sorted(
            n for n in _listdir(self.directory) if _NAME.match(n) is not None
        )
        if any(os.path.exists(self.path(n)) for n in ("state.npz", "state.prev.npz")):
            raise _damaged(
                self.path("state.npz"),
                "it was written by keras-aswa 0.3 or earlier (format 2), which "
                "this release does not read",
            )
        self.generations = [_read(self.path(n)) for n in reversed(names)]
        self._names = names

    def resume(
        self, epoch: int, batch: int | None, steps: int | None, update_freq
    ) -> Resumed:
        """Picks the generation that belongs to where `fit` resumes.

        Args:
            epoch: The epoch `fit` starts at (Keras' `initial_epoch`, which
                `BackupAndRestore` sets; the number of epochs when it resumes
                after the last one).
            batch: The 0-based index, within `epoch`, of the batch after
                which Keras' backup was made (`BackupAndRestore(save_freq=N)`
                restores that batch's weights and trains `epoch` again from
                its start), or None for a backup at an epoch end.
            steps: `fit`'s batches per epoch (None when unknown).
            update_freq: `"epoch"`, or the batches between two checks (None:
                not chosen yet, with `update_freq="auto"`).

        Raises:
            StateFileError: If no generation kept belongs to that point (the
                state is of another run), naming the file and the way out.
        """
        candidates = self.generations + [(None, EMPTY)]
        batches = _batches_before(epoch, [m for _, m in candidates], steps)
        if batches is not None and batch is not None:
            batches += batch + 1
        found, replay = None, None
        if update_freq == "epoch":
            found = _first(candidates, lambda m: m["epoch"] == epoch - 1)
            if found is None and epoch >= 1:
                # Killed after Keras saved epoch - 1 and before this state
                # was: that epoch end is replayed from Keras' weights.
                found = _first(candidates, lambda m: m["epoch"] == epoch - 2)
                replay = epoch - 1
        elif batches is not None:
            # The last check at or before the restored batch.
            found = _first(
                candidates,
                lambda m: m["batches"] <= batches and m["epoch"] <= epoch,
            )
            if (
                found is not None
                and update_freq is not None
                and found[1]["batches"] < batches
                and batches % update_freq == 0
            ):
                # Killed between Keras' backup at a check's batch and the
                # check's own write: the check is replayed.
                replay = batches
        stale = (
            found is not None
            and found[1] is EMPTY
            and any(m["epoch"] > max(epoch, 0) for _, m in self.generations)
        )
        if found is None or stale:
            latest = self.generations[0][1]
            raise StateFileError(
                f"{latest['path']} holds the average up to epoch "
                f"{latest['epoch']}"
                + ("" if latest["step"] is None else f", batch {latest['step']}")
                + f", but this fit starts at epoch {epoch}"
                + ("" if batch is None else f" from the backup of its batch {batch}")
                + ", and no state kept belongs there. It was left as it is. "
                "Resume from the backup it belongs to (the same "
                "keras.callbacks.BackupAndRestore folder and arguments), or "
                f"delete {self.directory} to start a new average."
            )
        arrays, meta = found
        return Resumed(arrays=arrays, meta=meta, replay=replay, batches=batches)

    def drop_after(self, meta: dict, remove: bool = True) -> None:
        """Removes the generations written after `meta`'s (another future),
        and drops the loaded arrays from memory.

        Args:
            meta: The generation resumed from.
            remove: Whether to delete their files too (only the process that
                writes the folder, the chief, does; the others forget them).
        """
        kept, dropping = [], True
        for (_, m), name in zip(self.generations, reversed(self._names), strict=True):
            dropping = dropping and m is not meta
            if dropping:
                if remove:
                    os.remove(self.path(name))
            else:
                kept.append(((None, m), name))
        self.generations = [g for g, _ in kept]
        self._names = [name for _, name in reversed(kept)]

    def save(self, arrays: list, meta: dict, keep, adapters=(), final=()) -> None:
        """Writes one generation atomically, then removes those not needed.

        Args:
            arrays: numpy arrays, or None for entries that are not held.
            meta: JSON-serialisable metadata, with at least `EMPTY`'s keys.
            keep: `keep(metas)` -> the metadata (of `metas`, latest first, the
                new one included) whose generations stay.
            adapters: The running LoRA adapters (see `keras_aswa.lora`),
                read back as `meta["adapter_arrays"]`.
            final: The model's weights when the run finished (a generation
                marked `finished`), read back as `meta["final_arrays"]`.
        """
        payload = {f"a{i}": a for i, a in enumerate(arrays) if a is not None}
        payload.update({f"l{i}": a for i, a in enumerate(adapters)})
        payload.update({f"f{i}": a for i, a in enumerate(final)})
        meta = dict(
            meta,
            format=FORMAT,
            present=[a is not None for a in arrays],
            adapters=len(adapters),
            final=len(final),
        )
        payload[_META] = np.array(json.dumps(meta))
        number = int(_NAME.match(self._names[-1]).group(1)) + 1 if self._names else 0
        name = _PATTERN.format(number)
        write_npz(self.path(name), payload)
        self._names.append(name)
        meta["path"] = self.path(name)
        self.generations.insert(0, (None, meta))
        kept = {id(m) for m in keep([m for _, m in self.generations])}
        survivors = []
        for (arrays_, m), name_ in zip(
            self.generations, reversed(self._names), strict=True
        ):
            if id(m) in kept:
                survivors.append((arrays_, m))
            else:
                os.remove(self.path(name_))
        self._names = [n for n in self._names if os.path.exists(self.path(n))]
        self.generations = survivors

    def clear(self) -> None:
        """Removes the state files and any temporary ones (a finished run)."""
        paths = [self.path(n) for n in self._names]
        paths += glob.glob(self.path(_TEMPORARY))
        paths += glob.glob(self.path(_PATTERN.replace("{:08d}", "*")))
        paths += [self.path(LORA_BASES), self.path(LORA_RUNNING)]
        for path in paths:
            if os.path.exists(path):
                os.remove(path)
        self.generations, self._names = [], []
        if self._key() in _held and os.path.exists(self.path(_LOCK)):
            os.remove(self.path(_LOCK))
        self.unlock()


def retain(metas: list[dict], cadence, double: bool) -> list[dict]:
    """The generations any backup Keras may still restore needs.

    Args:
        metas: The generations' metadata, latest first.
        cadence: Keras' backup cadence: `"epoch"` (or no backup: a resume
            by epoch), or an int, the training batches between two backups.
        double: Whether Keras keeps its previous backup too (and may fall
            back on it), as with `BackupAndRestore(double_checkpoint=True)`.

    Returns:
        The latest generation, and for every earlier point Keras' backup may
        hold, the latest generation at or before it.
    """
    latest = metas[0]
    kept = [latest]
    if cadence == "epoch" or latest.get("batches") is None:
        # Keras restores an epoch end: the last state of each earlier epoch
        # it may hold (one, or two with a double checkpoint).
        for back in range(1, 3 if double else 2):
            found = _first(
                [(None, m) for m in metas],
                lambda m, back=back: m["epoch"] <= latest["epoch"] - back,
            )
            if found is not None and found[1] not in kept:
                kept.append(found[1])
        return kept
    # Keras' last backup is at most `cadence` batches old (twice that with a
    # double checkpoint): every state since, and the one before.
    oldest = latest["batches"] - cadence * (2 if double else 1)
    for m in metas[1:]:
        kept.append(m)
        if m["batches"] <= oldest:
            break
    return kept


def _batches_before(epoch: int, metas: list[dict], steps: int | None) -> int | None:
    """`fit`'s training batches before `epoch` began, from the latest state
    written before it (`metas` latest first, `EMPTY` last)."""
    for m in metas:
        if m["step"] is not None and m["epoch"] == epoch:  # a check in it
            return m["epoch_start"]
        if m["epoch"] < epoch:
            if m["step"] is None:  # an epoch end (EMPTY: the end of epoch -1)
                base, begins = m["batches"], m["epoch"] + 1
            else:  # a check in an earlier epoch
                base, begins = m["epoch_start"], m["epoch"]
            if base is None or (begins != epoch and not steps):
                return None
            return base + (epoch - begins) * (steps or 0)
    return None


def _first(generations, accept):
    return next((g for g in generations if accept(g[1])), None)


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _damaged(path: str, why: str) -> StateFileError:
    return StateFileError(
        f"The averaging state file {path} cannot be used: {why}. It was left "
        "as it is: delete the state files beside it to start a new average, "
        "or point backup_dir elsewhere."
    )


def _is_int(value, minimum: int) -> bool:
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and value >= minimum
    )


# Every field's type and range: a file that is valid JSON of the wrong shape
# stops `fit` here, before training, and not with a bare error later.
_FIELDS = {
    "callback": lambda v: isinstance(v, str),
    "epoch": lambda v: _is_int(v, -1),
    "batches": lambda v: v is None or _is_int(v, 0),
    "epoch_start": lambda v: v is None or _is_int(v, 0),
    "step": lambda v: v is None or _is_int(v, 0),
    "every": lambda v: v is None or _is_int(v, 1),
    "count": lambda v: _is_int(v, 0),
    "config": lambda v: isinstance(v, dict),
    "signature": lambda v: (
        isinstance(v, list)
        and all(
            isinstance(s, list)
            and len(s) == 2
            and isinstance(s[0], list)
            and all(_is_int(d, 0) for d in s[0])
            and (s[1] is None or isinstance(s[1], str))
            for s in v
        )
    ),
    "history": lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v),
    "present": lambda v: isinstance(v, list) and all(isinstance(p, bool) for p in v),
    "adapters": lambda v: _is_int(v, 0),
}


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# Fields a generation may hold (written by a subclass' `_state_meta`, or by
# later releases), checked where present.
_OPTIONAL = {
    "best_score": lambda v: v is None or _is_number(v),
    "validation_steps": lambda v: v is None or _is_int(v, 1),
    "paths": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
    "finished": lambda v: isinstance(v, bool),
    "final": lambda v: _is_int(v, 0),
    "run": lambda v: isinstance(v, str),
    "fit_epochs": lambda v: v is None or _is_int(v, 0),
}


def write_npz(path: str, payload: dict) -> None:
    """Writes `payload` (name -> array) to `path` atomically: a temporary
    file beside it, flushed to disk, then renamed; a killed write leaves the
    old file (or none), never half a file under `path`."""
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(path) or ".", prefix=".state-", suffix=".npz"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def damaged(path: str, why: str) -> StateFileError:
    """The error for a file of `backup_dir` that cannot be used."""
    return _damaged(path, why)


def _read(path: str) -> tuple[list, dict]:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data[_META]))
            if not isinstance(meta, dict):
                raise _damaged(path, "its metadata is not a JSON object")
            if meta.get("format") != FORMAT:
                raise _damaged(
                    path,
                    f"it has format version {meta.get('format')!r}, and this "
                    f"keras-aswa reads version {FORMAT} (written by another "
                    "release)",
                )
            missing = [key for key in _FIELDS if key not in meta]
            if missing:
                raise _damaged(path, f"its metadata lacks {missing}")
            wrong = [key for key, valid in _FIELDS.items() if not valid(meta[key])]
            wrong += [
                key
                for key, valid in _OPTIONAL.items()
                if key in meta and not valid(meta[key])
            ]
            if wrong:
                shown = ", ".join(f"{k}={meta[k]!r}"[:80] for k in wrong)
                raise _damaged(path, f"its metadata has invalid values: {shown}")
            arrays = [
                data[f"a{i}"] if present else None
                for i, present in enumerate(meta["present"])
            ]
            meta["adapter_arrays"] = [data[f"l{i}"] for i in range(meta["adapters"])]
            meta["final_arrays"] = [data[f"f{i}"] for i in range(meta.get("final", 0))]
    except StateFileError:
        raise
    except UNREADABLE as e:
        raise _damaged(path, f"{type(e).__name__}: {e}; it may be truncated") from None
    signature = meta["signature"]
    if len(signature) != len(arrays) or any(
        a is not None and (list(a.shape) != shape or str(a.dtype) != dtype)
        for a, (shape, dtype) in zip(arrays, signature, strict=False)
    ):
        raise _damaged(path, "its arrays do not match the shapes it records")
    if meta["count"] > 0 and not any(meta["present"]):
        raise _damaged(path, f"it counts {meta['count']} snapshots and holds none")
    meta["path"] = path
    return arrays, meta
