"""Each Keras or backend internal keras_aswa relies on is still there.

A canary per internal (or per group read from the same Keras object): its
`check_*` function runs the Keras code path the internal stands in for and
raises AssertionError, with a message naming the `keras_aswa.internals`
function and what it relies on, when that path changed. No canary skips.
Each has a mutation test beside it: the Keras attribute it relies on renamed
or stubbed inside the test, the check must fail, which proves it can.
"""

import contextlib
import functools
import inspect
import threading
import types

import keras
import numpy as np
import pytest
import torch
from scenarios import compiled_model, regression_data, regression_model

from keras_aswa import internals


def gone(function, why):
    return (
        f"keras_aswa.internals.{function} no longer finds what it relies on in "
        f"Keras {keras.__version__}: {why}. Update it (see its docstring)."
    )


@contextlib.contextmanager
def relying_on(function, why):
    """Turns an error raised by the internal into the canary's failure."""
    try:
        yield
    except AssertionError:
        raise
    except Exception as error:
        raise AssertionError(
            gone(function, f"{why} ({type(error).__name__}: {error})")
        ) from error


def fails(check, function, *args, **kwargs):
    """Asserts that `check` fails, naming `function`: a mutation is caught."""
    with pytest.raises(AssertionError, match=rf"internals\.{function} "):
        check(*args, **kwargs)


def rename(obj, name):
    """Renames an instance attribute, as a Keras release that renamed it would."""
    vars(obj)[f"{name}_renamed"] = vars(obj).pop(name)


# --- The running `fit` ---------------------------------------------------------


class Probe(keras.callbacks.Callback):
    """Calls the `fit` probes from inside a running fit; `tamper(model)` runs
    just before the cached evaluation."""

    def __init__(self, tamper=None):
        super().__init__()
        self.tamper = tamper

    def on_train_begin(self, logs=None):
        self.found = found = internals.fit_locals(self.model)
        self.has_validation = internals.fit_has_validation(found)
        self.callbacks = internals.fit_callbacks(found)
        self.batch_size = internals.fit_batch_size(found)
        self.validation = internals.fit_validation(found)

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        self.validates = [internals.fit_validates_at(self.found, e) for e in range(4)]
        if self.tamper is not None:
            self.tamper(model)
        with relying_on("evaluate_fit_validation", "model._eval_epoch_iterator"):
            self.cached = internals.evaluate_fit_validation(model)


def check_fit_frame(tamper=None):
    """fit's frame and locals, its validation schedule, its cached evaluation."""
    (x, y), (xv, yv) = regression_data()
    model = compiled_model()
    probe = Probe(tamper)
    model.fit(
        x,
        y,
        validation_data=(xv, yv),
        batch_size=16,
        validation_freq=2,
        epochs=2,
        verbose=0,
        callbacks=[probe],
    )
    why = "fit's frame and its locals (validation_data, callbacks, batch_size)"
    assert probe.found is not None, gone("fit_locals", why)
    assert probe.has_validation is True, gone("fit_has_validation", why)
    assert probe in probe.callbacks, gone("fit_callbacks", why)
    assert probe.batch_size == 16, gone("fit_batch_size", why)
    assert probe.validation is not None, gone("fit_validation", "val_x, val_y")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(probe.validation["x"]), xv)
    assert probe.validation["batch_size"] == 16
    assert probe.validates == [False, True, False, True], gone(
        "fit_validates_at", "validation_freq"
    )
    assert probe.cached is not None, gone(
        "evaluate_fit_validation",
        "model._eval_epoch_iterator and evaluate(_use_cached_eval_dataset=True)",
    )
    assert probe.cached["loss"] == pytest.approx(
        model.evaluate(xv, yv, verbose=0, batch_size=16), rel=1e-6
    )


def test_fit_frame():
    check_fit_frame()


