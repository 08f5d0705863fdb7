"""A step-level check's evaluation (keras_aswa.evaluation): the scores
`evaluate` gives, without touching `fit`'s metrics or the model."""

import keras
import numpy as np
import pytest

from keras_aswa import ASWA
from keras_aswa.evaluation import Batches, Evaluation

RNG = np.random.default_rng(0)
X = RNG.normal(size=(320, 10)).astype("float32")
Y = RNG.integers(0, 3, 320)
XV = RNG.normal(size=(200, 10)).astype("float32")
YV = RNG.integers(0, 3, 200)


def classifier(seed=1):
    """A BatchNorm classifier with a regularised kernel, not built before fit."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.layers.Dense(16, kernel_regularizer="l2"),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(3),
        ]
    )
    model.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_scores_equal_evaluates_on_the_same_weights(policy, request):
    if policy == "mixed_bfloat16":
        request.getfixturevalue("mixed_bfloat16")
    model = classifier()
    model.fit(X, Y, batch_size=32, epochs=1, verbose=0)  # moving statistics
    evaluation = Evaluation(model, Batches({"x": XV, "y": YV, "batch_size": 64}))
    running = evaluation.running()
    rng = np.random.default_rng(1)
    other = [
        keras.ops.convert_to_tensor(
            np.asarray(keras.ops.convert_to_numpy(w)) + rng.normal(size=w.shape) * 0.1,
            dtype=w.dtype,
        )
        for w in running
    ]
    metrics_before = [keras.ops.convert_to_numpy(v) for v in model.metrics_variables]
    weights_before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    results = evaluation([running, other])
    # Nothing of the model changed: its weights, its metrics' state.
    for v, before in zip(model.metrics_variables, metrics_before, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), before)
    for v, before in zip(model.weights, weights_before, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), before)
    expected = [model.evaluate(XV, YV, batch_size=64, verbose=0, return_dict=True)]
    for v, value in zip(evaluation.variables, other, strict=True):
        v.assign(value)
    expected.append(model.evaluate(XV, YV, batch_size=64, verbose=0, return_dict=True))
    for got, want in zip(results, expected, strict=True):
        assert set(got) == {"loss", "accuracy"}
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-6), key


def history(callbacks, **fit_kw):
    model = classifier()
    fitted = model.fit(
        X, Y, batch_size=32, epochs=3, verbose=0, shuffle=False, callbacks=callbacks
    )
    return fitted.history, model


@pytest.mark.parametrize(
    "update_freq, score_fn",
    [(7, False), ("auto", False), (7, True)],
    ids=["N=7", "auto", "score_fn"],
)
def test_fits_history_is_a_plain_fits(update_freq, score_fn):
    """`loss` and `accuracy` of every epoch as without ASWA, whether the check
    takes the compiled path or evaluates (a score_fn)."""
    plain, _ = history([])
    if score_fn:

        def score(model):
            return model.evaluate(XV, YV, verbose=0, return_dict=True)["loss"]

        aswa = ASWA(score_fn=score, update_freq=update_freq, mode="min")
    else:
        aswa = ASWA(validation_data=(XV, YV), update_freq=update_freq)
    with_aswa, _ = history([aswa])
    # 10 batches an epoch: N=7 does not divide it
    assert len(aswa.history) == 30 // 7 if update_freq == 7 else len(aswa.history) > 4
    for key in ("loss", "accuracy"):
        assert with_aswa[key] == plain[key], key


def test_the_ensemble_handed_back_scores_best_score():
    aswa = ASWA(validation_data=(XV, YV), update_freq=3)
    _, model = history([aswa])
    loss = model.evaluate(XV, YV, batch_size=32, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(aswa.best_score, rel=1e-5)


@pytest.mark.parametrize("score_fn", [False, True], ids=["compiled", "score_fn"])
def test_a_check_on_the_last_batch_of_an_epoch_of_unknown_length(score_fn):
    # A filtered tf.data dataset: Keras learns the epoch's length only by
    # running out of data, one iteration after the last batch (on JAX, with
    # the trainer's state purged from the variables in between).
    tf = pytest.importorskip("tensorflow")
    data = (
        tf.data.Dataset.from_tensor_slices((X, Y)).filter(lambda x, y: True).batch(32)
    )
    if score_fn:

        def score(model):
            return model.evaluate(XV, YV, verbose=0, return_dict=True)["loss"]

        aswa = ASWA(score_fn=score, mode="min", update_freq=5)
    else:
        aswa = ASWA(validation_data=(XV, YV), update_freq=5)
    model = classifier()
    model.fit(data, epochs=2, verbose=0, callbacks=[aswa])
    assert [r["step"] for r in aswa.history] == [5, 10, 15, 20]
    model.evaluate(XV, YV, verbose=0)  # the variables hold values


def test_modelcheckpoint_after_aswa_keeps_the_best_step_level_running_model(
    tmp_path,
):
    path = tmp_path / "best.weights.h5"
    aswa = ASWA(validation_data=(XV, YV), update_freq=4, restore_best=False)
    checkpoint = keras.callbacks.ModelCheckpoint(
        path,
        monitor="aswa_running_val_loss",
        mode="min",
        save_freq=4,
        save_best_only=True,
        save_weights_only=True,
    )
    saved = []

    class Saved(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if path.exists() and path.stat().st_mtime_ns not in saved:
                saved.append(path.stat().st_mtime_ns)

    model = classifier()
    model.fit(
        X,
        Y,
        batch_size=32,
        epochs=3,
        verbose=0,
        shuffle=False,
        callbacks=[aswa, checkpoint, Saved()],
    )
    best = min(r["running"] for r in aswa.history)
    model.load_weights(path)
    loss = model.evaluate(XV, YV, batch_size=32, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(best, rel=1e-5)
    # Saved at each check that improved on every earlier one, and only there.
    scores = [r["running"] for r in aswa.history]
    improved = sum(s < min(scores[:i], default=np.inf) for i, s in enumerate(scores))
    assert len(saved) == improved
