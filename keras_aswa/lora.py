"""LoRA layers across Keras' `BackupAndRestore`.

Keras saves a LoRA layer (`layer.enable_lora(rank)`, keras-hub's
`backbone.enable_lora`) with its adapters merged into the kernel; loading
writes that merged kernel into the frozen base and zeroes the adapters. The
average holds the adapters only (the base never changes during `fit`), and
adapters mean something only on the base they were validated with. So a
callback with a `backup_dir` keeps the bases there (once: they do not change)
and the running adapters with every generation of its state (and, where
Keras' backup comes first in `fit`'s list, at every epoch end before Keras
saves); after Keras restores, `unmerge` puts the base back and the running
adapters with it.

Example:

```python
parts = lora.parts(model)
lora.save_bases(parts, "backup/aswa", run)   # once a run
adapters = lora.adapters(parts)              # with every generation
lora.unmerge(parts, "backup/aswa", adapters) # after Keras restored
```
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np
from keras import ops

from keras_aswa import internals, kernels
from keras_aswa.state import LORA_BASES as BASES
from keras_aswa.state import LORA_RUNNING as RUNNING
from keras_aswa.state import UNREADABLE, StateFileError, damaged, write_npz


@dataclass
class Part:
    """One LoRA layer: its frozen base, its two adapters, their scale."""

    base: object
    a: object
    b: object
    scale: float


def parts(model) -> list[Part]:
    """The LoRA layers of `model` with a floating-point base, in layer order."""
    found = []
    for layer in internals.flatten_layers(model):
        variables = internals.lora_variables(layer)
        if variables is None:
            continue
        base, a, b = variables
        if "float" not in str(base.dtype):
            continue  # a quantized base is Keras' own business
        found.append(Part(base, a, b, layer.lora_alpha / layer.lora_rank))
    return found


def _numpy(variable) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(kernels.read(variable)), "float32")


def _identity(found: list[Part]) -> dict:
    """What makes a bases file this model's: its LoRA layers' bases (their
    paths without the numbers Keras appends to default names)."""
    return {
        "paths": [_NUMBERED.sub("", str(getattr(p.base, "path", ""))) for p in found],
        "shapes": [list(p.base.shape) for p in found],
    }


_NUMBERED = re.compile(r"_\d+(?=/|$)")


def save_bases(found: list[Part], directory: str, run: str) -> None:
    """Writes the bases to `directory` (atomically), for the run `run` (the
    state's generations carry the same identifier)."""
    if found:
        meta = dict(_identity(found), run=run)
        _write(
            os.path.join(directory, BASES),
            [_numpy(p.base) for p in found],
            meta,
        )


def bases_run(found: list[Part], directory: str) -> str | None:
    """The run the bases file in `directory` was written for, or None when
    there is none.

    Raises:
        StateFileError: If it cannot be read, or holds the bases of other
            layers than `found` (another model's), naming the file.
    """
    path = os.path.join(directory, BASES)
    if not found or not os.path.exists(path):
        return None
    meta, _ = _read(path)
    if {k: meta.get(k) for k in ("paths", "shapes")} != _identity(found):
        raise damaged(
            path,
            "it holds the LoRA bases of other layers than this model's "
            "(another model's, or another run's)",
        )
    return meta["run"]


def save_running(found: list[Part], directory: str, epoch: int, run: str) -> None:
    """Writes the running adapters at the end of `epoch`, replacing the last.

    Called before Keras' `BackupAndRestore` saves that epoch where it comes
    before the callback: killed between the two, the rerun replays the epoch
    end with these adapters, which Keras' backup holds only merged.
    """
    meta = {"run": run, "epoch": epoch}
    _write(os.path.join(directory, RUNNING), adapters(found), meta)


def load_running(directory: str, epoch: int, run: str) -> list | None:
    """The adapters `save_running` wrote at the end of `epoch` in the run
    `run`, or None."""
    path = os.path.join(directory, RUNNING)
    if not os.path.exists(path):
        return None
    meta, arrays = _read(path)
    if meta.get("run") != run or meta.get("epoch") != epoch:
        return None
    return arrays


def _write(path: str, arrays: list, meta: dict) -> None:
    payload = {f"arr_{i}": a for i, a in enumerate(arrays)}
    payload["__meta__"] = np.array(json.dumps(meta))
    write_npz(path, payload)


def _read(path: str) -> tuple[dict, list]:
    """A LoRA file's metadata and arrays; a file that cannot be used is a
    StateFileError naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            if not isinstance(meta, dict) or not isinstance(meta.get("run"), str):
                raise damaged(path, "its metadata is not a LoRA file's")
            names = sorted(
                (n for n in data.files if n.startswith("arr_")),
                key=lambda n: int(n[4:]),
            )
            arrays = [data[n] for n in names]
    except StateFileError:
        raise
    except UNREADABLE as e:
        raise damaged(
            path, f"{type(e).__name__}: {e}; it may be truncated, or not a LoRA file"
        ) from None
    return meta, arrays


def adapters(found: list[Part]) -> list[np.ndarray]:
    """The running adapters, `a` then `b` of each layer."""
    return [_numpy(v) for p in found for v in (p.a, p.b)]


def unmerge(found: list[Part], directory: str, running: list | None) -> bool:
    """Undoes Keras' merge of the adapters into the bases, where it happened.

    Args:
        found: The model's LoRA layers (`parts`).
        directory: Where `save_bases` wrote the bases.
        running: The running adapters when Keras' backup was made
            (`adapters`), or None when they are not known (a backup made
            between two of the callback's writes): the merged difference is
            then factored again, at the layer's rank, so that the model
            computes what Keras restored.

    Returns:
        Whether any base had been merged.
    """
    path = os.path.join(directory, BASES)
    if not found or not os.path.exists(path):
        return False
    _, bases = _read(path)
    if len(bases) != len(found) or any(
        b.shape != tuple(p.base.shape) for b, p in zip(bases, found, strict=False)
    ):
        raise damaged(path, "its arrays do not match this model's LoRA bases")
    variables = [v for p in found for v in (p.a, p.b)]
    if running is not None and (
        len(running) != len(variables)
        or any(
            np.size(r) != np.prod(v.shape)
            for r, v in zip(running, variables, strict=False)
        )
    ):
        raise damaged(path, "the running adapters kept do not match this model's")
    merged = False
    for i, (part, base) in enumerate(zip(found, bases, strict=True)):
        current = _numpy(part.base)
        if np.array_equal(current, base):
            continue
        merged = True
        if running is not None:
            a, b = running[2 * i], running[2 * i + 1]
        else:
            a, b = _factor((current - base) / part.scale, part.a.shape[-1])
        for variable, value in ((part.base, base), (part.a, a), (part.b, b)):
            variable.assign(np.asarray(value).reshape(variable.shape))
    return merged


def _factor(delta: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """`a @ b == delta` (up to rounding) with `rank` columns in `a`."""
    matrix = delta.reshape(-1, delta.shape[-1]).astype("float64")
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    root = np.sqrt(s[:rank])
    a = np.zeros((matrix.shape[0], rank), "float32")
    b = np.zeros((rank, matrix.shape[1]), "float32")
    # A matrix of lower rank than the layer's leaves the other columns 0.
    a[:, : root.size] = u[:, :rank] * root
    b[: root.size] = root[:, None] * vt[:rank]
    return a.reshape(delta.shape[:-1] + (rank,)), b