def test_fit_frame_canary_fails_when_fit_is_renamed(monkeypatch):
    # The same `fit`, its frame called `train`: a Keras whose `fit` has
    # another name (or runs its body in a helper).
    model_class = type(compiled_model())
    fit = inspect.unwrap(model_class.fit)
    train = types.FunctionType(
        fit.__code__.replace(co_name="train"),
        fit.__globals__,
        "train",
        fit.__defaults__,
        fit.__closure__,
    )
    train.__kwdefaults__ = fit.__kwdefaults__
    monkeypatch.setattr(model_class, "fit", train)
    fails(check_fit_frame, "fit_locals")


def test_cached_evaluation_canary_fails_when_the_iterator_is_renamed():
    fails(
        check_fit_frame,
        "evaluate_fit_validation",
        tamper=lambda model: rename(model, "_eval_epoch_iterator"),
    )


def test_no_fit_frame_fails_open():
    model = regression_model()
    found = internals.fit_locals(model)
    assert found is None
    assert internals.fit_has_validation(found) is None
    assert internals.fit_callbacks(found) == []
    assert internals.fit_validation(found) is None


# --- Models and layers ----------------------------------------------------------


class NoTraining(keras.Model):
    def call(self, x):
        return x


def check_flatten_layers():
    model = keras.Sequential(
        [keras.Input((3,)), keras.Sequential([keras.layers.Dense(2)])]
    )
    inner = model.layers[0].layers[0]
    with relying_on("flatten_layers", "Layer._flatten_layers"):
        found = internals.flatten_layers(model)
    assert any(layer is inner for layer in found), gone(
        "flatten_layers", "Layer._flatten_layers"
    )


def test_flatten_layers():
    check_flatten_layers()


def test_flatten_layers_canary_fails_without_the_method(monkeypatch):
    monkeypatch.delattr(keras.layers.Layer, "_flatten_layers")
    fails(check_flatten_layers, "flatten_layers")


def check_call_has_training_arg(tamper=lambda model: None):
    # It falls back to True: a model whose call has no `training` tells
    # whether Keras still records it.
    why = "Layer._call_has_training_arg"
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    no_training = NoTraining()
    tamper(no_training)
    assert internals.call_has_training_arg(model) is True, gone(
        "call_has_training_arg", why
    )
    assert internals.call_has_training_arg(no_training) is False, gone(
        "call_has_training_arg", why
    )


def test_call_has_training_arg():
    check_call_has_training_arg()


def test_call_has_training_arg_canary_fails_when_renamed():
    fails(
        check_call_has_training_arg,
        "call_has_training_arg",
        lambda model: rename(model, "_call_has_training_arg"),
    )


def check_created_non_trainable(tamper=lambda layer: None):
    bn = keras.layers.BatchNormalization()
    dense = keras.layers.Dense(4)
    bn.build((None, 3))
    dense.build((None, 3))
    dense.enable_lora(2)  # freezes the kernel: not created non-trainable
    dense.bias.trainable = False
    tamper(bn)
    why = "Layer._non_trainable_variables"
    with relying_on("created_non_trainable", why):
        found = [v.path for v in internals.created_non_trainable(bn)]
    assert found == [bn.moving_mean.path, bn.moving_variance.path], gone(
        "created_non_trainable", why
    )
    assert internals.created_non_trainable(dense) == []


def test_created_non_trainable():
    check_created_non_trainable()


def test_created_non_trainable_canary_fails_when_renamed():
    fails(
        check_created_non_trainable,
        "created_non_trainable",
        lambda layer: rename(layer, "_non_trainable_variables"),
    )


def check_metric_direction(tamper=lambda metric: None):
    accuracy = keras.metrics.Accuracy()
    tamper(accuracy)
    assert internals.metric_direction(accuracy) == "up", gone(
        "metric_direction", "Metric._direction"
    )
    assert internals.metric_direction(keras.metrics.MeanSquaredError()) == "down"


def test_metric_direction():
    check_metric_direction()


def test_metric_direction_canary_fails_when_renamed():
    fails(
        check_metric_direction,
        "metric_direction",
        lambda metric: rename(metric, "_direction"),
    )


