"""Each Keras or backend internal keras_aswa relies on is still there.

When a Keras release removes one, the test of that function fails with a
message naming it and what keras_aswa uses it for.
"""

import keras
import numpy as np
import pytest
from scenarios import ADAM_LR, regression_data, regression_model

from keras_aswa import internals


def gone(function, why):
    return (
        f"keras_aswa.internals.{function} no longer finds what it relies on in "
        f"Keras {keras.__version__}: {why}. Update it (see its docstring)."
    )


class Probe(keras.callbacks.Callback):
    """Calls the `fit` probes from inside a running fit."""

    def on_train_begin(self, logs=None):
        self.found = found = internals.fit_locals(self.model)
        self.has_validation = internals.fit_has_validation(found)
        self.callbacks = internals.fit_callbacks(found)
        self.batch_size = internals.fit_batch_size(found)
        self.validation = internals.fit_validation(found)

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        self.validates = [internals.fit_validates_at(self.found, e) for e in range(4)]
        self.cached = internals.evaluate_fit_validation(model)


@pytest.fixture(scope="module")
def probe():
    (x, y), (xv, yv) = regression_data()
    model = regression_model()
    model.compile(keras.optimizers.Adam(ADAM_LR), "mse")
    probe = Probe()
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
    return probe, model, (xv, yv)


def test_fit_frame(probe):
    probe, model, (xv, yv) = probe
    why = "fit's local variables (validation_data, callbacks, batch_size)"
    assert probe.has_validation is True, gone("fit_has_validation", why)
    assert probe in probe.callbacks, gone("fit_callbacks", why)
    assert probe.batch_size == 16, gone("fit_batch_size", why)
    assert probe.validation is not None, gone("fit_validation", "val_x, val_y")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(probe.validation["x"]), xv)
    assert probe.validation["batch_size"] == 16


def test_validation_schedule_and_cached_evaluation(probe):
    probe, model, (xv, yv) = probe
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


def test_no_fit_frame_fails_open():
    model = regression_model()
    found = internals.fit_locals(model)
    assert found is None
    assert internals.fit_has_validation(found) is None
    assert internals.fit_callbacks(found) == []
    assert internals.fit_validation(found) is None


def test_layers_and_call_signature():
    model = keras.Sequential(
        [keras.Input((3,)), keras.Sequential([keras.layers.Dense(2)])]
    )
    inner = model.layers[0].layers[0]
    assert any(layer is inner for layer in internals.flatten_layers(model)), gone(
        "flatten_layers", "Layer._flatten_layers"
    )
    # It falls back to True: a model whose call has no `training` tells
    # whether Keras still records it.
    why = "Layer._call_has_training_arg"
    assert internals.call_has_training_arg(model) is True, gone(
        "call_has_training_arg", why
    )
    assert internals.call_has_training_arg(NoTraining()) is False, gone(
        "call_has_training_arg", why
    )


class NoTraining(keras.Model):
    def call(self, x):
        return x


def test_created_non_trainable():
    bn = keras.layers.BatchNormalization()
    dense = keras.layers.Dense(4)
    bn.build((None, 3))
    dense.build((None, 3))
    dense.enable_lora(2)  # freezes the kernel: not created non-trainable
    dense.bias.trainable = False
    found = [v.path for v in internals.created_non_trainable(bn)]
    assert found == [bn.moving_mean.path, bn.moving_variance.path], gone(
        "created_non_trainable", "Layer._non_trainable_variables"
    )
    assert internals.created_non_trainable(dense) == []


def test_metric_direction():
    assert internals.metric_direction(keras.metrics.Accuracy()) == "up", gone(
        "metric_direction", "Metric._direction"
    )
    assert internals.metric_direction(keras.metrics.MeanSquaredError()) == "down"


