"""Every use of a Keras or backend internal, in one place.

Keras has no public way to do what these functions do. Each says what it
stands in for, and `tests/test_internals.py` fails with a message naming the
function when a Keras release removes what it relies on. The guesses about a
running `fit` fail open: when they cannot tell, they answer None (or an empty
list), and the callers decide later, from what `fit` hands them.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os

import keras

# --- The running `fit` -------------------------------------------------------
# Keras does not tell callbacks whether `fit` validates, with what batch size,
# nor which other callbacks run beside them. All of it sits in `fit`'s own
# frame: by the time `on_train_begin` runs, `validation_split` has become
# `validation_data`, and `callbacks` is the `CallbackList`, on every backend.
# A callback looks once a fit (`fit_locals`) and asks the functions below
# about that snapshot.


def fit_locals(model) -> dict | None:
    """The local variables of the `fit` call training `model`, walking the
    stack to its frame.

    Stands in for: a public record of `fit`'s arguments (none exists).

    Returns:
        `fit`'s locals, or None when no such frame is on the stack (a custom
        training loop calling the hooks itself, or a Keras whose `fit` has
        another name).
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
                return dict(frame.f_locals)
            frame = frame.f_back
        return None
    finally:
        del frame


def fit_has_validation(found: dict | None) -> bool | None:
    """Whether the `fit` of `found` (its locals) validates; None when that
    cannot be known."""
    if found is None or "validation_data" not in found:
        return None
    return found["validation_data"] is not None


def fit_callbacks(found: dict | None) -> list:
    """The callbacks of the `fit` of `found`, in order (empty when unknown)."""
    found = found or {}
    return list(getattr(found.get("callbacks"), "callbacks", None) or [])


def fit_batch_size(found: dict | None) -> int | None:
    """The batch size of the `fit` of `found` (None when unknown or not given)."""
    return (found or {}).get("batch_size")


def fit_validation(found: dict | None) -> dict | None:
    """The arguments `fit` evaluates its validation data with.

    Stands in for: re-evaluating on `fit`'s validation data outside the epoch
    end that `fit` validates at (the cached iterator exists only there).

    Returns:
        Keyword arguments for `model.evaluate` that reproduce `fit`'s own
        validation, or None when `fit` has none or they cannot be found.
    """
    found = found or {}
    if found.get("validation_data") is None or "val_x" not in found:
        return None
    return {
        "x": found["val_x"],
        "y": found.get("val_y"),
        "sample_weight": found.get("val_sample_weight"),
        "batch_size": found.get("validation_batch_size") or found.get("batch_size"),
        "steps": found.get("validation_steps"),
    }


def fit_initial_epoch(model, found: dict | None) -> int:
    """The epoch the running `fit` (of locals `found`) started at.

    Stands in for: a public record of it. `BackupAndRestore` sets
    `model._initial_epoch`, which `fit` prefers to its `initial_epoch`.
    """
    restored = getattr(model, "_initial_epoch", None)
    if restored is not None:
        return restored
    return (found or {}).get("initial_epoch", 0)


# --- A callback's model -------------------------------------------------------
# On JAX, `fit` keeps the training state (variables, optimizer) apart from the
# model's variables, and `Callback.model` writes it into them each time it is
# read: a copy of every variable.


def unsynced_model(callback):
    """The model `callback` is attached to, as it is (no state written back).

    Stands in for: `Callback.model` without its side effect, where only the
    model's identity or its distribution matters; `Callback._model` is the
    attribute behind the property.
    """
    return callback._model


def sync_model(callback) -> None:
    """Makes the model's variables hold the running `fit`'s current state.

    Stands in for: a public sync. Reading `Callback.model` does it on JAX
    (`Model.jax_state_sync`); elsewhere the variables hold the state anyway.
    """
    _ = callback.model


def take_train_batch_end(callback, function) -> None:
    """Makes `function` the `on_train_batch_end` of this `callback` only.

    Stands in for: a public way to ask for batch hooks per instance. Keras
    dispatches the batch hooks on other threads while every callback's are
    the base class' no-ops (marked by `keras.src.utils.python_utils.default`);
    a class that defined the hook would lose that for all its instances,
    epoch-level ones included. An instance attribute leaves the class' no-op
    marked, and makes this instance's hook run in order, in `fit`'s thread.
    """
    callback.on_train_batch_end = function


# --- Keras' BackupAndRestore --------------------------------------------------