def check_lora_variables(tamper=lambda layer: None):
    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    assert internals.lora_variables(dense) is None
    dense.enable_lora(2)
    embedding = keras.layers.Embedding(5, 3)
    embedding.build((None,))
    embedding.enable_lora(2)
    for layer, base in ((dense, "_kernel"), (embedding, "_embeddings")):
        tamper(layer)
        why = f"{type(layer).__name__}.{base} and its lora_*_a / lora_*_b"
        with relying_on("lora_variables", why):
            found = internals.lora_variables(layer)
        assert found is not None and len(found) == 3, gone("lora_variables", why)
        assert found[0] is getattr(layer, base) and not found[0].trainable, gone(
            "lora_variables", why
        )
        assert found[1].trainable and found[2].trainable


def test_lora_variables():
    check_lora_variables()


def test_lora_variables_canary_fails_when_the_base_is_renamed():
    def tamper(layer):
        if isinstance(layer, keras.layers.Dense):
            rename(layer, "_kernel")

    fails(check_lora_variables, "lora_variables", tamper)


# --- Data -----------------------------------------------------------------------


def check_adapted_batches():
    x = np.arange(10, dtype="float32").reshape(5, 2)
    why = "keras.src.trainers.data_adapters.get_data_adapter and its iterators"
    with relying_on("adapted_batches", why):
        with internals.adapted_batches(x, batch_size=2) as batches:
            got = [
                keras.ops.convert_to_numpy(keras.utils.unpack_x_y_sample_weight(b)[0])
                for b in batches
            ]
    assert [len(b) for b in got] == [2, 2, 1], gone("adapted_batches", why)
    np.testing.assert_array_equal(np.concatenate(got), x)


def test_adapted_batches():
    check_adapted_batches()


def test_adapted_batches_canary_fails_without_the_adapter(monkeypatch):
    from keras.src.trainers import data_adapters

    monkeypatch.delattr(data_adapters, "get_data_adapter")
    fails(check_adapted_batches, "adapted_batches")


def check_is_data_source():
    why = "keras.src.trainers.data_adapters' is_*_dataset"
    with relying_on("is_data_source", why):
        assert not internals.is_data_source(np.zeros(3))
        found = internals.is_data_source(keras.utils.PyDataset())
    assert found, gone("is_data_source", why)


def test_is_data_source():
    check_is_data_source()


def test_is_data_source_canary_fails_without_the_predicates(monkeypatch):
    from keras.src.trainers import data_adapters

    monkeypatch.delattr(data_adapters, "is_torch_dataloader")
    fails(check_is_data_source, "is_data_source")


# --- Backends -------------------------------------------------------------------


def check_variable_storage(tamper=lambda variable: None):
    variable = keras.Variable(np.arange(3, dtype="float32"))
    tamper(variable)
    why = "KerasVariable._value"
    with relying_on("variable_storage", why):
        storage = internals.variable_storage(variable)
        assert storage is variable.value or np.array_equal(
            keras.ops.convert_to_numpy(storage), [0, 1, 2]
        ), gone("variable_storage", why)


def test_variable_storage():
    check_variable_storage()


def test_variable_storage_canary_fails_when_renamed():
    fails(
        check_variable_storage,
        "variable_storage",
        lambda variable: rename(variable, "_value"),
    )


def check_assign_unchecked(tamper=lambda variable: None):
    variable = keras.Variable(np.arange(3, dtype="float32"))
    tamper(variable)
    why = "KerasVariable._direct_assign"
    with relying_on("assign_unchecked", why):
        internals.assign_unchecked(variable, keras.ops.ones(3))
    got = keras.ops.convert_to_numpy(variable)
    assert np.array_equal(got, [1, 1, 1]), gone("assign_unchecked", why)


def test_assign_unchecked():
    check_assign_unchecked()


def test_assign_unchecked_canary_fails_when_stubbed():
    def tamper(variable):  # a `_direct_assign` that no longer assigns
        variable._direct_assign = lambda value: None

    fails(check_assign_unchecked, "assign_unchecked", tamper)


