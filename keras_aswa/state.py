"""Averaging state on disk, for resuming a run that was killed.

One `.npz` file a generation, holding the averaged arrays and, as a JSON
string, everything else (size, score, history, the epoch): no pickle. Writes
are atomic (a temporary file, then a rename), and the previous generation is
kept beside the latest, so that a crash between this callback's write and
`BackupAndRestore`'s still finds the state that matches Keras' backup.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

LATEST = "state.npz"
PREVIOUS = "state.prev.npz"
_META = "__meta__"
FORMAT = 1


class StateFileError(ValueError):
    """A state file that cannot be used: unreadable, or from another model."""


def save_state(directory: str, arrays: list, meta: dict) -> None:
    """Writes one generation atomically; the last one becomes the previous.

    Args:
        directory: Where the state lives (created if missing).
        arrays: numpy arrays, or None for entries that are not averaged.
        meta: JSON-serialisable metadata.
    """
    os.makedirs(directory, exist_ok=True)
    payload = {f"a{i}": a for i, a in enumerate(arrays) if a is not None}
    meta = dict(meta, format=FORMAT, present=[a is not None for a in arrays])
    payload[_META] = np.array(json.dumps(meta))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".state-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        latest = os.path.join(directory, LATEST)
        if os.path.exists(latest):
            os.replace(latest, os.path.join(directory, PREVIOUS))
        os.replace(tmp, latest)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_states(directory: str) -> list[tuple[list, dict]]:
    """The generations found in `directory`, latest first.

    Returns:
        A list of `(arrays, meta)`; empty when there is no state.

    Raises:
        StateFileError: If a state file is truncated or not a state file.
    """
    found = []
    for name in (LATEST, PREVIOUS):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            found.append(_read(path))
    return found


def _read(path: str) -> tuple[list, dict]:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data[_META]))
            arrays = [
                data[f"a{i}"] if present else None
                for i, present in enumerate(meta["present"])
            ]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise StateFileError(
            f"The averaging state file {path} cannot be read ({type(e).__name__}: "
            f"{e}); it may be truncated. It was left as it is: delete it (and "
            f"{PREVIOUS} beside it) to start a new average, or point backup_dir "
            "elsewhere."
        ) from None
    meta["path"] = path
    return arrays, meta


def clear_state(directory: str) -> None:
    """Removes the state files (after a run that finished)."""
    for name in (LATEST, PREVIOUS):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            os.remove(path)