def backup_position(callback) -> dict | None:
    """Where `callback` (a `BackupAndRestore`) last backed the run up.

    Stands in for: a public record of it. Keras writes `{"epoch": e,
    "batch": b}` beside the weights: the epoch the rerun starts at and, with
    an int `save_freq`, the 0-based batch after which the weights were saved.

    Returns:
        The record, or None when there is none (a fresh run).
    """
    path = callback._training_metadata_path
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def keep_backup_epoch(callback, epoch: int) -> None:
    """Makes `callback` (a `BackupAndRestore`) record `epoch` until it ends.

    Stands in for: Keras doing it itself. Keras 3.15 sets the epoch it
    records only at an epoch end, so a backup every N batches made before
    the first epoch end of a resumed `fit` records epoch 0, and the next
    rerun would train from epoch 0 again.
    """
    if callback._current_epoch < epoch:
        callback._current_epoch = epoch


def run_first_at_epoch_end(callback, function) -> None:
    """Makes `callback.on_epoch_end` call `function(epoch)` before its own work.

    Stands in for: a way to act between the end of an epoch's training and a
    callback placed earlier in `fit`'s list (Keras calls `on_epoch_end` in
    list order). Undone by `undo_first_at_epoch_end`.
    """
    undo_first_at_epoch_end(callback)
    own = callback.on_epoch_end

    def on_epoch_end(epoch, logs=None):
        function(epoch)
        return own(epoch, logs)

    on_epoch_end.keras_aswa_wrapped = own
    callback.on_epoch_end = on_epoch_end


def undo_first_at_epoch_end(callback) -> None:
    """Gives `callback` its own `on_epoch_end` back (see above)."""
    if hasattr(callback.on_epoch_end, "keras_aswa_wrapped"):
        del callback.on_epoch_end  # the instance attribute: the class' method again


def fit_validates_at(found: dict | None, epoch: int) -> bool:
    """Whether the `fit` of `found` validates at the end of `epoch` (0-based).

    Stands in for: `Trainer._should_eval` with `fit`'s `validation_freq`.
    """
    found = found or {}
    if found.get("validation_data") is None:
        return False
    freq = found.get("validation_freq", 1)
    if isinstance(freq, int):
        return (epoch + 1) % freq == 0
    return epoch + 1 in freq


def evaluate_with(model, test_function, **kwargs) -> tuple:
    """`model.evaluate(**kwargs)` run with `test_function` as its compiled
    step (None: Keras compiles one), `fit`'s own put back afterwards.

    Stands in for: a public way to evaluate on other data beside `fit`
    without sharing its compiled test function (`Trainer.test_function`):
    sharing it would retrace it for each data's shapes on TensorFlow, and
    drop the one `fit` validates with.

    Returns:
        `(results, the test function it ran)`, to pass in next time.
    """
    fit_function = model.test_function
    model.test_function = test_function
    try:
        results = model.evaluate(**kwargs)
        return results, model.test_function
    finally:
        model.test_function = fit_function


def evaluate_fit_validation(model) -> dict | None:
    """Evaluates the model on `fit`'s validation data, through `fit`'s cache.

    Stands in for: a public `evaluate` on the validation iterator `fit` made
    for this epoch, reusing its data pipeline and compiled test function.

    Returns:
        The results as a dict, or None when `fit` keeps no such iterator (no
        validation has run yet in this `fit`).
    """
    if getattr(model, "_eval_epoch_iterator", None) is None:
        return None
    return model.evaluate(verbose=0, return_dict=True, _use_cached_eval_dataset=True)


# --- Models and layers -------------------------------------------------------


def flatten_layers(model) -> list:
    """The model and every layer nested in it, once each.

    Stands in for: a public recursive layer iterator (`model.layers` is one
    level deep).
    """
    return list(model._flatten_layers(include_self=True, recursive=True))


def call_has_training_arg(model) -> bool:
    """Whether the model's `call` takes `training` (as Keras' trainers ask)."""
    return getattr(model, "_call_has_training_arg", True)


def created_non_trainable(layer) -> list:
    """The variables `layer` itself created with `trainable=False`.

    Stands in for: a public view of what a layer made as state (such as
    BatchNormalization's moving statistics), apart from what it made
    trainable and was frozen later (`variable.trainable = False`, or LoRA's
    base kernel), and apart from its sublayers' variables.
    """
    return list(layer._non_trainable_variables)


_LORA = (
    ("_kernel", "lora_kernel_a", "lora_kernel_b"),  # Dense, EinsumDense, Conv
    ("_embeddings", "lora_embeddings_a", "lora_embeddings_b"),  # Embedding
)