def test_adapted_batches():
    x = np.arange(10, dtype="float32").reshape(5, 2)
    why = "keras.src.trainers.data_adapters.get_data_adapter and its iterators"
    with internals.adapted_batches(x, batch_size=2) as batches:
        got = [
            keras.ops.convert_to_numpy(keras.utils.unpack_x_y_sample_weight(b)[0])
            for b in batches
        ]
    assert [len(b) for b in got] == [2, 2, 1], gone("adapted_batches", why)
    np.testing.assert_array_equal(np.concatenate(got), x)
    assert not internals.is_data_source(x)
    dataset = keras.utils.PyDataset()
    assert internals.is_data_source(dataset), gone(
        "is_data_source", "keras.src.trainers.data_adapters' is_*_dataset"
    )


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch only")
def test_torch_swap_storage():
    variable = keras.Variable(np.zeros(3, "float32"))
    parameter = variable.value
    import torch

    (previous,) = internals.torch_swap_storage([parameter], [torch.ones(3)])
    assert variable.value is parameter, gone("torch_swap_storage", "Parameter.data")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), [1, 1, 1])
    np.testing.assert_array_equal(previous.numpy(), [0, 0, 0])


def test_variable_storage_and_unchecked_assign():
    variable = keras.Variable(np.arange(3, dtype="float32"))
    storage = internals.variable_storage(variable)
    assert storage is variable.value or np.array_equal(
        keras.ops.convert_to_numpy(storage), [0, 1, 2]
    ), gone("variable_storage", "KerasVariable._value")
    if keras.backend.backend() == "jax":
        import jax.numpy as jnp

        internals.assign_unchecked(variable, jnp.ones(3))
        got = keras.ops.convert_to_numpy(variable)
        assert np.array_equal(got, [1, 1, 1]), gone(
            "assign_unchecked", "KerasVariable._direct_assign"
        )


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch only")
def test_torch_dtype():
    import torch

    assert internals.torch_dtype("bfloat16") is torch.bfloat16, gone(
        "torch_dtype", "keras.src.backend.torch.core.to_torch_dtype"
    )


def test_backup_and_restore_record_and_epoch(tmp_path):
    # BackupAndRestore's metadata file, the epoch it records, and the epoch it
    # makes fit start at: what the resume of a killed run reads.
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=3)
    seen = {}

    class Look(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            internals.keep_backup_epoch(backup, epoch)

        def on_train_end(self, logs=None):
            seen["position"] = internals.backup_position(backup)
            model = self.model
            seen["start"] = internals.fit_initial_epoch(
                model, internals.fit_locals(model)
            )

    (x, y), _ = regression_data()
    model = regression_model()
    model.compile(keras.optimizers.Adam(ADAM_LR), "mse")
    backup.delete_checkpoint = False
    model.fit(
        x[:64], y[:64], batch_size=16, epochs=2, verbose=0, callbacks=[Look(), backup]
    )
    why = "BackupAndRestore's _training_metadata_path and _current_epoch"
    # 8 batches, backups after batches 3 and 6: the second is epoch 1, batch 1.
    assert seen["position"] == {"epoch": 1, "batch": 1}, gone("backup_position", why)
    assert seen["start"] == 0, gone("fit_initial_epoch", "fit's initial_epoch")
    resumed = keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=3)
    model.fit(
        x[:64], y[:64], batch_size=16, epochs=2, verbose=0, callbacks=[resumed, Look()]
    )
    why = "model._initial_epoch, which BackupAndRestore sets"
    assert seen["start"] == 1, gone("fit_initial_epoch", why)


def test_lora_variables():
    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    assert internals.lora_variables(dense) is None
    dense.enable_lora(2)
    embedding = keras.layers.Embedding(5, 3)
    embedding.build((None,))
    embedding.enable_lora(2)
    for layer, base in ((dense, "_kernel"), (embedding, "_embeddings")):
        found = internals.lora_variables(layer)
        why = f"{type(layer).__name__}.{base} and its lora_*_a / lora_*_b"
        assert found is not None and len(found) == 3, gone("lora_variables", why)
        assert found[0] is getattr(layer, base) and not found[0].trainable, gone(
            "lora_variables", why
        )
        assert found[1].trainable and found[2].trainable


