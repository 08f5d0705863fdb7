"""LoRA layers across Keras' merge-on-save (keras_aswa.lora), and a resumed
keras-hub LoRA classifier that hands back the model ASWA scored."""

import os

import keras
import numpy as np
import pytest
from scenarios import (
    Crash,
    compiled_model,
    fit_regression,
    regression_model,
)

from keras_aswa import ASWA, lora


def lora_model():
    model = regression_model()
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            layer.enable_lora(2)
            for v in (layer.lora_kernel_a, layer.lora_kernel_b):
                v.assign(rng.normal(size=v.shape).astype("float32"))
    return model


def values(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def keras_round_trip(model, path):
    """What BackupAndRestore does to a LoRA layer: save merged, load, zero."""
    model.save_weights(path)
    model.load_weights(path)


@pytest.mark.parametrize("known", [True, False], ids=["adapters-known", "factored"])
def test_unmerge_puts_the_base_back(tmp_path, known):
    model = lora_model()
    parts = lora.parts(model)
    assert len(parts) == 2
    lora.save_bases(parts, str(tmp_path), "run")
    bases = values(p.base for p in parts)
    adapters = lora.adapters(parts)
    merged_before = values(layer.kernel for layer in model.layers[::2])
    keras_round_trip(model, str(tmp_path / "w.weights.h5"))
    # Keras merged: the base changed, the adapters are zero.
    assert not np.array_equal(values([parts[0].base])[0], bases[0])
    assert not np.any(values([parts[0].a])[0])

    assert lora.unmerge(parts, str(tmp_path), adapters if known else None)
    for got, base in zip(values(p.base for p in parts), bases, strict=True):
        np.testing.assert_array_equal(got, base)
    if known:
        for got, a in zip(lora.adapters(parts), adapters, strict=True):
            np.testing.assert_array_equal(got, a)
    # Either way the layers compute what Keras restored.
    merged = values(layer.kernel for layer in model.layers[::2])
    for got, expected in zip(merged, merged_before, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # A base that was not merged is left alone.
    assert not lora.unmerge(parts, str(tmp_path), None)


def test_a_resumed_lora_model_hands_back_what_aswa_scored(tmp_path):
    # In-process kill after both callbacks saved epoch 1; the rerun resumes
    # at epoch 2 on Keras' merged backup.
    def run(state, keras_dir, crash):
        model = lora_model()
        compiled_model(model)
        aswa = ASWA(backup_dir=state)
        callbacks = [keras.callbacks.BackupAndRestore(keras_dir), aswa]
        fit_regression(model, callbacks + ([Crash(1)] if crash else []), epochs=5)
        return model, aswa

    whole, whole_aswa = run(str(tmp_path / "a"), str(tmp_path / "ka"), False)
    with pytest.raises(RuntimeError, match="preempted"):
        run(str(tmp_path / "b"), str(tmp_path / "kb"), True)
    assert os.path.exists(tmp_path / "b" / lora.BASES)
    model, aswa = run(str(tmp_path / "b"), str(tmp_path / "kb"), False)
    assert aswa.history == whole_aswa.history
    for got, expected in zip(values(model.weights), values(whole.weights), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_keras_hub_lora_classifier_resumes_to_the_uninterrupted_run(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    rng = np.random.default_rng(0)

    def data(n):
        x = {
            "token_ids": rng.integers(1, 50, size=(n, 8)).astype("int32"),
            "segment_ids": np.zeros((n, 8), "int32"),
            "padding_mask": np.ones((n, 8), "int32"),
        }
        return x, (x["token_ids"][:, 0] % 2).astype("int32")

    (x, y), (xv, yv) = data(64), data(32)

    def run(name, crash):
        keras.utils.set_random_seed(1)
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=50,
            num_layers=1,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=16,
            max_sequence_length=8,
        )
        model = keras_hub.models.BertTextClassifier(
            backbone, num_classes=2, preprocessor=None
        )
        model.backbone.enable_lora(rank=2)
        compiled_model(
            model,
            keras.optimizers.Adam(1e-2),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        aswa = ASWA(backup_dir=str(tmp_path / name / "aswa"))
        callbacks = [
            keras.callbacks.BackupAndRestore(str(tmp_path / name / "keras")),
            aswa,
        ] + ([Crash(1)] if crash else [])
        model.fit(
            x,
            y,
            validation_data=(xv, yv),
            batch_size=16,
            epochs=4,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
        return model, aswa

    whole, whole_aswa = run("whole", crash=False)
    with pytest.raises(RuntimeError, match="preempted"):
        run("killed", crash=True)
    model, aswa = run("killed", crash=False)
    assert [h["decision"] for h in aswa.history] == [
        h["decision"] for h in whole_aswa.history
    ]
    np.testing.assert_allclose(
        model.predict(xv, verbose=0), whole.predict(xv, verbose=0), atol=1e-5
    )
    evaluated = model.evaluate(xv, yv, batch_size=16, verbose=0, return_dict=True)
    np.testing.assert_allclose(evaluated["loss"], aswa.best_score, rtol=1e-5)


def _lora_run(state, keras_dir, crash, seed=3, epochs=4):
    model = regression_model()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            layer.enable_lora(2)
            layer._kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
            for v in (layer.lora_kernel_a, layer.lora_kernel_b):
                v.assign(rng.normal(size=v.shape).astype("float32"))
    compiled_model(model)
    aswa = ASWA(backup_dir=state)
    callbacks = [keras.callbacks.BackupAndRestore(keras_dir), aswa]
    fit_regression(model, callbacks + ([Crash(1)] if crash else []), epochs=epochs)
    return model, aswa


def test_lora_bases_of_another_run_are_never_loaded(tmp_path):
    # A run leaves lora_bases.npz behind; its state files (and Keras' backup)
    # are deleted, as the damaged-file error suggests. A new model with other
    # bases, trained with that backup_dir, keeps its own bases.
    state = str(tmp_path / "state")
    with pytest.raises(RuntimeError, match="preempted"):
        _lora_run(state, str(tmp_path / "k1"), True, seed=3)
    for name in os.listdir(state):
        if name.startswith("state."):
            os.remove(os.path.join(state, name))
    assert os.path.exists(os.path.join(state, lora.BASES))
    model, _ = _lora_run(state, str(tmp_path / "k2"), False, seed=4)
    clean, _ = _lora_run(str(tmp_path / "clean"), str(tmp_path / "k3"), False, seed=4)
    for got, expected in zip(values(model.weights), values(clean.weights), strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", [lora.BASES, lora.RUNNING])
@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_damaged_lora_files_name_the_file(tmp_path, name, damage):
    state = str(tmp_path / "state")
    keras_dir = str(tmp_path / "k")
    with pytest.raises(RuntimeError, match="preempted"):
        _lora_run(state, keras_dir, True)
    path = os.path.join(state, name)
    if damage == "truncated":
        if not os.path.exists(path):
            np.savez(path, np.zeros(3))
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    else:
        np.savez(path, np.zeros(3), np.ones(2))
    if name == lora.RUNNING:
        # Read where the epoch end Keras saved is replayed: killed between
        # Keras' backup and the state's write.
        for n in sorted(os.listdir(state)):
            if n.startswith("state."):
                latest = n
        os.remove(os.path.join(state, latest))
        with open(path, "rb") as f:
            head = f.read()
        model_error = None
        try:
            _lora_run(state, keras_dir, False)
        except Exception as e:  # noqa: BLE001
            model_error = e
        if damage == "truncated" or model_error is not None:
            assert model_error is not None
            assert type(model_error).__name__ == "StateFileError", model_error
            assert path in str(model_error)
        with open(path, "rb") as f:
            assert f.read() == head or model_error is None
        return
    with pytest.raises(Exception) as info:
        _lora_run(state, keras_dir, False)
    assert type(info.value).__name__ == "StateFileError", info.value
    assert path in str(info.value)