def lora_variables(layer) -> tuple | None:
    """`(base, a, b)` of a layer with LoRA enabled, else None.

    Stands in for: a public handle on LoRA's frozen base (Keras keeps it as
    `_kernel` or `_embeddings`; `kernel` is the merged value).
    """
    if not getattr(layer, "lora_enabled", False):
        return None
    for names in _LORA:
        if hasattr(layer, names[1]):
            return tuple(getattr(layer, name) for name in names)
    return None


def metric_direction(metric) -> str | None:
    """`"up"` or `"down"` for a Keras metric that knows it, else None.

    Stands in for: a public direction on metrics (Keras' own callbacks read
    the same attribute).
    """
    direction = getattr(metric, "_direction", None)
    return direction if direction in ("up", "down") else None


# --- Data -------------------------------------------------------------------


@contextlib.contextmanager
def adapted_batches(
    data, batch_size: int | None = None, y=None, sample_weight=None, steps=None
):
    """The batches `fit` would draw from `data` (with `y` and `sample_weight`
    where given apart), unshuffled, as the tensors of the backend (already on
    its device), for one pass.

    Stands in for: a public batch iterator over every format `fit` accepts:
    Keras' `DataAdapter` (`get_data_adapter`, its per-backend iterators and
    its epoch hooks).

    Yields:
        An iterator of the batches, as Keras packs them.
    """
    from keras.src.trainers.data_adapters import get_data_adapter

    adapter = get_data_adapter(
        data,
        y=y,
        sample_weight=sample_weight,
        batch_size=batch_size,
        steps_per_epoch=steps,
        shuffle=False,
    )
    adapter.on_epoch_begin()
    try:
        backend = keras.backend.backend()
        if backend == "tensorflow":
            yield iter(adapter.get_tf_dataset())
        elif backend == "jax":
            yield iter(adapter.get_jax_iterator())
        elif backend == "torch":
            yield iter(adapter.get_torch_dataloader())
        else:
            yield iter(adapter.get_numpy_iterator())
    finally:
        adapter.on_epoch_end()


def is_data_source(data) -> bool:
    """Whether `data` is a dataset object Keras adapts as a whole."""
    from keras.src.trainers.data_adapters import (
        is_grain_dataset,
        is_tf_dataset,
        is_torch_dataloader,
    )
    from keras.src.trainers.data_adapters.data_adapter import DataAdapter

    return (
        isinstance(data, (keras.utils.PyDataset, DataAdapter))
        or is_tf_dataset(data)
        or is_torch_dataloader(data)
        or is_grain_dataset(data)
    )


# --- Backends ---------------------------------------------------------------


def variable_storage(variable):
    """The backend tensor a Keras variable holds, without per-call checks.

    Stands in for: `variable.value`, which also handles a `StatelessScope`
    and autocasting (never active where averaging runs) and costs more than a
    small variable's arithmetic.
    """
    return variable._value


def assign_unchecked(variable, value) -> None:
    """`variable.assign(value)` for a value already of its dtype and shape.

    Stands in for: `assign` without its conversion and checks (JAX); keeps
    the variable's layout.
    """
    variable._direct_assign(value)


def torch_dtype(name: str):
    """The torch dtype of a Keras dtype name.

    Stands in for: a public mapping (Keras keeps it in its torch backend).
    """
    from keras.src.backend.torch.core import to_torch_dtype

    return to_torch_dtype(name)


def torch_swap_storage(parameters: list, values: list) -> list:
    """Makes each torch parameter use its value's storage; returns the old tensors.

    Stands in for: a by-reference assign (`Variable.assign` copies). The
    parameter objects, which the optimizer and the model hold, stay the same.
    """
    previous = []
    for parameter, value in zip(parameters, values, strict=True):
        previous.append(parameter.data)
        parameter.data = value
    return previous


# --- Evaluating beside `fit` ---------------------------------------------------


@contextlib.contextmanager
def training_state_kept(model):
    """Puts back, after the block, what an evaluation changes of `fit`'s state.

    Stands in for: an `evaluate` that leaves a running `fit` alone. It resets
    the compiled metrics that `fit` accumulates over an epoch (its `loss`
    and `accuracy` logs would change), and on JAX it empties the trainer's
    state (`model._jax_state`), from which `fit` restores the variables
    after an epoch whose length Keras does not know: without it they stay
    purged.
    """
    from keras import ops

    metrics = list(model.metrics_variables)
    kept = [ops.copy(v.value) for v in metrics]
    jax = keras.backend.backend() == "jax"
    had_state = jax and getattr(model, "_jax_state", None) is not None
    try:
        yield
    finally:
        for v, value in zip(metrics, kept, strict=True):
            v.assign(value)
        if had_state and getattr(model, "_jax_state", None) is None:
            optimizer = getattr(model, "optimizer", None)
            model._jax_state = {
                "trainable_variables": [v.value for v in model.trainable_variables],
                "non_trainable_variables": [
                    v.value for v in model.non_trainable_variables
                ],
                "optimizer_variables": [v.value for v in optimizer.variables]
                if optimizer is not None
                else [],
                "metrics_variables": [v.value for v in metrics],
            }


