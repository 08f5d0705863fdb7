"""Recompute BatchNormalization statistics for a set of weights.

A weight average (SWA, ASWA) is a point the network never trained at: the
moving means and variances its BatchNormalization layers carry belong to the
trajectory, not to the average. `update_batchnorm` does what
`torch.optim.swa_utils.update_bn` does in PyTorch: one training-mode pass over
the data, and each BatchNormalization layer's moving statistics set to the
equal-weight average of the per-batch statistics it computed.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import warnings
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import keras
from keras import ops

from keras_aswa import internals
from keras_aswa.averaging import accumulation_dtype
from keras_aswa.isolation import rng_preserved

__all__ = ["update_batchnorm"]

# Fed to each recomputed layer as its moving variance before every batch. A
# layer that runs hands back its batch variance (>= 0, up to rounding, and far
# from this); one that does not run hands this back unchanged, which is how a
# layer the forward pass skipped is told apart from one that saw the batch.
# float16's largest value: finite in every float dtype, and compared after the
# same cast it was made with.
_NOT_CALLED = -65504.0


def update_batchnorm(
    model: keras.layers.Layer,
    data: Any,
    steps: int | None = None,
    *,
    batch_size: int = 32,
) -> None:
    """Recompute the moving statistics of every BatchNormalization layer.

    Runs `model` in training mode over `data` and sets each
    `keras.layers.BatchNormalization` layer's `moving_mean` and
    `moving_variance`, nested models and layers included, to the equal-weight
    average over the batches of the batch mean and the (biased) batch variance
    the layer computed: what `torch.optim.swa_utils.update_bn` does. Each
    layer sees its inputs as a training step would produce them: earlier
    BatchNormalization layers normalise with their batch statistics, Dropout
    drops. Call it after writing averaged weights into a model and before
    evaluating or saving it.

    Every other variable of the model (weights, seed-generator states,
    metrics) and each layer's `momentum` are left exactly as they were, also
    when the function raises. On the torch backend the global torch random
    generator, which unseeded Dropout draws from, is restored too. Every
    batch weighs the same, a smaller last batch included, as in PyTorch.

    Layers with `trainable=False` run in inference mode in Keras 3: they
    normalise with their moving statistics and keep them; they are frozen, so
    their statistics are left as they are. A layer the forward pass never
    reaches, or calls with `training=False`, keeps its statistics, with a
    warning. A layer called several times in one forward pass (shared) gets
    the statistics of its last call in each batch. With `renorm=True`,
    `moving_stddev` is set to `sqrt(moving_variance + epsilon)` to agree with
    the new variance, and the renorm statistics are left as they were.

    Args:
        model: A built Keras model or layer.
        data: What `model.fit` accepts as `x`: a NumPy array, a dict or list
            of arrays (multi-input), a tuple `(x,)`, `(x, y)` or
            `(x, y, sample_weight)` of those, a `tf.data.Dataset`, a
            `keras.utils.PyDataset`, a `torch.utils.data.DataLoader`, or a
            Python generator or other iterator of batches. Batches that are
            tuples are read as `(x, y[, sample_weight])`, the way Keras reads
            them; only `x` is used. A list of arrays is data (multi-input), not
            a list of batches: pass `iter(batches)` for that. An infinite
            source needs `steps`; without it this never returns.
        steps: The most batches to use; None uses all of `data`. A generator
            may be read up to two batches ahead, as in `fit`.
        batch_size: The batch size for array data; ignored for the others.

    Returns:
        None. The model is updated in place.

    Raises:
        ValueError: If `data` yields no batch, if `steps` is not a positive
            integer, or if the model is not built.

    Example:

    ```python
    from keras_aswa.batchnorm import update_batchnorm

    model.set_weights(averaged_weights)
    update_batchnorm(model, x_train, batch_size=128)
    model.evaluate(x_test, y_test)
    ```
    """
    if steps is not None and (
        isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1
    ):
        raise ValueError(f"`steps` must be a positive integer or None, got {steps!r}.")
    layers = [
        layer
        for layer in internals.flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not layers:
        warnings.warn(
            f"Model {model.name!r} has no BatchNormalization layer: nothing to update.",
            stacklevel=2,
        )
        return None
    if not model.built or any(not layer.built for layer in layers):
        raise ValueError(
            f"Model {model.name!r} is not built: call it on data or build it "
            "before updating its BatchNormalization statistics."
        )
    # Frozen layers run in inference mode and keep their statistics.
    layers = [layer for layer in layers if layer.trainable]
    if not layers:
        warnings.warn(
            f"Every BatchNormalization layer of model {model.name!r} is frozen "
            "(trainable=False): nothing to update.",
            stacklevel=2,
        )
        return None

    momenta = [layer.momentum for layer in layers]
    try:
        # Momentum 0 makes the moving statistics a training-mode call writes
        # the batch statistics themselves: read them off the returned state.
        for layer in layers:
            layer.momentum = 0.0
        # Unseeded Dropout and the DataLoader on torch draw from the global
        # generator.
        with (
            rng_preserved(),
            _no_autograd(),
            internals.adapted_batches(_as_fit_x(data), batch_size) as batches,
        ):
            inputs = (keras.utils.unpack_x_y_sample_weight(b)[0] for b in batches)
            if steps is not None:
                inputs = itertools.islice(inputs, int(steps))
            sums, counts, seen = _accumulate(model, layers, inputs)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum

    if seen == 0:
        raise ValueError(
            "`data` yielded no batch: BatchNormalization statistics need at least one."
        )
    # The only host reads: one scalar a layer, at the end. (int(), not
    # convert_to_numpy: np.array() of a torch tensor warns under NumPy 2.)
    counts = [int(count) for count in counts]
    skipped = []
    for layer, (mean_sum, variance_sum), count in zip(
        layers, sums, counts, strict=True
    ):
        if count == 0:
            skipped.append(layer.name)
            continue
        mean = ops.divide(mean_sum, float(count))
        variance = ops.divide(variance_sum, float(count))
        layer.moving_mean.assign(ops.cast(mean, layer.moving_mean.dtype))
        layer.moving_variance.assign(ops.cast(variance, layer.moving_variance.dtype))
        if layer.renorm:
            # Renorm derives the moving variance from moving_stddev at the next
            # training step: keep the two in agreement.
            stddev = ops.sqrt(ops.add(variance, layer.epsilon))
            layer.moving_stddev.assign(ops.cast(stddev, layer.moving_stddev.dtype))
    if skipped:
        warnings.warn(
            f"BatchNormalization layers {skipped} did not run in training mode "
            "in the forward pass over `data` (never called, or called with "
            "training=False): their statistics are left as they were.",
            stacklevel=2,
        )
    return None


def _as_fit_x(data: Any):
    """`data` as `fit` takes an `x` (Keras' adapters take every such format)."""
    if isinstance(data, tuple):
        # (x, y[, sample_weight]) of arrays: only x is needed.
        data, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    elif isinstance(data, Iterator) or (
        isinstance(data, Iterable)
        and not isinstance(data, (list, dict, str, bytes))
        and not hasattr(data, "shape")
        and not internals.is_data_source(data)
    ):
        # Keras takes generators of tuples only: wrap any other iterator, and
        # pack a bare x as (x,) so that it is not mistaken for (x, y).
        data = (batch if isinstance(batch, tuple) else (batch,) for batch in data)
    return data


def _no_autograd():
    if keras.backend.backend() != "torch":
        return contextlib.nullcontext()
    import torch

    return torch.no_grad()


def _compile(function):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf

        # reduce_retracing: a smaller last batch does not cost a second graph.
        return tf.function(function, reduce_retracing=True)
    return function


# One compiled step per model and set of layers: ASWA recomputes statistics
# every epoch, and tracing the forward pass anew each time costs seconds.
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _step_for(model, layers):
    key = tuple(id(layer) for layer in layers)
    cached = _STEPS.get(model)
    if cached is None or cached[0] != key:
        cached = (key, _compile(_make_step(model, layers)))
        _STEPS[model] = cached
    return cached[1]


def _make_step(model, layers):
    """The per-batch function: batch statistics added to running sums."""
    non_trainable = list(model.non_trainable_variables)
    # KerasVariable overloads ==: look variables up by identity.
    position = {id(variable): i for i, variable in enumerate(non_trainable)}
    mean_at = [position[id(layer.moving_mean)] for layer in layers]
    variance_at = [position[id(layer.moving_variance)] for layer in layers]
    stddev_at = [position[id(layer.moving_stddev)] for layer in layers if layer.renorm]
    shapes = [tuple(layer.moving_mean.shape) for layer in layers]
    dtypes = [layer.moving_variance.dtype for layer in layers]
    # As Keras' own trainers do: a subclassed call may not take `training`.
    takes_training = internals.call_has_training_arg(model)
    kwargs = {"training": True} if takes_training else {}
    # Weakly: the cache holding this step must not keep the model alive.
    model_ref = weakref.ref(model)

    def step(trainable_values, state, sums, counts, x):
        state = list(state)
        for at, shape, dtype in zip(variance_at, shapes, dtypes, strict=True):
            state[at] = ops.full(shape, _NOT_CALLED, dtype=dtype)
        # Not read in training mode; zeros keep NaN or inf in the old
        # statistics (momentum * moving) out of the result.
        for at in mean_at + stddev_at:
            state[at] = ops.zeros_like(state[at])
        _, state = model_ref().stateless_call(trainable_values, state, x, **kwargs)
        new_sums, new_counts = [], []
        for i, (mean_sum, variance_sum) in enumerate(sums):
            mean, variance = state[mean_at[i]], state[variance_at[i]]
            not_called = ops.cast(_NOT_CALLED, variance.dtype)
            called = ops.any(ops.not_equal(variance, not_called))
            mean = ops.add(mean_sum, ops.cast(mean, mean_sum.dtype))
            variance = ops.add(variance_sum, ops.cast(variance, variance_sum.dtype))
            new_sums.append(
                (
                    ops.where(called, mean, mean_sum),
                    ops.where(called, variance, variance_sum),
                )
            )
            new_counts.append(ops.add(counts[i], ops.cast(called, "int32")))
        # The rest of the state (seed generators, renorm statistics) moves on
        # from batch to batch as in training; it is never written back.
        return state, new_sums, new_counts

    return step


def _accumulate(model, layers, batches):
    """Sum each layer's batch statistics over `batches`.

    Returns:
        `(sums, counts, seen)`: per layer a `(mean_sum, variance_sum)` pair and
        a scalar tensor counting the batches it was called in, and the number
        of batches.
    """
    step = _step_for(model, layers)
    # Plain tensors, not variables: a read (TF), detached from autograd (torch).
    trainable_values = [ops.stop_gradient(v.value) for v in model.trainable_variables]
    state = [ops.stop_gradient(v.value) for v in model.non_trainable_variables]
    sums = [
        (
            ops.zeros(
                layer.moving_mean.shape,
                dtype=accumulation_dtype(layer.moving_mean.dtype),
            ),
            ops.zeros(
                layer.moving_variance.shape,
                dtype=accumulation_dtype(layer.moving_variance.dtype),
            ),
        )
        for layer in layers
    ]
    counts = [ops.zeros((), dtype="int32") for _ in layers]
    seen = 0
    for x in batches:
        if keras.backend.backend() == "torch":
            # Eager torch: the model's own __call__, which would move the
            # inputs to its device, is bypassed by stateless_call.
            x = keras.tree.map_structure(ops.convert_to_tensor, x)
        state, sums, counts = step(trainable_values, state, sums, counts, x)
        seen += 1
    return sums, counts, seen
