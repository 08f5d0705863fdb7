"""The regimes study's data splits: which Fashion-MNIST images go where.

numpy only: the splits are tested without training anything. Every split is
fixed (seed 0), so seeds vary only initialisation and batch order.

- Fine-tuning: pretraining on the training file's images of classes 0-4;
  fine-tuning on `FINETUNE_TRAIN` training-file images of classes 5-9 (equal
  per class), validation on `FINETUNE_VAL` others of classes 5-9, test on the
  test file's classes 5-9 (5,000 images); labels 5-9 become 0-4.
- Small data: `SMALL_TRAIN` training-file images (equal per class), validation
  on `SMALL_VAL` others, test on the whole test file (10,000 images).
"""

from __future__ import annotations

import numpy as np

from benchmarks.quality.config import (
    FINETUNE_TRAIN,
    FINETUNE_VAL,
    SMALL_TRAIN,
    SMALL_VAL,
)

PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
FINETUNE_CLASSES = (5, 6, 7, 8, 9)
# Smoke: tiny splits, cut from the full ones (so they keep their classes).
SMOKE_SIZES = {"pretrain": 512, "train": 128, "val": 64, "test": 256}


def balanced_draw(
    y: np.ndarray, classes, sizes: tuple[int, ...], seed: int = 0
) -> list[np.ndarray]:
    """Disjoint index sets of `y`, each holding `size / len(classes)` images
    of every class in `classes`, drawn at random (`seed`), each sorted.

    Raises:
        ValueError: If a size does not divide by the number of classes or a
            class has too few images.
    """
    rng = np.random.default_rng(seed)
    parts = [[] for _ in sizes]
    for c in classes:
        pool = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for part, size in zip(parts, sizes, strict=True):
            if size % len(classes):
                raise ValueError(f"{size} images do not split over {classes}")
            k = size // len(classes)
            if start + k > len(pool):
                raise ValueError(f"class {c} has {len(pool)} images, {start + k} asked")
            part.append(pool[start : start + k])
            start += k
    return [np.sort(np.concatenate(p)) for p in parts]


def finetune_indices(y_train: np.ndarray, y_test: np.ndarray) -> dict:
    """Index arrays into the training and test files: "pretrain", "train",
    "val" (training file) and "test" (test file)."""
    train, val = balanced_draw(
        y_train, FINETUNE_CLASSES, (FINETUNE_TRAIN, FINETUNE_VAL), seed=0
    )
    return {
        "pretrain": np.flatnonzero(np.isin(y_train, PRETRAIN_CLASSES)),
        "train": train,
        "val": val,
        "test": np.flatnonzero(np.isin(y_test, FINETUNE_CLASSES)),
    }


def small_indices(y_train: np.ndarray, y_test: np.ndarray) -> dict:
    """Index arrays: "train" and "val" (training file), "test" (test file)."""
    train, val = balanced_draw(y_train, range(10), (SMALL_TRAIN, SMALL_VAL), seed=0)
    return {"train": train, "val": val, "test": np.arange(len(y_test))}


def smoke_cut(idx: dict) -> dict:
    """The smoke run's tiny splits: a spread of each split's indices (every
    class kept, the splits still disjoint)."""
    out = {}
    for name, ix in idx.items():
        k = min(SMOKE_SIZES[name], len(ix))
        out[name] = ix[np.linspace(0, len(ix) - 1, k).astype(np.int64)]
    return out


def regime_arrays(dataset: str, smoke: bool, fashion) -> dict:
    """The regime's images (float32 in [0, 1], channel last) and labels.

    Args:
        dataset: "fmnist_finetune" or "fmnist_small".
        fashion: ``((x_train, y_train), (x_test, y_test))`` as
            `load_fashion_mnist` returns them.

    Returns:
        ``x_/y_`` for train, val and test (fine-tuning: also pretrain, and
        labels shifted to 0-4), and ``"indices"``: where each came from.
    """
    (x, y), (xt, yt) = fashion
    if dataset == "fmnist_finetune":
        idx = finetune_indices(y, yt)
    elif dataset == "fmnist_small":
        idx = small_indices(y, yt)
    else:
        raise ValueError(f"unknown regime data set {dataset!r}")
    if smoke:
        idx = smoke_cut(idx)
    shift = FINETUNE_CLASSES[0] if dataset == "fmnist_finetune" else 0
    out = {"indices": idx}
    for name, ix in idx.items():
        images, labels = (xt, yt) if name == "test" else (x, y)
        out[f"x_{name}"] = (images[ix][..., None] / 255.0).astype("float32")
        labels = labels[ix]
        out[f"y_{name}"] = labels if name == "pretrain" else labels - shift
    return out