def set_monitor_direction(callback) -> None:
    """Sets the direction a `MonitorCallback` (e.g. `ModelCheckpoint`)
    compares its monitor in, now rather than at its first epoch end.

    Stands in for: Keras doing it before the first batch. Keras 3.15's
    `ModelCheckpoint` sets it (`_set_monitor_op`) at an epoch end only, so a
    `save_freq=N, save_best_only=True` checkpoint fails with a bare
    `TypeError` at its first save within the first epoch.
    """
    if getattr(callback, "monitor_op", None) is None:
        callback._set_monitor_op()


# --- torch's fused list operations --------------------------------------------
# (issue 31) torch's one-call-per-list kernels are private (`torch._foreach_*`)
# yet what `torch.optim` and `torch.optim.swa_utils` themselves run; the
# averaging kernels on torch (`keras_aswa.kernels.TORCH`) call them only here.


def torch_lerp_all(starts: list, ends: list, weight: float, in_place=False):
    """`start + weight (end - start)` of each pair of torch tensors, one call.

    Stands in for: a public fused list lerp (`torch._foreach_lerp`, the
    kernel `torch.optim.swa_utils` averages with).

    Args:
        starts: Tensors (the averages).
        ends: Tensors of the same shapes and dtypes.
        weight: A Python float.
        in_place: Write the results into `starts` (and return them).

    Returns:
        The results, a list.
    """
    import torch

    with torch.no_grad():
        if in_place:
            torch._foreach_lerp_(starts, ends, weight)
            return starts
        return list(torch._foreach_lerp(starts, ends, weight))


def torch_copy_all(into: list, values: list) -> None:
    """Copies each of `values` into the torch tensor of `into`, one call.

    Stands in for: a public fused list copy (`torch._foreach_copy_`).
    """
    import torch

    with torch.no_grad():
        torch._foreach_copy_(into, values)


# --- The end of fit and the resume of a finished run (keras_aswa.resume) -----


def wrap_train_end(callback, before, after) -> None:
    """Makes `callback.on_train_end` (Keras' `BackupAndRestore`, which
    deletes its backup there) call `before()` first and `after()` last.

    Stands in for: a way to order the end of two callbacks whatever their
    places in `fit`'s list: the averaging state is written finished before
    Keras deletes its backup, and deleted after. Undone by `undo_train_end`
    (and by the wrapper itself when it runs).
    """
    undo_train_end(callback)
    own = callback.on_train_end

    def on_train_end(logs=None):
        undo_train_end(callback)
        before()
        own(logs)
        after()

    on_train_end.keras_aswa_wrapped = own
    callback.on_train_end = on_train_end


def undo_train_end(callback) -> None:
    """Gives `callback` its own `on_train_end` back (see above)."""
    if hasattr(callback.on_train_end, "keras_aswa_wrapped"):
        del callback.on_train_end  # the instance attribute: the class' method


def skip_epochs(model, epochs: int | None) -> None:
    """Makes the `fit` that is beginning train no epoch (`epochs`: its
    number of epochs), or (None) undoes it once that fit ended.

    Stands in for: a public way to end `fit` before its first epoch. Keras
    starts at `model._initial_epoch` where set (BackupAndRestore sets it in
    its `on_train_begin`), read after every callback's `on_train_begin`.
    """
    if epochs is not None:
        model._keras_aswa_skipped = getattr(model, "_initial_epoch", None)
        model._initial_epoch = epochs
    elif hasattr(model, "_keras_aswa_skipped"):
        model._initial_epoch = model._keras_aswa_skipped
        del model._keras_aswa_skipped


def spans_processes(variables) -> bool:
    """Whether any of `variables` is sharded over devices of several
    processes (JAX: a `ModelParallel` layout across processes), so that no
    process can read it whole."""
    for variable in variables:
        value = getattr(variable, "value", None)
        if getattr(value, "is_fully_addressable", True) is False and not getattr(
            value, "is_fully_replicated", False
        ):  # replicated (DataParallel): every process holds it whole
            return True
    return False
