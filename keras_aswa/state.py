"""Averaging state on disk, for resuming a run that was killed.

One `.npz` file a generation, holding the averaged arrays and, as a JSON
string, everything else (size, score, history, epoch, step, the callback's
arguments): no pickle. Writes are atomic (a temporary file, then a rename).
Two generations are kept: the latest, and the last one written in an earlier
epoch, so that a kill between this callback's write and `BackupAndRestore`'s
(whichever runs first) still finds the state that matches Keras' backup.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import zipfile

import numpy as np

LATEST = "state.npz"
PREVIOUS = "state.prev.npz"
_META = "__meta__"
_TEMPORARY = ".state-*.npz"
FORMAT = 2
_REQUIRED = ("callback", "epoch", "step", "count", "signature", "history", "present")


class StateFileError(ValueError):
    """A state file that cannot be used: unreadable, or from another run."""


class StateStore:
    """The averaging state of one callback in one folder.

    Args:
        directory: Where the state lives (created at the first write).

    Example:

    ```python
    store = StateStore("backup/aswa")
    store.load()                      # reads and checks what is there
    found = store.pick(lambda meta: meta["epoch"] == 4)
    store.free()                      # the loaded arrays are not kept
    store.save(arrays, {"epoch": 5, "step": None, ...})
    store.clear()                     # after a finished run
    ```
    """

    def __init__(self, directory: str):
        self.directory = str(directory)
        self.generations: list[tuple[list, dict]] = []
        self._latest_epoch = None

    def path(self, name: str = LATEST) -> str:
        return os.path.join(self.directory, name)

    def load(self, tidy: bool = True) -> None:
        """Reads the generations there are, latest first.

        Args:
            tidy: Whether to remove the temporary files left by a write that
                was killed: never a valid state (the rename that would have
                made them one did not happen). Only the writer tidies.

        Raises:
            StateFileError: If a state file is truncated, not a state file,
                of another format version, or inconsistent with itself.
        """
        if tidy:
            for stale in glob.glob(os.path.join(self.directory, _TEMPORARY)):
                os.remove(stale)
        self.generations = [
            _read(self.path(name))
            for name in (LATEST, PREVIOUS)
            if os.path.exists(self.path(name))
        ]
        self._latest_epoch = (
            self.generations[0][1]["epoch"] if self.generations else None
        )

    def pick(self, accept) -> tuple[list, dict] | None:
        """The latest generation whose metadata `accept` takes, or None."""
        return next((g for g in self.generations if accept(g[1])), None)

    def free(self) -> None:
        """Drops the loaded generations from memory."""
        self.generations = []

    def save(self, arrays: list, meta: dict) -> None:
        """Writes one generation atomically.

        The latest generation becomes the previous one when `meta["epoch"]`
        is a later epoch than its own; within one epoch (checks every few
        steps) only the latest is replaced, so the previous generation stays
        the last state of an earlier epoch.

        Args:
            arrays: numpy arrays, or None for entries that are not held.
            meta: JSON-serialisable metadata, with at least the keys
                `"epoch"` and `"step"`.
        """
        os.makedirs(self.directory, exist_ok=True)
        payload = {f"a{i}": a for i, a in enumerate(arrays) if a is not None}
        meta = dict(meta, format=FORMAT, present=[a is not None for a in arrays])
        payload[_META] = np.array(json.dumps(meta))
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".state-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **payload)
                f.flush()
                os.fsync(f.fileno())
            latest = self.path(LATEST)
            if os.path.exists(latest) and self._latest_epoch != meta["epoch"]:
                os.replace(latest, self.path(PREVIOUS))
            os.replace(tmp, latest)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        self._latest_epoch = meta["epoch"]

    def clear(self) -> None:
        """Removes the state files and any temporary ones (a finished run)."""
        paths = [self.path(LATEST), self.path(PREVIOUS)]
        paths += glob.glob(os.path.join(self.directory, _TEMPORARY))
        for path in paths:
            if os.path.exists(path):
                os.remove(path)
        self.free()
        self._latest_epoch = None


def _damaged(path: str, why: str) -> StateFileError:
    return StateFileError(
        f"The averaging state file {path} cannot be used: {why}. It was left "
        f"as it is: delete it (and {PREVIOUS} beside it) to start a new "
        "average, or point backup_dir elsewhere."
    )


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
            missing = [key for key in _REQUIRED if key not in meta]
            if missing:
                raise _damaged(path, f"its metadata lacks {missing}")
            arrays = [
                data[f"a{i}"] if present else None
                for i, present in enumerate(meta["present"])
            ]
    except StateFileError:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        EOFError,
        zipfile.BadZipFile,
    ) as e:
        raise _damaged(path, f"{type(e).__name__}: {e}; it may be truncated") from None
    signature = meta["signature"]
    if len(signature) != len(arrays) or any(
        a is not None and (list(a.shape) != shape or str(a.dtype) != dtype)
        for a, (shape, dtype) in zip(arrays, signature, strict=False)
    ):
        raise _damaged(path, "its arrays do not match the shapes it records")
    meta["path"] = path
    return arrays, meta
