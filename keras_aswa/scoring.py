"""Where the validation scores come from.

A scorer answers two questions at each epoch end: the running model's score
and the score of whatever weights the model holds right now (the provisional
ensemble). Three sources:

- `FitValidation`: `fit`'s own validation. The running score is read from the
  epoch logs; the provisional ensemble is evaluated on the very iterator `fit`
  validates with, so its data, batching and compiled test function are reused
  (one extra evaluation per epoch, no re-tracing).
- `DataValidation`: data given to the callback. Both scores are evaluated on
  it, so that they are comparable.
- `FunctionScore`: a user's `score_fn(model) -> float` scores both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from keras import ops
from keras.utils import unpack_x_y_sample_weight

from keras_aswa import internals

# A score of None means: this epoch has none.
Score = float | None


class Scorer:
    """How a callback gets its scores. Subclasses implement both methods."""

    def on_train_begin(self, model) -> None:
        """Checks what can be checked before training; resets per-fit state."""

    def running(self, model, logs: dict) -> Score:
        raise NotImplementedError

    def current(self, model) -> float:
        raise NotImplementedError


def _metric_name(monitor: str) -> str:
    return monitor.removeprefix("val_")


def _evaluated(results: dict, monitor: str) -> float:
    name = _metric_name(monitor)
    if name not in results:
        raise ValueError(
            f"monitor={monitor!r}: the evaluation returned no {name!r}. "
            f"It returned: {sorted(results)}."
        )
    return float(results[name])


class FitValidation(Scorer):
    """Scores from `fit`'s own validation data.

    Args:
        monitor: A validation quantity of the epoch logs, e.g. `"val_loss"`.
    """

    def __init__(self, monitor: str):
        if not monitor.startswith("val_"):
            raise ValueError(
                f"monitor={monitor!r} is not a validation quantity: the "
                "ensemble is scored on validation data, so monitor one, such "
                "as 'val_loss' or 'val_accuracy', or pass `score_fn`."
            )
        self.monitor = monitor

    def running(self, model, logs):
        if self.monitor in logs:
            return float(logs[self.monitor])
        validation_keys = [k for k in logs if k.startswith("val_")]
        if validation_keys:
            raise ValueError(
                f"monitor={self.monitor!r} is not in the epoch logs. The "
                f"logs have: {sorted(logs)}. Pass one of the 'val_' keys as "
                "monitor."
            )
        return None  # no validation this epoch (validation_freq > 1)

    def current(self, model):
        # At an epoch end that validated, through fit's cached iterator: its
        # data pipeline and compiled test function are reused.
        results = internals.evaluate_fit_validation(model)
        if results is None:
            # Elsewhere (an epoch end replayed after a resume), on the same
            # data with the same batching.
            arguments = internals.fit_validation(model)
            if arguments is None:
                raise RuntimeError(
                    "keras_aswa cannot find fit's validation data in this "
                    "version of Keras. Pass `validation_data` to the callback "
                    "instead."
                )
            results = model.evaluate(**arguments, verbose=0, return_dict=True)
        return _evaluated(results, self.monitor)


class DataValidation(Scorer):
    """Scores both models by evaluating on data given to the callback.

    The evaluations run through a compiled test function of their own, kept
    for the length of a `fit`: on TensorFlow, sharing `fit`'s would make it
    retrace for a second input signature (labels of shape `(n,)` beside
    `fit`'s `(n, 1)`) with relaxed shapes, which Keras' losses cannot handle.

    Args:
        monitor: The quantity; a leading `val_` is dropped to find it in the
            results of `model.evaluate`.
        data: What `fit(validation_data=...)` accepts: an `(x, y)` or
            `(x, y, sample_weight)` tuple or list, or anything
            `model.evaluate` accepts as `x` alone (a dataset).
        batch_size: Passed to `model.evaluate` for array data.
        steps: How many batches of `data` each evaluation uses (None: all);
            arrays are then batched by `batch_size`, or 32.
    """

    def __init__(self, monitor: str, data, batch_size: int | None = None, steps=None):
        self.monitor = monitor
        self.data = data
        self.batch_size = batch_size
        self.steps = steps
        self._test_function = None

    def __deepcopy__(self, memo):
        # The data is shared (see `deepcopy_sharing_data`), and a compiled
        # function belongs to the model it was traced for.
        copied = type(self)(self.monitor, self.data, self.batch_size, self.steps)
        memo[id(self)] = copied
        return copied

    def on_train_begin(self, model):
        self._test_function = None  # a new fit, maybe another model
        x, y, _ = unpack_x_y_sample_weight(self.data)
        # Arrays without labels, for a model whose compiled loss needs them:
        # found now, not after the first epoch trained.
        parts = list(x.values()) if isinstance(x, dict) else x
        parts = parts if isinstance(parts, list | tuple) else [parts]
        arrays = bool(parts) and all(hasattr(p, "shape") for p in parts)
        if y is None and arrays and getattr(model, "loss", None) is not None:
            raise ValueError(
                "The callback's validation_data holds no labels: pass "
                "validation_data=(x_val, y_val) (or (x_val, y_val, "
                "sample_weight)), as to fit, or a dataset of (x, y) batches."
            )

    def running(self, model, logs):
        return self.current(model)

    def current(self, model):
        x, y, sample_weight = unpack_x_y_sample_weight(self.data)
        batch_size = self.batch_size
        if self.steps is not None and not internals.is_data_source(x):
            # With `steps`, Keras splits arrays into that many batches: give
            # the batch size, so that `steps` batches are the first ones.
            batch_size = batch_size or 32
        fit_function = model.test_function
        model.test_function = self._test_function
        try:
            results = model.evaluate(
                x,
                y,
                sample_weight=sample_weight,
                batch_size=batch_size,
                steps=self.steps,
                verbose=0,
                return_dict=True,
            )
        except (ValueError, TypeError) as e:
            error = ValueError if isinstance(e, ValueError) else TypeError
            raise error(
                "Evaluating the model on the callback's validation_data failed "
                f"({type(e).__name__}: {e}). validation_data takes what fit's "
                "validation_data takes: (x_val, y_val), (x_val, y_val, "
                "sample_weight) or a dataset of such batches, shaped as the "
                "model's inputs and outputs."
            ) from e
        finally:
            self._test_function = model.test_function
            model.test_function = fit_function
        return _evaluated(results, self.monitor)


class FunctionScore(Scorer):
    """Scores both models with `score_fn(model) -> float`.

    Args:
        score_fn: Called with the model holding the weights to score.
    """

    def __init__(self, score_fn: Callable):
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable; got {score_fn!r}.")
        self.score_fn = score_fn

    def running(self, model, logs):
        return self.current(model)

    def current(self, model):
        return as_score(self.score_fn(model), "score_fn")


def as_score(value, source: str) -> float:
    """A single float from a scalar of any framework.

    NaN and infinities pass through: the decision rule treats them as the
    worst score. Anything that is not one number is an error.

    Raises:
        TypeError: If `value` is not a single real number.
    """
    try:
        # Backend tensors may live on an accelerator: Keras brings them over.
        if hasattr(value, "shape") and not isinstance(value, np.ndarray):
            value = ops.convert_to_numpy(value)
        array = np.asarray(value)
        if array.size != 1 or not np.issubdtype(array.dtype, np.number):
            raise ValueError
        score = float(array.reshape(()))
    except (TypeError, ValueError):
        raise TypeError(
            f"{source} must return a single real number (a float or a scalar "
            f"tensor); it returned {value!r}."
        ) from None
    return score
