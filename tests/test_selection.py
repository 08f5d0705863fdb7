"""Which variables an average holds: what training changes, per fit."""

import keras
import numpy as np
import pytest
from scenarios import (
    compiled_model,
    fit_regression,
    held_paths,
    regression_data,
    regression_model,
)

from keras_aswa import ASWA, SWA
from keras_aswa.selection import averaged_variables


def compiled(model):
    return compiled_model(model)


def test_default_holds_trainable_and_batchnorm_statistics_not_frozen_layers():
    model = regression_model()
    frozen = model.layers[0]
    frozen.trainable = False
    before = [keras.ops.convert_to_numpy(v) for v in frozen.weights]
    swa = SWA()
    fit_regression(compiled(model), [swa], epochs=3)

    expected = [
        v.path for v in model.weights if all(v is not w for w in frozen.weights)
    ]
    assert held_paths(swa, model) == expected
    assert any("moving_mean" in p for p in expected)  # BatchNorm statistics
    # The frozen layer kept its weights, and the ensemble reports them as they are.
    for v, b in zip(frozen.weights, before, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), b)
    ensemble = swa.ensemble_weights()
    assert len(ensemble) == len(model.weights)
    np.testing.assert_array_equal(ensemble[0], before[0])
    held_bytes = swa.ensemble_nbytes
    trained_bytes = sum(
        np.prod(v.shape) * 4 for v in model.weights if v.path in expected
    )
    assert held_bytes == trained_bytes


def test_lora_base_kernel_is_not_held_and_stays():
    inputs = keras.Input((8,))
    dense = keras.layers.Dense(16, activation="tanh")
    head = keras.layers.Dense(1)
    model = keras.Model(inputs, head(dense(inputs)))
    dense.enable_lora(2)
    base = keras.ops.convert_to_numpy(dense._kernel)
    aswa = ASWA()
    fit_regression(compiled(model), [aswa], epochs=3)
    paths = held_paths(aswa, model)
    assert dense._kernel.path not in paths
    assert dense.lora_kernel_a.path in paths and dense.lora_kernel_b.path in paths
    assert dense.bias.path in paths
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(dense._kernel), base)


def test_selection_is_made_for_each_fit():
    model = compiled(regression_model())
    model.layers[0].trainable = False
    model = compiled(model)
    swa = SWA()
    fit_regression(model, [swa], epochs=2)
    first = held_paths(swa, model)
    model.layers[0].trainable = True
    model = compiled(model)
    fit_regression(model, [swa], epochs=2)
    assert held_paths(swa, model) == [v.path for v in model.weights]
    assert len(first) == len(model.weights) - 2


def test_all_and_explicit_lists():
    model = regression_model()
    model.layers[0].trainable = False
    assert averaged_variables(model, "all") == list(model.weights)
    chosen = averaged_variables(model, [model.weights[-1], model.weights[0]])
    assert [v.path for v in chosen] == [model.weights[0].path, model.weights[-1].path]
    other = keras.Variable(np.zeros(3))
    with pytest.raises(ValueError, match="not variables of the model"):
        averaged_variables(model, [other])
    with pytest.raises(ValueError, match="variables="):
        ASWA(variables="trainable")
    swa = SWA(variables=model.trainable_variables)
    fit_regression(compiled(model), [swa], epochs=2)
    assert held_paths(swa, model) == [v.path for v in model.trainable_variables]


def test_everything_frozen_is_an_error_before_training():
    model = regression_model()
    model.trainable = False
    with pytest.raises(ValueError, match="nothing to average"):
        fit_regression(compiled(model), [SWA()], epochs=1)


def test_backup_and_offload_follow_the_selection(tmp_path):
    from keras_aswa.state import StateStore

    model = regression_model()
    model.layers[0].trainable = False

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("stop")

    aswa = ASWA(backup_dir=str(tmp_path), offload="host")
    with pytest.raises(RuntimeError, match="stop"):
        fit_regression(compiled(model), [aswa, Stop()], epochs=3)
    store = StateStore(str(tmp_path))
    store.load()
    arrays, meta = store.generations[0]
    assert [a is not None for a in arrays] == [True] * (len(model.weights) - 2)
    # (That the host store holds numpy arrays: tests/test_averaging.py.)