def test_run_first_at_epoch_end():
    calls = []

    class Own(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            calls.append(("own", epoch))

    callback = Own()
    internals.run_first_at_epoch_end(callback, lambda e: calls.append(("first", e)))
    internals.run_first_at_epoch_end(callback, lambda e: calls.append(("again", e)))
    callback.on_epoch_end(3, {})
    why = "a callback's on_epoch_end as an instance attribute"
    assert calls == [("again", 3), ("own", 3)], gone("run_first_at_epoch_end", why)
    internals.undo_first_at_epoch_end(callback)
    callback.on_epoch_end(4, {})
    assert calls[-1] == ("own", 4) and len(calls) == 3


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
    model = regression_model()
    model.compile(keras.optimizers.SGD(0.1), "mse")
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


def test_evaluate_with_its_own_test_function():
    (x, y), (xv, yv) = regression_data()
    model = regression_model()
    model.compile(keras.optimizers.Adam(ADAM_LR), "mse")
    model.evaluate(x, y, verbose=0)
    fit_function = model.test_function
    why = "Trainer.test_function, the compiled step evaluate runs"
    results, mine = internals.evaluate_with(model, None, x=xv, y=yv, verbose=0)
    assert mine is not None and mine is not fit_function, gone("evaluate_with", why)
    assert model.test_function is fit_function
    again, reused = internals.evaluate_with(model, mine, x=xv, y=yv, verbose=0)
    assert reused is mine and again == pytest.approx(results, rel=1e-6)
    assert results == pytest.approx(model.evaluate(xv, yv, verbose=0), rel=1e-6)


def test_take_train_batch_end_keeps_epoch_level_callbacks_async():
    from keras_aswa import ASWA

    data = regression_data()[1]
    epoch, step = ASWA(), ASWA(update_freq=2, validation_data=data)
    why = "CallbackList dispatches batch hooks asynchronously unless one is set"
    dispatch = keras.callbacks.CallbackList
    if not getattr(dispatch([keras.callbacks.Callback()]), "_async_train", False):
        pytest.skip("this backend dispatches batch hooks in order anyway")
    assert dispatch([epoch])._async_train is True, gone("take_train_batch_end", why)
    assert dispatch([step])._async_train is False, gone("take_train_batch_end", why)


# --- Evaluating beside fit ------------------------------------------------------


def check_training_state_kept(model):
    """Evaluates inside `training_state_kept` at a batch end of a running
    fit; returns fit's history and a plain fit's."""
    (x, y), (xv, yv) = regression_data()

    class Evaluates(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                with internals.training_state_kept(self.model):
                    self.model.evaluate(xv, yv, verbose=0)

    def run(callbacks):
        keras.utils.set_random_seed(0)
        fresh = regression_model()
        fresh.compile(keras.optimizers.Adam(ADAM_LR), "mse", metrics=["mae"])
        return fresh.fit(
            x, y, epochs=1, batch_size=32, shuffle=False, verbose=0, callbacks=callbacks
        ).history

    return run([Evaluates()]), run([])


def test_training_state_kept():
    why = (
        "model.metrics_variables (the compiled metrics evaluate resets) and, "
        "on JAX, Trainer._jax_state"
    )
    kept, plain = check_training_state_kept(regression_model())
    assert kept == plain, gone("training_state_kept", why)


def test_training_state_kept_fails_without_its_restore(monkeypatch):
    # The mutation: a training_state_kept that restores nothing.
    import contextlib

    monkeypatch.setattr(
        internals, "training_state_kept", lambda model: contextlib.nullcontext()
    )
    kept, plain = check_training_state_kept(regression_model())
    assert kept != plain


def test_set_monitor_direction():
    why = "ModelCheckpoint._set_monitor_op and its monitor_op"
    checkpoint = keras.callbacks.ModelCheckpoint(
        "unused.weights.h5", monitor="aswa_running_val_loss", mode="min", save_freq=2
    )
    assert checkpoint.monitor_op is None, gone("set_monitor_direction", why)
    internals.set_monitor_direction(checkpoint)
    assert checkpoint._is_improvement(0.5, 1.0), gone("set_monitor_direction", why)