def check_torch_dtype():
    why = "keras.src.backend.torch.core.to_torch_dtype"
    with relying_on("torch_dtype", why):
        found = internals.torch_dtype("bfloat16")
    assert found is torch.bfloat16, gone("torch_dtype", why)


def test_torch_dtype():
    check_torch_dtype()


def test_torch_dtype_canary_fails_without_the_mapping(monkeypatch):
    from keras.src.backend.torch import core

    monkeypatch.delattr(core, "to_torch_dtype")
    fails(check_torch_dtype, "torch_dtype")


def check_torch_swap_storage():
    # On torch a Keras variable holds a Parameter; elsewhere one stands in.
    if keras.backend.backend() == "torch":
        variable = keras.Variable(np.zeros(3, "float32"))
        parameter = variable.value
    else:
        parameter = torch.nn.Parameter(torch.zeros(3))
    why = "Parameter.data"
    with relying_on("torch_swap_storage", why):
        (previous,) = internals.torch_swap_storage([parameter], [torch.ones(3)])
    if keras.backend.backend() == "torch":
        assert variable.value is parameter, gone("torch_swap_storage", why)
    assert parameter.detach().tolist() == [1, 1, 1], gone("torch_swap_storage", why)
    assert previous.tolist() == [0, 0, 0], gone("torch_swap_storage", why)


def test_torch_swap_storage():
    check_torch_swap_storage()


def test_torch_swap_storage_canary_fails_when_data_is_stubbed(monkeypatch):
    data = torch.Tensor.data
    monkeypatch.setattr(
        torch.nn.Parameter, "data", property(data.__get__, lambda self, value: None)
    )
    fails(check_torch_swap_storage, "torch_swap_storage")


def check_torch_lerp_all():
    why = "torch._foreach_lerp and torch._foreach_lerp_"
    starts = [torch.zeros(3), torch.full((2, 2), 4.0)]
    ends = [torch.full((3,), 8.0), torch.zeros(2, 2)]
    with relying_on("torch_lerp_all", why):
        got = internals.torch_lerp_all(starts, ends, 0.25)
        assert [g.tolist() for g in got] == [[2.0] * 3, [[3.0] * 2] * 2], gone(
            "torch_lerp_all", why
        )
        assert starts[0].tolist() == [0.0] * 3, gone("torch_lerp_all", why)
        same = internals.torch_lerp_all(starts, ends, 0.25, in_place=True)
    assert same is starts and starts[0].tolist() == [2.0] * 3, gone(
        "torch_lerp_all", why
    )


def test_torch_lerp_all():
    check_torch_lerp_all()


def test_torch_lerp_all_canary_fails_without_the_fused_lerp(monkeypatch):
    monkeypatch.delattr(torch, "_foreach_lerp_")
    fails(check_torch_lerp_all, "torch_lerp_all")


def check_torch_copy_all():
    why = "torch._foreach_copy_"
    into = [torch.zeros(3), torch.zeros(2)]
    with relying_on("torch_copy_all", why):
        internals.torch_copy_all(into, [torch.ones(3), torch.full((2,), 5.0)])
    assert [x.tolist() for x in into] == [[1.0] * 3, [5.0] * 2], gone(
        "torch_copy_all", why
    )


def test_torch_copy_all():
    check_torch_copy_all()


def test_torch_copy_all_canary_fails_without_the_fused_copy(monkeypatch):
    monkeypatch.setattr(torch, "_foreach_copy_", lambda into, values: None)
    fails(check_torch_copy_all, "torch_copy_all")


# --- Keras' BackupAndRestore ------------------------------------------------------


