"""Checks of the callbacks' constructor arguments, and how a callback is copied.

Every check runs at construction, so that a wrong value stops the script
before any training is spent, with a message that says what to pass.
"""

from __future__ import annotations

import copy
import math
import numbers

import keras
import numpy as np


def _is_int(value) -> bool:
    # numpy integers count (np.int64 from a config or an array), bools do not.
    if isinstance(value, bool | np.bool_):
        return False
    return isinstance(value, numbers.Integral)


def epoch_index(name: str, value) -> int:
    """A 0-based epoch index: an int >= 0 (numpy ints too, bools not).

    Raises:
        ValueError: Saying what to pass.
    """
    if not _is_int(value) or value < 0:
        raise ValueError(
            f"{name} must be a non-negative int (a 0-based epoch index, as in "
            f"keras.callbacks.EarlyStopping); got {value!r} of type "
            f"{type(value).__name__}."
        )
    return int(value)


def epoch_index_or_fraction(name: str, value) -> int | float:
    """An epoch index, or a float in (0, 1) meaning that fraction of the epochs.

    Raises:
        ValueError: Saying what to pass.
    """
    if isinstance(value, numbers.Real) and not _is_int(value):
        if isinstance(value, bool | np.bool_) or not 0 < value < 1:
            raise ValueError(
                f"A float {name} is a fraction of the epochs and must lie in "
                f"(0, 1); got {value!r}. Pass an int for an epoch index."
            )
        return float(value)
    if not _is_int(value) or value < 0:
        raise ValueError(
            f"{name} must be a non-negative int (a 0-based epoch index) or a "
            f"float in (0, 1) (a fraction of the epochs); got {value!r} of type "
            f"{type(value).__name__}."
        )
    return int(value)


def positive_int(name: str, value, meaning: str) -> int:
    """An int >= 1 (numpy ints too, bools not).

    Raises:
        ValueError: Saying what to pass.
    """
    if not _is_int(value) or value < 1:
        raise ValueError(
            f"{name} must be an int >= 1 ({meaning}); got {value!r} of type "
            f"{type(value).__name__}."
        )
    return int(value)


def update_frequency(name: str, value) -> str | int:
    """`"epoch"`, `"auto"`, or an int >= 1: the training batches between two
    checks.

    Raises:
        ValueError: Saying what to pass.
    """
    if value in ("epoch", "auto") and isinstance(value, str):
        return value
    if not _is_int(value) or value < 1:
        raise ValueError(
            f"{name} must be 'epoch', 'auto' or an int >= 1 (the number of "
            f"training batches between two updates); got {value!r}."
        )
    return int(value)


def share(name: str, value) -> float:
    """A float in (0, 1).

    Raises:
        ValueError: Saying what to pass.
    """
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool | np.bool_)
        or not 0 < value < 1
    ):
        raise ValueError(
            f"{name} must be a float in (0, 1), a share of the fit's time; got "
            f"{value!r}."
        )
    return float(value)


def min_delta(value) -> float:
    """A finite real number; its absolute value is the margin, as in Keras.

    Raises:
        TypeError: If it is not a real number.
        ValueError: If it is NaN or infinite (no score could ever improve).
    """
    if not isinstance(value, numbers.Real) or isinstance(value, bool | np.bool_):
        raise TypeError(
            "min_delta must be a real number (e.g. 0.0 or 1e-3), the minimum "
            f"change that counts as an improvement; got {value!r} of type "
            f"{type(value).__name__}."
        )
    if not math.isfinite(value):
        raise ValueError(
            f"min_delta must be finite; got {value!r}, with which no score "
            "could ever count as an improvement. Pass e.g. 0.0 or 1e-3."
        )
    return abs(float(value))


def verbosity(value) -> int:
    """0 (silent) or a positive int (one line per epoch); bools are accepted.

    Raises:
        ValueError: Saying what to pass.
    """
    if isinstance(value, bool | np.bool_):
        return int(value)
    if not _is_int(value) or value < 0:
        raise ValueError(
            f"verbose must be 0 (silent) or 1 (one line per epoch); got "
            f"{value!r} of type {type(value).__name__}."
        )
    return int(value)


def validation_data(value):
    """Checks what `fit` would check of `validation_data`, before training.

    Accepts what `fit(validation_data=...)` accepts: an `(x, y)` or
    `(x, y, sample_weight)` tuple or list, or anything `evaluate` takes as
    `x` by itself (`tf.data.Dataset`, `PyDataset`, torch `DataLoader`, ...).
    Arrays of different lengths are refused now rather than after an epoch.

    Raises:
        ValueError: Saying what to pass.
    """
    if value is None:
        return value
    if isinstance(value, list | tuple):
        if not 1 <= len(value) <= 3:
            raise ValueError(
                "validation_data must be (x_val, y_val) or (x_val, y_val, "
                "sample_weight), as fit's validation_data, or a dataset; got a "
                f"{type(value).__name__} of {len(value)} items."
            )
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(value))
        lengths = {
            name: _length(part)
            for name, part in (("x", x), ("y", y), ("sample_weight", sample_weight))
            if part is not None
        }
        known = {n for n in lengths.values() if n is not None}
        if len(known) > 1:
            raise ValueError(
                "validation_data's arrays must hold the same number of samples; "
                f"got {lengths}. Pass (x_val, y_val) or (x_val, y_val, "
                "sample_weight) with one row per sample in each."
            )
    return value


def _length(data) -> int | None:
    """The number of samples of an array, or of a list/dict of arrays."""
    if isinstance(data, dict):
        data = list(data.values())
    if isinstance(data, list | tuple):
        lengths = {_length(d) for d in data} - {None}
        return lengths.pop() if len(lengths) == 1 else None
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) == 0 or shape[0] is None:
        return None
    return int(shape[0])


# Data and functions a callback only refers to: a copy refers to the same.
SHARED = ("validation_data", "batchnorm_data", "score_fn", "_model", "_fit", "_average")


def deepcopy_sharing_data(callback, memo: dict):
    """`__deepcopy__` for the callbacks: the same data, its own state.

    keras-tuner deep-copies the callbacks for every trial. Copying
    `validation_data` or `batchnorm_data` would duplicate the data, and a
    `tf.data.Dataset` cannot be copied at all; `score_fn` may close over
    anything. A copy therefore shares them (and the model it was last used
    with, and that model's average, which its next `fit` replaces) and
    copies everything else: its settings and history.
    """
    cls = type(callback)
    copied = cls.__new__(cls)
    memo[id(callback)] = copied
    for name in SHARED:
        value = callback.__dict__.get(name)
        if value is not None:
            memo[id(value)] = value
    for name, value in callback.__dict__.items():
        copied.__dict__[name] = copy.deepcopy(value, memo)
    return copied
