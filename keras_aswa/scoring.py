"""Where the validation scores come from.

A scorer answers two questions at each epoch end: the running model's score
and the score of whatever weights the model holds right now (the provisional
ensemble). Three sources:

- `FitValidation`: `fit`'s own validation. The running score is read from the
  epoch logs; the provisional ensemble is evaluated on the very iterator `fit`
  validates with, so its data, batching and compiled test function are reused
  (one extra evaluation per epoch, no re-tracing).
- `DataValidation`: data given to the callback. Both scores are evaluated on
  it, so that they are comparable: in one compiled call per batch for both
  weight sets (`keras_aswa.evaluation`), where the model allows it.
- `FunctionScore`: a user's `score_fn(model) -> float` scores both.
"""

from __future__ import annotations

import contextlib
import math
import sys
import types
import warnings
from collections.abc import Callable, Iterator

import keras
import numpy as np
from keras import ops
from keras.utils import PyDataset, unpack_x_y_sample_weight

from keras_aswa import internals
from keras_aswa.evaluation import Batches, Evaluation, available

# A score of None means: this epoch has none.
Score = float | None

# The most bytes of validation batches kept as a tf.data.Dataset (a copy).
_CACHED_BYTES = 256 * 2**20


class Scorer:
    """How a callback gets its scores. Subclasses implement both methods."""

    def on_train_begin(self, model, fit: dict | None = None) -> None:
        """Checks what can be checked before training; resets per-fit state.

        Args:
            model: The model `fit` trains.
            fit: `fit`'s locals (`internals.fit_locals`), None when unknown.
        """

    def on_train_end(self) -> None:
        """Lets go of what belongs to the fit that ended."""

    def warm_up(self, model) -> None:
        """Scores once, as a check does, so that it compiles now."""
        self.current(model)

    def batches(self) -> int | None:
        """The batches a check evaluates, where that is a choice (else None)."""
        return None

    def limit(self, steps: int) -> None:
        """Makes each evaluation score on the first `steps` batches."""

    def batch_samples(self) -> int | None:
        """Samples in a batch a check scores (None where not known)."""
        return None

    def running(self, model, logs: dict) -> Score:
        raise NotImplementedError

    def current(self, model) -> float:
        raise NotImplementedError

    def scores(self, model, logs: dict, average) -> tuple[Score, Score]:
        """The running model's score and the provisional ensemble's (None
        where the running model has none, or `average`, a `WeightAverage`,
        has no member yet).

        The provisional ensemble is written into the model to be scored, and
        the running weights put back. What the evaluations change of `fit`'s
        state (its metrics, JAX's trainer state) is put back too.
        """
        with internals.training_state_kept(model):
            running = self.running(model, logs)
            if running is None or average.empty:
                return running, None
            average.show_provisional()
            try:
                return running, self.current(model)
            finally:
                average.hide()


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
        self._fit = None

    def on_train_begin(self, model, fit=None):
        self._fit = fit

    def on_train_end(self):
        self._fit = None  # fit's locals hold its data

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
            arguments = internals.fit_validation(self._fit)
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

    Both weight sets are scored by `keras_aswa.evaluation.Evaluation` on
    batches prepared once per fit, where `evaluation.available` allows it.
    Elsewhere (a distribution strategy, BatchNorm recomputed for the
    provisional ensemble) they are evaluated: through a compiled test
    function of their own, kept
    for the length of a `fit`: on TensorFlow, sharing `fit`'s would make it
    retrace for a second input signature (labels of shape `(n,)` beside
    `fit`'s `(n, 1)`) with relaxed shapes, which Keras' losses cannot handle.

    Data it cannot evaluate at every check is refused at construction: a
    one-shot iterator, data without batches, or an infinite dataset without
    `steps`. `steps` beyond the data's batches are cut to them, with a warning.

    Args:
        monitor: The quantity; a leading `val_` is dropped to find it in the
            results of `model.evaluate`.
        data: What `fit(validation_data=...)` accepts: an `(x, y)` or
            `(x, y, sample_weight)` tuple or list, or anything
            `model.evaluate` accepts as `x` alone (a dataset).
        batch_size: Passed to `model.evaluate` for array data.
        steps: How many batches of `data` each evaluation uses (None: all);
            arrays are then batched by `batch_size`, or 32.

    Raises:
        ValueError: If `data` is a generator or another one-shot iterator,
            holds no batch, or is infinite and `steps` is None.
    """

    def __init__(self, monitor: str, data, batch_size: int | None = None, steps=None):
        self.monitor = monitor
        self.data = data
        self.batch_size = batch_size
        self.steps = steps
        self._steps = steps  # `steps`, cut to the batches there are
        self._test_function = None
        self._cache = None  # (steps, evaluate's data arguments)
        self._evaluation = None  # (steps, Evaluation), made at the first check
        self._fit_batch_size = None
        self._checked_batches()  # refuses now what no evaluation could use

    def __deepcopy__(self, memo):
        # The data is shared (see `deepcopy_sharing_data`), and a compiled
        # function belongs to the model it was traced for.
        copied = type(self)(self.monitor, self.data, self.batch_size, self.steps)
        memo[id(self)] = copied
        return copied

    def _checked_batches(self) -> int | float | None:
        """How many batches an evaluation without `steps` would run.

        `math.inf` for an infinite dataset, None where it cannot be known
        before iterating (a `tf.data.Dataset` of unknown cardinality, an
        iterable torch dataset).

        Raises:
            ValueError: If the data cannot be evaluated at every check.
        """
        x, _, _ = unpack_x_y_sample_weight(self.data)
        if isinstance(x, types.GeneratorType) or (
            isinstance(x, Iterator) and iter(x) is x
        ):
            raise ValueError(
                "The callback's validation_data is a generator (or another "
                "iterator that can be iterated once), which the first "
                "evaluation would use up. Pass data that can be iterated "
                "again: arrays (x_val, y_val), a tf.data.Dataset, a "
                "keras.utils.PyDataset or a torch DataLoader."
            )
        n = _num_batches(x, self.batch_size or 32)
        if n == 0:
            raise ValueError(
                "The callback's validation_data is empty: it holds no sample "
                "to score on. Pass data of at least one batch, or leave "
                "validation_data out to score on fit's validation data."
            )
        if n == math.inf and self.steps is None:
            raise ValueError(
                "The callback's validation_data is infinite (a tf.data.Dataset "
                "repeated with .repeat(), or a PyDataset whose num_batches is "
                "None), so an evaluation over all of it would never end: pass "
                "validation_steps=N, the number of its batches each evaluation "
                "scores on."
            )
        return n

    def on_train_begin(self, model, fit=None):
        self._test_function = None  # a new fit, maybe another model
        self._cache = None
        self._evaluation = None
        # Arrays may be evaluated in batches as large as fit's.
        self._fit_batch_size = internals.fit_batch_size(fit)
        x, y, _ = unpack_x_y_sample_weight(self.data)
        n = self._checked_batches()
        self._steps = self.steps
        if self.steps is not None and n is not None and n < self.steps:
            # Else Keras would warn at every check that the input "ran out of
            # data; interrupting training", as if training stopped.
            size = f" of {self.batch_size or 32} samples" if _arrays(x) else ""
            warnings.warn(
                f"validation_steps={self.steps} is more than the {n} batches"
                f"{size} that the callback's validation_data holds: each "
                f"evaluation scores on those {n}. Pass validation_steps={n} "
                "or fewer (or None: all of them).",
                stacklevel=2,
            )
            self._steps = n
        # Arrays without labels, for a model whose compiled loss needs them:
        # found now, not after the first epoch trained.
        if y is None and _arrays(x) and getattr(model, "loss", None) is not None:
            raise ValueError(
                "The callback's validation_data holds no labels: pass "
                "validation_data=(x_val, y_val) (or (x_val, y_val, "
                "sample_weight)), as to fit, or a dataset of (x, y) batches."
            )

    def on_train_end(self):
        self._evaluation = None  # holds the batches, on the device

    def warm_up(self, model):
        evaluation = self._compiled(model)
        if evaluation is None:
            self.current(model)
            return
        # One check on the running weights: compiles it at its shapes.
        with _explained():
            evaluation([evaluation.running()] * 2)

    def _compiled(self, model) -> Evaluation | None:
        """The compiled check over the first `steps` batches, made once per
        fit and K; None where `Evaluation` cannot score this model."""
        if self._evaluation is not None and self._evaluation[0] == self._steps:
            return self._evaluation[1]
        evaluation = None
        if available(model) is None:
            evaluation = Evaluation(model, Batches(self._evaluated_data()))
        self._evaluation = (self._steps, evaluation)
        return evaluation

    def scores(self, model, logs, average):
        evaluation = None if average.on_write else self._compiled(model)
        if evaluation is None:
            return super().scores(model, logs, average)
        running = evaluation.running()
        provisional = running
        if not average.empty:
            provisional = evaluation.replaced(
                running, average.variables, average.provisional_values()
            )
        # Two weight sets always: one compiled function for every check.
        with _explained():
            results = evaluation([running, provisional])
        scores = [_evaluated(r, self.monitor) for r in results]
        return scores[0], None if average.empty else scores[1]

    def batches(self):
        if self._steps is not None:
            return self._steps
        n = self._checked_batches()
        return None if n is None or n == math.inf else n

    def limit(self, steps):
        self._steps = steps

    def batch_samples(self):
        x, _, _ = unpack_x_y_sample_weight(self.data)
        return (self.batch_size or 32) if _arrays(x) else None

    def running(self, model, logs):
        return self.current(model)

    def _evaluated_data(self) -> dict:
        """`model.evaluate`'s data arguments for `steps` batches.

        Numpy arrays are cut to those batches once: Keras would otherwise
        adapt all of them at every evaluation, and on TensorFlow they are
        kept as one batched `tf.data.Dataset`, which Keras iterates without
        converting them again (an evaluation of one batch took 80 ms from
        arrays, 5 ms from it).
        """
        if self._cache is not None and self._cache[0] == self._steps:
            return self._cache[1]
        x, y, sample_weight = unpack_x_y_sample_weight(self.data)
        arguments = {"x": x, "y": y, "sample_weight": sample_weight}
        source = internals.is_data_source(x)
        # With `steps`, Keras splits arrays into that many batches: give the
        # batch size, so that `steps` batches are the first ones.
        batch_size = self.batch_size
        if not source:
            batch_size = batch_size or 32
        parts = [p for p in (x, y, sample_weight) if p is not None]
        numpy = all(
            isinstance(a, np.ndarray) for p in parts for a in keras.tree.flatten(p)
        )
        if source or not numpy:
            arguments.update(batch_size=batch_size, steps=self._steps)
        else:
            n = None if self._steps is None else self._steps * batch_size
            # Those samples in batches as large as fit's where these are
            # smaller: the score is a mean over samples either way, and the
            # per-batch call weighs on a small model's evaluation (an MLP's
            # 20 batches of 32 on TensorFlow: 63 ms; in batches of 128: 22 ms).
            batch_size = max(batch_size, self._fit_batch_size or 0)
            cut = tuple(
                None if p is None else keras.tree.map_structure(lambda a: a[:n], p)
                for p in (x, y, sample_weight)
            )
            nbytes = sum(
                a.nbytes for a in keras.tree.flatten([p for p in cut if p is not None])
            )
            if (
                keras.backend.backend() == "tensorflow"
                and nbytes <= _CACHED_BYTES
                and (y is not None or sample_weight is None)
            ):
                import tensorflow as tf

                # A dataset's elements are (x,), (x, y) or (x, y, sample_weight);
                # from_tensor_slices would stack a list into one tensor.
                elements = keras.tree.traverse(
                    lambda p: tuple(p) if isinstance(p, list) else None,
                    tuple(p for p in cut if p is not None),
                    top_down=False,
                )
                dataset = tf.data.Dataset.from_tensor_slices(elements)
                arguments = {"x": dataset.batch(batch_size)}
            else:
                arguments = dict(x=cut[0], y=cut[1], sample_weight=cut[2])
                arguments["batch_size"] = batch_size
        self._cache = (self._steps, arguments)
        return arguments

    def current(self, model):
        with _explained():
            results, self._test_function = internals.evaluate_with(
                model,
                self._test_function,
                **self._evaluated_data(),
                verbose=0,
                return_dict=True,
            )
        return _evaluated(results, self.monitor)


@contextlib.contextmanager
def _explained():
    """Says what the callback's validation_data takes, where the model
    cannot take it."""
    try:
        yield
    except (ValueError, TypeError) as e:
        error = ValueError if isinstance(e, ValueError) else TypeError
        raise error(
            "Evaluating the model on the callback's validation_data failed "
            f"({type(e).__name__}: {e}). validation_data takes what fit's "
            "validation_data takes: (x_val, y_val), (x_val, y_val, "
            "sample_weight) or a dataset of such batches, shaped as the "
            "model's inputs and outputs."
        ) from e


def _arrays(x) -> list | None:
    """The arrays of `x` (one, or a list, tuple or dict of them); None if it
    is not made of arrays."""
    parts = list(x.values()) if isinstance(x, dict) else x
    parts = parts if isinstance(parts, list | tuple) else [parts]
    arrays = bool(parts) and all(hasattr(p, "shape") for p in parts)
    return parts if arrays else None


def _num_batches(x, batch_size: int) -> int | float | None:
    """The batches of `x` (arrays batched by `batch_size`), as Keras counts
    them; `math.inf` if infinite, None if unknown.

    Raises:
        ValueError: If `x` is a `PyDataset` whose number of batches cannot be
            read, which Keras needs even with `steps`.
    """
    # A dataset of a framework means that framework is imported already.
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(x, tf.data.Dataset):
        cardinality = int(x.cardinality())
        if cardinality == tf.data.INFINITE_CARDINALITY:
            return math.inf
        return None if cardinality == tf.data.UNKNOWN_CARDINALITY else cardinality
    if isinstance(x, PyDataset):
        try:
            n = x.num_batches
        except (NotImplementedError, TypeError, ValueError) as e:
            raise ValueError(
                f"The callback's validation_data, a {type(x).__name__}, has no "
                f"number of batches (num_batches raised {type(e).__name__}: "
                f"{e}), which Keras reads to iterate it. Give it a num_batches "
                "property (or __len__) returning its number of batches, or "
                "None if it is infinite, and then pass validation_steps=."
            ) from e
        return math.inf if n is None else n
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.utils.data.DataLoader):
        try:
            return len(x)
        except TypeError:  # an iterable dataset without a length
            return None
    arrays = _arrays(x)
    if arrays is None or not arrays[0].shape or arrays[0].shape[0] is None:
        return None
    return math.ceil(int(arrays[0].shape[0]) / batch_size)


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