def check_backup_and_restore(directory, tamper=lambda backup: None):
    # BackupAndRestore's metadata file, the epoch it records, and the epoch it
    # makes fit start at: what the resume of a killed run reads.
    backup = keras.callbacks.BackupAndRestore(str(directory), save_freq=3)
    seen = {}

    class Look(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            with relying_on("keep_backup_epoch", "BackupAndRestore._current_epoch"):
                internals.keep_backup_epoch(backup, epoch)

        def on_train_end(self, logs=None):
            tamper(backup)
            why = "BackupAndRestore._training_metadata_path"
            with relying_on("backup_position", why):
                seen["position"] = internals.backup_position(backup)
            model = self.model
            seen["start"] = internals.fit_initial_epoch(
                model, internals.fit_locals(model)
            )

    (x, y), _ = regression_data()
    model = compiled_model()
    backup.delete_checkpoint = False
    model.fit(
        x[:64], y[:64], batch_size=16, epochs=2, verbose=0, callbacks=[Look(), backup]
    )
    why = "BackupAndRestore's _training_metadata_path and _current_epoch"
    # 8 batches, backups after batches 3 and 6: the second is epoch 1, batch 1.
    assert seen["position"] == {"epoch": 1, "batch": 1}, gone("backup_position", why)
    assert seen["start"] == 0, gone("fit_initial_epoch", "fit's initial_epoch")
    resumed = keras.callbacks.BackupAndRestore(str(directory), save_freq=3)
    model.fit(
        x[:64], y[:64], batch_size=16, epochs=2, verbose=0, callbacks=[resumed, Look()]
    )
    why = "model._initial_epoch, which BackupAndRestore sets"
    assert seen["start"] == 1, gone("fit_initial_epoch", why)


def test_backup_and_restore_record_and_epoch(tmp_path):
    check_backup_and_restore(tmp_path)


def test_backup_canary_fails_when_the_metadata_path_is_renamed(tmp_path):
    fails(
        check_backup_and_restore,
        "backup_position",
        tmp_path,
        lambda backup: rename(backup, "_training_metadata_path"),
    )


def test_backup_canary_fails_when_the_initial_epoch_is_renamed(tmp_path, monkeypatch):
    # A BackupAndRestore that no longer hands the epoch over in
    # `model._initial_epoch`.
    restore = keras.callbacks.BackupAndRestore.on_train_begin

    def on_train_begin(self, logs=None):
        restore(self, logs)
        self._model._initial_epoch = None

    monkeypatch.setattr(
        keras.callbacks.BackupAndRestore, "on_train_begin", on_train_begin
    )
    fails(check_backup_and_restore, "fit_initial_epoch", tmp_path)


# --- Callbacks in a CallbackList --------------------------------------------------


def check_run_first_at_epoch_end():
    # Through Keras' CallbackList, built before the wrap, as in `fit`: the
    # hook runs before the callback's own work, and after the callbacks
    # placed earlier in the list.
    calls = []

    class Own(keras.callbacks.Callback):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def on_epoch_end(self, epoch, logs=None):
            calls.append((self.name, epoch))

    earlier, callback = Own("earlier"), Own("own")
    callbacks = keras.callbacks.CallbackList([earlier, callback], model=None)
    internals.run_first_at_epoch_end(callback, lambda e: calls.append(("first", e)))
    internals.run_first_at_epoch_end(callback, lambda e: calls.append(("again", e)))
    callbacks.on_epoch_end(3, {})
    why = "CallbackList calls each callback's on_epoch_end as an instance attribute"
    assert calls == [("earlier", 3), ("again", 3), ("own", 3)], gone(
        "run_first_at_epoch_end", why
    )
    internals.undo_first_at_epoch_end(callback)
    callbacks.on_epoch_end(4, {})
    assert calls[-2:] == [("earlier", 4), ("own", 4)], gone(
        "undo_first_at_epoch_end", why
    )


def test_run_first_at_epoch_end():
    check_run_first_at_epoch_end()


def test_run_first_canary_fails_when_keras_calls_the_class_method(monkeypatch):
    # A CallbackList that calls the class' on_epoch_end, past the instance's.
    def on_epoch_end(self, epoch, logs=None):
        for callback in self.callbacks:
            type(callback).on_epoch_end(callback, epoch, logs)

    monkeypatch.setattr(keras.callbacks.CallbackList, "on_epoch_end", on_epoch_end)
    fails(check_run_first_at_epoch_end, "run_first_at_epoch_end")


def check_take_train_batch_end():
    """An instance's taken batch hook runs in fit's thread, in order, every
    batch; other instances of the class leave Keras' async dispatch on."""
    from keras.src import backend as keras_backend

    why = "CallbackList dispatches batch hooks asynchronously unless one is set"
    fit_thread = threading.get_ident()
    seen = []

    class Hooked(keras.callbacks.Callback):
        pass

    taken, epoch_level = Hooked(), Hooked()
    internals.take_train_batch_end(
        taken, lambda batch, logs=None: seen.append((batch, threading.get_ident()))
    )
    dispatch = keras.callbacks.CallbackList
    assert not dispatch([taken])._async_train, gone("take_train_batch_end", why)
    if keras_backend.IS_THREAD_SAFE:  # TensorFlow dispatches in order anyway
        assert dispatch([epoch_level])._async_train, gone("take_train_batch_end", why)
    (x, y), _ = regression_data()
    model = compiled_model()
    model.fit(x[:64], y[:64], batch_size=16, epochs=1, verbose=0, callbacks=[taken])
    assert seen == [(b, fit_thread) for b in range(4)], gone(
        "take_train_batch_end", why
    )


def test_take_train_batch_end():
    check_take_train_batch_end()


def test_take_train_batch_end_canary_fails_when_keras_ignores_instance_hooks(
    monkeypatch,
):
    # A Keras that sees only the class' hooks (every backend made async, so
    # that TensorFlow's in-order dispatch does not hide it).
    from keras.src import backend as keras_backend
    from keras.src import utils

    monkeypatch.setattr(keras_backend, "IS_THREAD_SAFE", True)
    monkeypatch.setattr(utils, "is_default", lambda method: True)
    fails(check_take_train_batch_end, "take_train_batch_end")


# --- A callback's model -------------------------------------------------------------


class StateAfterFirstBatch(keras.callbacks.Callback):
    """Reads the first Dense kernel after the first batch, before and after
    `internals.sync_model`."""

    def on_train_batch_end(self, batch, logs=None):
        if batch:
            return
        kernel = internals.unsynced_model(self).weights[0]
        self.before = self.read(kernel)
        internals.sync_model(self)
        self.after = self.read(kernel)

    @staticmethod
    def read(variable):
        try:
            return keras.ops.convert_to_numpy(variable)
        except TypeError:  # JAX's fit empties the variables until synced
            return None


def model_sync_problem() -> str | None:
    """What is wrong with `unsynced_model` and `sync_model`, or None."""
    (x, y), _ = regression_data()
    model = compiled_model(optimizer=keras.optimizers.SGD(0.1))
    start = keras.ops.convert_to_numpy(model.weights[0])
    probe = StateAfterFirstBatch()
    probe.set_model(model)
    if internals.unsynced_model(probe) is not model:
        return gone("unsynced_model", "Callback._model, the model behind .model")
    model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0, callbacks=[probe])
    trained = keras.ops.convert_to_numpy(model.weights[0])
    if probe.after is None or not np.array_equal(probe.after, trained):
        return gone("sync_model", "reading Callback.model syncs the trainer's state")
    # JAX keeps the state apart until synced; the others hold it already.
    if keras.backend.backend() == "jax":
        synced_already = probe.before is not None and not np.array_equal(
            probe.before, start
        )
    else:
        synced_already = np.array_equal(probe.before, trained)
    if synced_already != (keras.backend.backend() != "jax"):
        return gone("unsynced_model", "on JAX it is the model as it is, not synced")
    return None


