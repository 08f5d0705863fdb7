"""A check's evaluation: weight sets scored as `evaluate` would, untouched.

A step-level check scores two sets of weights, the running model's and the
provisional ensemble's, on the same K validation batches. `model.evaluate`
would cost two passes through Keras' evaluation loop (a data iterator, the
callbacks, a metrics reset) with the provisional weights written into the
model, and it resets the compiled metrics that `fit` is accumulating (its
`loss` and `accuracy` logs would change). `Evaluation` instead:

- prepares the K batches once per fit, as backend tensors on the device
  (streamed from the data at each check where they exceed `_KEPT_BYTES`);
- scores every weight set on a batch in one compiled call of the model's
  own `test_step` (JAX: its stateless `test_step(state, data)` under one
  `jit`; TensorFlow: a `tf.function`; torch: a `no_grad` call), run on the
  weights and on fresh metric variables handed in as values, in a
  `keras.StatelessScope` on TensorFlow and torch: neither the model's
  variables nor its metrics are written;
- returns what `evaluate(return_dict=True)` returns: the loss (with the
  model's regularisation losses) and every compiled metric, accumulated over
  the batches as `evaluate` accumulates them, in inference mode.

Example:

```python
evaluation = Evaluation(model, batches)        # batches: backend tensors
running = [v.value for v in evaluation.variables]
logs = evaluation([running, provisional])      # one dict per weight set
logs[0]["loss"]
```
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
from keras import backend, ops

from keras_aswa import internals

# Prepared batches kept on the device up to this many bytes; beyond, they
# are drawn from the data again at each check.
_KEPT_BYTES = 256 * 2**20


def available(model) -> str | None:
    """Why `Evaluation` cannot score `model`, or None where it can.

    It needs a compiled model whose weights are not distributed (with a
    `keras.distribution` (JAX) or a `tf.distribute` strategy, batches must be
    sharded as `fit` shards them, which `evaluate` does) and that takes its
    batches as they are (a keras-hub task with a `preprocessor` preprocesses
    them in its `evaluate`).
    """
    if getattr(model, "compiled", False) is not True:
        return "the model is not compiled"
    if getattr(model, "preprocessor", None) is not None:
        # A keras-hub task preprocesses raw data (e.g. strings) inside its
        # `evaluate`, which the check then keeps.
        return "the model preprocesses its data in evaluate"
    if backend.backend() == "jax" and keras.distribution.distribution() is not None:
        return "a keras.distribution is set"
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.distribute.has_strategy():
            return "a tf.distribute strategy is active"
    if backend.backend() not in ("tensorflow", "jax", "torch"):
        return f"the {backend.backend()} backend"
    return None


class Batches:
    """The validation batches a check scores on, prepared once.

    Args:
        arguments: `model.evaluate`'s data arguments (`x`, and `y`,
            `sample_weight`, `batch_size`, `steps` where given).
    """

    def __init__(self, arguments: dict):
        self._arguments = dict(arguments)
        self._kept: list | None = None
        first = []
        nbytes = 0
        for batch in self._drawn():
            nbytes += sum(
                int(np.prod(ops.shape(t)))
                * np.dtype(backend.standardize_dtype(t.dtype)).itemsize
                for t in keras.tree.flatten(batch)
            )
            if nbytes > _KEPT_BYTES:
                first = None
                break
            first.append(batch)
        self._kept = first
        if self._kept is not None and not self._kept:
            raise ValueError("The callback's validation_data yielded no batch.")

    def _drawn(self):
        arguments = dict(self._arguments)
        steps = arguments.pop("steps", None)
        with internals.adapted_batches(
            arguments.pop("x"),
            y=arguments.pop("y", None),
            sample_weight=arguments.pop("sample_weight", None),
            batch_size=arguments.pop("batch_size", None),
            steps=steps,
        ) as batches:
            for i, batch in enumerate(batches):
                if steps is not None and i >= steps:
                    break
                yield keras.tree.map_structure(
                    lambda t: t if t is None else ops.convert_to_tensor(t), batch
                )

    def __iter__(self):
        return iter(self._kept) if self._kept is not None else self._drawn()


class Evaluation:
    """Scores weight sets of `model` on `batches`, as `evaluate` would.

    Args:
        model: A compiled, built model (see `available`).
        batches: The batches to score on, an iterable of what the model's
            `test_step` takes (e.g. a `Batches`).

    Attributes:
        variables: The model's variables a weight set gives values for, in
            order: its trainable, then its non-trainable variables.
    """

    def __init__(self, model, batches):
        self._model = model
        self._batches = batches
        self._trainable = len(model.trainable_variables)
        self.variables = list(model.trainable_variables) + list(
            model.non_trainable_variables
        )
        self._metrics = list(model.metrics_variables)
        self._positions = {id(v): i for i, v in enumerate(self.variables)}
        self._fresh = _fresh_metric_values(model, self._metrics)
        self._step = _compiled_step(self)

    def replaced(self, weights: list, variables: list, values: list) -> list:
        """A copy of the weight set `weights` with `values` for `variables`
        (None: keeps that variable's entry)."""
        index = self._positions
        out = list(weights)
        for v, value in zip(variables, values, strict=True):
            if value is not None:
                out[index[id(v)]] = value
        return out

    def running(self) -> list:
        """The model's current values, as a weight set."""
        return [ops.stop_gradient(v.value) for v in self.variables]

    def __call__(self, weight_sets: list[list]) -> list[dict[str, float]]:
        """The results `evaluate(return_dict=True)` would give for each set
        of weights (values of `self.variables`, in order)."""
        states = [list(self._fresh) for _ in weight_sets]
        logs = None
        with _no_grad():
            for batch in self._batches:
                states, logs = self._step(weight_sets, states, batch)
        return [
            {k: float(ops.convert_to_numpy(v)) for k, v in log.items()} for log in logs
        ]

    # What `_compiled_step` compiles: one batch, every weight set.

    def _jax_step(self, weight_sets, states, batch):
        model, n = self._model, self._trainable
        new_states, logs = [], []
        for values, metrics in zip(weight_sets, states, strict=True):
            log, (_, _, metrics) = model.test_step(
                (values[:n], values[n:], metrics), batch
            )
            new_states.append(metrics)
            logs.append(log)
        return new_states, logs

    def _scoped_step(self, weight_sets, states, batch):
        new_states, logs = [], []
        for values, metrics in zip(weight_sets, states, strict=True):
            mapping = list(zip(self.variables, values, strict=True)) + list(
                zip(self._metrics, metrics, strict=True)
            )
            with keras.StatelessScope(state_mapping=mapping) as scope:
                logs.append(dict(self._model.test_step(batch)))
            new_states.append([scope.get_current_value(v) for v in self._metrics])
        return new_states, logs


def _fresh_metric_values(model, metrics_variables: list) -> list:
    """The values the metrics' variables take when reset, computed without
    resetting them."""
    with keras.StatelessScope() as scope:
        for metric in model.metrics:
            metric.reset_state()
    values = []
    for v in metrics_variables:
        value = scope.get_current_value(v)
        values.append(ops.copy(v.value) if value is None else value)
    return values


def _compiled_step(evaluation: Evaluation):
    name = backend.backend()
    if name == "jax":
        import jax

        return jax.jit(evaluation._jax_step)
    if name == "tensorflow":
        import tensorflow as tf

        jit = getattr(evaluation._model, "jit_compile", False) is True
        return tf.function(evaluation._scoped_step, jit_compile=jit)
    return evaluation._scoped_step


def _no_grad():
    if backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()