def test_lora_inside_a_frozen_parent_is_held_and_hand_frozen_is_not():
    # keras-hub's enable_lora freezes every layer, then makes the target
    # layers trainable again inside their (frozen) attention blocks.
    inner = keras.layers.Dense(16, activation="tanh")
    block = keras.Sequential([inner, keras.layers.BatchNormalization()])
    head = keras.layers.Dense(1)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, head(block(inputs)))
    block.trainable = False
    inner.trainable = True
    inner.enable_lora(2)
    head.bias.trainable = False
    aswa = ASWA()
    fit_regression(compiled(model), [aswa], epochs=2)
    paths = held_paths(aswa, model)
    trained = [v.path for v in model.trainable_weights]
    assert paths == [v.path for v in model.weights if v.path in trained]
    assert inner.lora_kernel_a.path in paths and inner.lora_kernel_b.path in paths
    assert inner._kernel.path not in paths and head.bias.path not in paths
    assert not any("moving" in p for p in paths)  # the frozen BatchNorm's


def int8_model():
    """`regression_model` with both Dense layers quantized to int8."""
    model = regression_model()
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            layer.quantize("int8")
    return model


def test_int8_kernels_and_their_scales_are_not_held():
    model = int8_model()
    dense = model.layers[0]
    # Keras makes the int8 kernel and its float32 scale frozen constants.
    assert keras.backend.standardize_dtype(dense.kernel.dtype) == "int8"
    assert keras.backend.standardize_dtype(dense.kernel_scale.dtype) == "float32"
    assert not dense.kernel.trainable and not dense.kernel_scale.trainable
    expected = [
        v.path for v in model.weights if v.trainable or "moving_" in v.path
    ]  # the biases, gamma, beta and the BatchNorm statistics
    assert len(expected) == 6
    assert [v.path for v in averaged_variables(model)] == expected
    constants = {
        v.path: keras.ops.convert_to_numpy(v).copy()
        for v in model.weights
        if v.path not in expected
    }
    assert sorted(p.split("/")[-1] for p in constants) == [
        "kernel",
        "kernel",
        "kernel_scale",
        "kernel_scale",
    ]

    aswa = ASWA()
    fit_regression(compiled(model), [aswa], epochs=4)
    assert held_paths(aswa, model) == expected
    assert aswa.ensemble_size >= 1
    # Training changed none of them: holding the scales would average constants.
    ensemble = aswa.ensemble_weights()
    for v, e in zip(model.weights, ensemble, strict=True):
        if v.path in constants:
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(v), constants[v.path]
            )
            np.testing.assert_array_equal(e, constants[v.path])
    model.set_weights(ensemble)
    assert np.isfinite(model.evaluate(*regression_data()[1], verbose=0))


def float32_bytes(variables):
    return sum(keras.ops.convert_to_numpy(v).size * 4 for v in variables)


def test_ensemble_nbytes_counts_the_held_copies_only():
    model = regression_model()
    frozen, norm, head = model.layers
    frozen.trainable = False
    swa = SWA()
    assert swa.ensemble_nbytes == 0
    fit_regression(compiled(model), [swa], epochs=2)
    assert swa.ensemble_nbytes == float32_bytes(norm.weights + head.weights)
    held = held_paths(swa, model)
    ensemble = swa.ensemble_weights()
    assert swa.ensemble_nbytes == sum(
        e.nbytes for e, v in zip(ensemble, model.weights, strict=True) if v.path in held
    )

    inputs = keras.Input((8,))
    dense = keras.layers.Dense(16, activation="tanh")
    norm = keras.layers.BatchNormalization()
    head = keras.layers.Dense(1)
    model = keras.Model(inputs, head(norm(dense(inputs))))
    dense.enable_lora(2)
    aswa = ASWA(offload="host")
    assert aswa.ensemble_nbytes == 0
    fit_regression(compiled(model), [aswa], epochs=2)
    adapters = [dense.lora_kernel_a, dense.lora_kernel_b, dense.bias]
    assert aswa.ensemble_nbytes == float32_bytes(adapters + norm.weights + head.weights)
    assert aswa.ensemble_nbytes < float32_bytes(model.weights)