def test_unsynced_model_and_sync_model():
    assert model_sync_problem() is None


def test_model_sync_canary_fails_without_the_internals(monkeypatch):
    # The canary above would catch Keras dropping either internal.
    if keras.backend.backend() == "jax":  # a Callback.model that syncs nothing
        monkeypatch.setattr(
            keras.callbacks.Callback, "model", property(lambda self: self._model)
        )
        assert "sync_model" in model_sync_problem()
        monkeypatch.undo()
    monkeypatch.setattr(keras.callbacks.Callback, "_model", None, raising=False)
    monkeypatch.setattr(keras.callbacks.Callback, "set_model", lambda self, model: None)
    assert "unsynced_model" in model_sync_problem()


def check_evaluate_with():
    (x, y), (xv, yv) = regression_data()
    model = compiled_model()
    model.evaluate(x, y, verbose=0)
    fit_function = model.test_function
    why = "Trainer.test_function, the compiled step evaluate runs"
    results, mine = internals.evaluate_with(model, None, x=xv, y=yv, verbose=0)
    assert mine is not None and mine is not fit_function, gone("evaluate_with", why)
    assert model.test_function is fit_function, gone("evaluate_with", why)
    again, reused = internals.evaluate_with(model, mine, x=xv, y=yv, verbose=0)
    assert reused is mine, gone("evaluate_with", why)
    assert again == pytest.approx(results, rel=1e-6)
    assert results == pytest.approx(model.evaluate(xv, yv, verbose=0), rel=1e-6)


