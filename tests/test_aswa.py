"""The ASWA callback end to end, on whichever backend this process runs."""

import csv
import math

import keras
import numpy as np
import pytest
from scenarios import (
    BATCH_SIZE,
    EPOCHS,
    SnapshotRecorder,
    aswa_run,
    compiled_model,
    fit_regression,
    held_paths,
    numpy_mse,
    regression_data,
    regression_model,
    replay,
)

from keras_aswa import ASWA


class StepCounter(keras.layers.Layer):
    """An integer variable that counts training calls: must never be averaged."""

    def build(self, input_shape):
        self.steps = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False
        )

    def call(self, x, training=False):
        if training:
            self.steps.assign(self.steps + 1)
        return x


def test_final_weights_equal_numpy_replay():
    recorder, aswa = SnapshotRecorder(), ASWA()
    model = aswa_run([recorder, aswa])
    decisions = {h["decision"] for h in aswa.history}
    assert {"init", "hard", "soft", "reject"} <= decisions, decisions
    float_mask = [keras.backend.is_float_dtype(v.dtype) for v in model.weights]
    ensemble, provisionals = replay(recorder.snapshots, aswa.history, float_mask)

    _, (xv, yv) = regression_data()
    for record in aswa.history:
        # The running score is fit's own, and the provisional score is that of
        # the numpy provisional ensemble: the right weights were evaluated.
        theta = recorder.snapshots[record["epoch"]]
        assert record["running"] == pytest.approx(numpy_mse(theta, xv, yv), rel=1e-4)
        if record["epoch"] in provisionals:
            expected = numpy_mse(provisionals[record["epoch"]], xv, yv)
            assert record["provisional"] == pytest.approx(expected, rel=1e-4)

    final = [keras.ops.convert_to_numpy(v) for v in model.weights]
    for got, want in zip(final, ensemble, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(aswa.ensemble_weights(), ensemble, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The model now scores what ASWA says its ensemble scores.
    assert model.evaluate(xv, yv, verbose=0) == pytest.approx(aswa.best_score, rel=1e-5)
    assert aswa.best_score <= min(h["running"] for h in aswa.history) + 1e-7


def test_min_delta_changes_the_decisions_as_the_numpy_replay_does():
    # A margin of the size of the scores' typical moves: some updates the
    # run without a margin accepted are now rejected, and the replay, with
    # that margin, agrees with every decision and with the final weights.
    plain = ASWA()
    aswa_run([plain])
    moves = [abs(h["running"] - h["provisional"]) for h in plain.history[1:]]
    delta = float(np.median(moves))
    recorder, aswa = SnapshotRecorder(), ASWA(min_delta=delta)
    model = aswa_run([recorder, aswa])
    decisions = [h["decision"] for h in aswa.history]
    assert decisions != [h["decision"] for h in plain.history]
    assert "reject" in decisions and "init" in decisions
    float_mask = [keras.backend.is_float_dtype(v.dtype) for v in model.weights]
    ensemble, _ = replay(recorder.snapshots, aswa.history, float_mask, min_delta=delta)
    with pytest.raises(AssertionError):  # the same scores without the margin
        replay(recorder.snapshots, aswa.history, float_mask)
    for got, want in zip(aswa.ensemble_weights(), ensemble, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_batchnorm_statistics_averaged_and_integers_untouched():
    recorder, aswa = SnapshotRecorder(), ASWA()
    (x, _), _ = regression_data()
    model = regression_model(extra_layers=[StepCounter()])
    compiled_model(model)
    fit_regression(model, [recorder, aswa])
    assert aswa.ensemble_size >= 2, aswa.history
    float_mask = [keras.backend.is_float_dtype(v.dtype) for v in model.weights]
    ensemble, _ = replay(recorder.snapshots, aswa.history, float_mask)
    by_path = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    paths = [v.path for v in model.weights]
    last = dict(zip(paths, recorder.snapshots[EPOCHS - 1], strict=True))
    for name in ("moving_mean", "moving_variance"):
        path = next(p for p in paths if p.endswith(name))
        i = paths.index(path)
        np.testing.assert_allclose(by_path[path], ensemble[i], rtol=1e-5, atol=1e-7)
        assert not np.allclose(by_path[path], last[path])  # really averaged
    counter = next(p for p in paths if "step_counter" in p)
    steps_run = EPOCHS * math.ceil(len(x) / BATCH_SIZE)
    assert int(by_path[counter]) == steps_run


@pytest.mark.parametrize(
    "shuffle, validation",
    [(False, "fit"), (True, "fit"), (True, "callback"), (True, "recompute")],
)
def test_aswa_does_not_disturb_training(shuffle, validation):
    """Same weights, optimizer state and counters as a fit without ASWA.

    With shuffling, the extra evaluations (and BatchNorm passes) must not
    draw from the random generators that order the training batches.
    """
    (x, y), (xv, yv) = regression_data()
    options = {
        "fit": {},
        "callback": {"validation_data": (xv, yv)},
        "recompute": {"batchnorm": "recompute", "batchnorm_data": x},
    }[validation]

    def run(callbacks):
        keras.utils.set_random_seed(7)
        model = regression_model(
            extra_layers=[keras.layers.Dropout(0.3, seed=3), StepCounter()]
        )
        compiled_model(model)
        fit_regression(model, callbacks, epochs=6, shuffle=shuffle)
        state = [keras.ops.convert_to_numpy(v) for v in model.weights]
        state += [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
        state += [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
        return state

    aswa = ASWA(restore_best=False, **options)
    plain, with_aswa = run([]), run([aswa])
    assert {h["decision"] for h in aswa.history} - {"init"}, aswa.history
    assert len(plain) == len(with_aswa)
    for a, b in zip(plain, with_aswa, strict=True):
        np.testing.assert_array_equal(a, b)


def test_logs_reach_later_callbacks(tmp_path):
    log_file = tmp_path / "log.csv"
    aswa = ASWA()
    aswa_run([aswa, keras.callbacks.CSVLogger(str(log_file))], epochs=6)
    history = aswa.model.history.history
    assert history["aswa_size"] == [h["ensemble_size"] for h in aswa.history]
    assert history["aswa_val_loss"] == [h["ensemble_score"] for h in aswa.history]
    with open(log_file) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["aswa_val_loss"]) for r in rows] == pytest.approx(
        history["aswa_val_loss"]
    )


def test_validation_split_and_start_from_epoch():
    aswa = ASWA(start_from_epoch=3)
    (x, y), _ = regression_data()
    model = compiled_model()
    model.fit(
        x, y, validation_split=0.2, epochs=6, batch_size=32, verbose=0, callbacks=[aswa]
    )
    assert [h["epoch"] for h in aswa.history] == [3, 4, 5]
    assert aswa.history[0]["decision"] == "init"
    # The log keys are there from the first epoch (CSVLogger fixes its
    # columns then), empty until the first scored epoch.
    assert model.history.history["aswa_size"] == [
        0,
        0,
        0,
        1,
        *[h["ensemble_size"] for h in aswa.history[1:]],
    ]
    assert model.history.history["val_loss"][3] == aswa.history[0]["running"]


def test_epochs_without_validation_are_skipped():
    aswa = ASWA()
    aswa_run([aswa], epochs=6, validation_freq=2)
    assert [h["decision"] for h in aswa.history][::2] == ["skip"] * 3
    assert aswa.history[1]["decision"] == "init"
    assert all(h["running"] is not None for h in aswa.history[1::2])


def test_one_extra_evaluation_per_epoch_without_retracing():
    aswa = ASWA()
    calls, functions = [], []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            functions.append(self.model.test_function)

    (x, y), (xv, yv) = regression_data()
    model = compiled_model()
    evaluate = model.evaluate

    def counting_evaluate(*args, **kwargs):
        calls.append(kwargs)
        return evaluate(*args, **kwargs)

    model.evaluate = counting_evaluate
    model.fit(
        x,
        y,
        validation_data=(xv, yv),
        epochs=5,
        batch_size=32,
        verbose=0,
        callbacks=[aswa, Probe()],
    )
    # fit's own validation (5) plus one per epoch after the first (4).
    assert len(calls) == 5 + 4
    assert all(f is functions[0] for f in functions)


def test_score_fn_scores_running_and_provisional():
    _, (xv, yv) = regression_data()
    seen = []

    def score_fn(model):
        pred = keras.ops.convert_to_numpy(model(xv, training=False))
        seen.append(1)
        return -float(np.mean((pred - yv) ** 2))  # higher is better

    aswa = ASWA(monitor="val_neg_mse", mode="max", score_fn=score_fn)
    model = aswa_run([aswa], epochs=5)
    assert len(seen) == 1 + 2 * 4
    assert model.history.history["val_neg_mse"] == [h["running"] for h in aswa.history]
    assert score_fn(model) == pytest.approx(aswa.best_score, rel=1e-5)


def test_callback_validation_data_overrides_fit():
    (x, y), (xv, yv) = regression_data()
    other_x, other_y = xv[:64], yv[:64] * 2.0
    aswa = ASWA(validation_data=(other_x, other_y))
    model = aswa_run([aswa], epochs=4)
    assert aswa.history[0]["running"] != model.history.history["val_loss"][0]
    assert model.evaluate(other_x, other_y, verbose=0) == pytest.approx(
        aswa.best_score, rel=1e-5
    )


def test_state_resets_between_fits():
    aswa = ASWA()
    model = aswa_run([aswa], epochs=3)
    model.fit(
        *regression_data()[0],
        validation_data=regression_data()[1],
        epochs=2,
        verbose=0,
        callbacks=[aswa],
    )
    assert [h["epoch"] for h in aswa.history] == [0, 1]
    assert aswa.history[0]["decision"] == "init"


def test_restore_best_false_keeps_running_weights():
    recorder, aswa = SnapshotRecorder(), ASWA(restore_best=False)
    model = aswa_run([recorder, aswa], epochs=4)
    for got, want in zip(model.get_weights(), recorder.snapshots[3], strict=True):
        np.testing.assert_array_equal(got, want)
    # The ensemble can still be applied by hand.
    aswa.apply_ensemble()
    for got, want in zip(model.get_weights(), aswa.ensemble_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_non_finite_scores_never_initialise():
    aswa = ASWA()
    (x, y), (xv, yv) = regression_data()
    model = regression_model()
    compiled_model(model, keras.optimizers.SGD(1e3))  # diverges to NaN
    with pytest.warns(UserWarning, match="averaged no epoch"):
        model.fit(x, y, validation_data=(xv, yv), epochs=3, verbose=0, callbacks=[aswa])
    assert [h["decision"] for h in aswa.history] == ["skip"] * 3
    assert aswa.ensemble_size == 0 and aswa.best_score is None
    assert all(math.isnan(v) for v in model.history.history["aswa_val_loss"])


def test_verbose_prints_a_legend_and_one_line_per_epoch(capsys):
    aswa = ASWA(verbose=1)
    aswa_run([aswa], epochs=3)
    out = capsys.readouterr().out.splitlines()
    legend = [ln for ln in out if ln.startswith("ASWA: r = running model")]
    lines = [ln for ln in out if ln.startswith("ASWA epoch ")]
    assert len(legend) == 1 and len(lines) == 3
    assert lines[0].startswith("ASWA epoch 0: init (first scored epoch): r val_loss=")
    assert "size 1" in lines[0]
    # Eight decimals, and the ensemble's score before and after the decision.
    second = aswa.history[1]
    assert f"r val_loss={second['running']:.8f}" in lines[1]
    assert f"-> {second['ensemble_score']:.8f}" in lines[1]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_model_averages_like_float32(dtype):
    # Ever-rising scores make every provisional ensemble win: a soft update
    # each epoch, so the ensemble is the mean of all 12 snapshots.
    counter = iter(range(1000))
    aswa = ASWA(monitor="val_rising", mode="max", score_fn=lambda m: next(counter))
    recorder = SnapshotRecorder()
    model = aswa_run([recorder, aswa], dtype=dtype)
    assert [h["decision"] for h in aswa.history] == ["init"] + ["soft"] * (EPOCHS - 1)
    # The float32 reference: the 16-bit snapshots averaged in float32.
    float_mask = [keras.backend.is_float_dtype(v.dtype) for v in model.weights]
    ensemble, _ = replay(recorder.snapshots, aswa.history, float_mask, mode="max")
    ours = aswa.ensemble_weights()
    for got, want in zip(ours, ensemble, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Written into the model once, rounded to 16 bits once. (Against our own
    # float32 ensemble: one float32 ulp from the replay's may round apart.)
    for v, avg in zip(model.weights, ours, strict=True):
        assert keras.backend.standardize_dtype(v.dtype) == dtype
        got = keras.ops.convert_to_numpy(keras.ops.cast(v, "float32"))
        rounded = keras.ops.convert_to_numpy(
            keras.ops.cast(keras.ops.cast(avg, dtype), "float32")
        )
        np.testing.assert_array_equal(got, rounded)


def test_host_offload_ends_like_the_device_ensemble():
    on_device, on_host = ASWA(), ASWA(offload="host")
    a = aswa_run([on_device])
    b = aswa_run([on_host])
    assert [h["decision"] for h in on_host.history] == [
        h["decision"] for h in on_device.history
    ]
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="tanh")
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.Sequential(
            [keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)]
        ),
        Subclassed,
    ],
    ids=["sequential-without-input", "subclassed"],
)
def test_model_not_built_before_fit(make):
    # On TensorFlow such a model has no weights when training begins.
    keras.utils.set_random_seed(3)
    recorder, aswa = SnapshotRecorder(), ASWA()
    model = compiled_model(make())
    fit_regression(model, [recorder, aswa])
    assert "soft" in {h["decision"] for h in aswa.history}
    assert len(held_paths(aswa, model)) == len(model.weights) == 4
    float_mask = [True] * 4
    ensemble, _ = replay(recorder.snapshots, aswa.history, float_mask)
    for got, want in zip(model.get_weights(), ensemble, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    _, (xv, yv) = regression_data()
    assert model.evaluate(xv, yv, verbose=0) == pytest.approx(aswa.best_score, rel=1e-5)