def test_evaluate_with_its_own_test_function():
    check_evaluate_with()


def check_training_state_kept():
    """Evaluates inside `training_state_kept` at a batch end of a running fit
    (of an epoch of unknown length, where JAX's fit restores the variables
    from its trainer state); fit's history must be a plain fit's."""
    import tensorflow as tf  # a dataset of unknown length

    (x, y), (xv, yv) = regression_data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True)

    class Evaluates(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch in (3, 7):  # 7: the epoch's last batch
                with internals.training_state_kept(self.model):
                    self.model.evaluate(xv, yv, verbose=0)

    def run(callbacks):
        keras.utils.set_random_seed(0)
        model = compiled_model(metrics=["mae"])
        return model.fit(data.batch(32), epochs=2, verbose=0, callbacks=callbacks)

    why = (
        "model.metrics_variables (the compiled metrics evaluate resets) and, "
        "on JAX, Trainer._jax_state (which evaluate empties)"
    )
    try:
        kept = run([Evaluates()]).history
    except TypeError as e:  # JAX: the variables left purged
        raise AssertionError(gone("training_state_kept", f"{why} ({e})")) from e
    assert kept == run([]).history, gone("training_state_kept", why)


def test_training_state_kept():
    check_training_state_kept()


def test_training_state_kept_canary_fails_without_its_restore(monkeypatch):
    # A Keras whose metrics or trainer state live elsewhere: nothing restored.
    monkeypatch.setattr(
        internals,
        "training_state_kept",
        lambda model: contextlib.nullcontext(),
    )
    fails(check_training_state_kept, "training_state_kept")


def check_set_monitor_direction():
    why = "ModelCheckpoint._set_monitor_op and its monitor_op"
    checkpoint = keras.callbacks.ModelCheckpoint(
        "unused.weights.h5", monitor="aswa_running_val_loss", mode="min", save_freq=2
    )
    assert checkpoint.monitor_op is None, gone("set_monitor_direction", why)
    try:
        internals.set_monitor_direction(checkpoint)
    except AttributeError as e:
        raise AssertionError(gone("set_monitor_direction", f"{why} ({e})")) from e
    assert checkpoint._is_improvement(0.5, 1.0), gone("set_monitor_direction", why)


def test_set_monitor_direction():
    check_set_monitor_direction()


def test_set_monitor_direction_canary_fails_when_keras_renames_it(monkeypatch):
    from keras.src.callbacks.monitor_callback import MonitorCallback

    monkeypatch.delattr(MonitorCallback, "_set_monitor_op")
    fails(check_set_monitor_direction, "set_monitor_direction")


def test_evaluate_with_canary_fails_when_evaluate_ignores_test_function(
    monkeypatch,
):
    # A Keras whose evaluate compiles its step afresh, whatever
    # `test_function` holds.
    model_class = type(compiled_model())
    make = model_class.make_test_function
    monkeypatch.setattr(
        model_class,
        "make_test_function",
        functools.wraps(make)(lambda self, force=False: make(self, force=True)),
    )
    fails(check_evaluate_with, "evaluate_with")
