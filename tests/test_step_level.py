"""ASWA and SWA every N training batches (`update_freq=N`)."""

import keras
import numpy as np
import pytest
from scenarios import (
    BATCH_SIZE,
    compiled_model,
    fit_regression,
    numpy_mse,
    regression_data,
    regression_model,
    replay,
)

from keras_aswa import ASWA, SWA

N = 3  # 256 samples / 32 = 8 batches an epoch: checks fall mid-epoch
EPOCHS = 3


class StepRecorder(keras.callbacks.Callback):
    """Records the running weights after every N-th optimizer step."""

    def __init__(self, every):
        super().__init__()
        self.every = every
        self.snapshots = {}

    def on_train_batch_end(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step % self.every == 0:
            self.snapshots[step] = [
                keras.ops.convert_to_numpy(v) for v in self.model.weights
            ]


def test_step_level_aswa_equals_numpy_replay():
    _, (xv, yv) = regression_data()
    recorder = StepRecorder(N)
    aswa = ASWA(update_freq=N, validation_data=(xv, yv))
    model = fit_regression(compiled_model(), [recorder, aswa], epochs=EPOCHS)

    steps = [h["step"] for h in aswa.history]
    assert steps == list(range(N, EPOCHS * 8 + 1, N))
    assert [h["epoch"] for h in aswa.history] == [(s - 1) // 8 for s in steps]
    decisions = {h["decision"] for h in aswa.history}
    assert {"init", "soft"} <= decisions, decisions
    float_mask = [keras.backend.is_float_dtype(v.dtype) for v in model.weights]
    ensemble, provisionals = replay(recorder.snapshots, aswa.history, float_mask)
    for record in aswa.history:
        theta = recorder.snapshots[record["step"]]
        assert record["running"] == pytest.approx(numpy_mse(theta, xv, yv), rel=1e-4)
        if record["step"] in provisionals:
            expected = numpy_mse(provisionals[record["step"]], xv, yv)
            assert record["provisional"] == pytest.approx(expected, rel=1e-4)
    for got, want in zip(model.get_weights(), ensemble, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("execution", [2, 3])
def test_steps_per_execution_checks_at_the_first_callback_past_each_n(execution):
    # Keras calls back once per execution of `execution` batches (and after
    # an epoch's last, shorter one): a check falls at the first callback at
    # or past each multiple of N, e.g. with 2 and N=3 at 4, 6, 10, 12, 16.
    # Keras numbers that last execution as a full one (with 3: batch 8 of an
    # epoch of 8); the count stays at the batches trained.
    if keras.backend.backend() == "torch":
        pytest.skip("Keras on PyTorch takes steps_per_execution=1 only")
    _, (xv, yv) = regression_data()
    recorder = StepRecorder(1)
    aswa = ASWA(update_freq=N, validation_data=(xv, yv))
    model = regression_model()
    compiled_model(model, steps_per_execution=execution)
    fit_regression(model, [recorder, aswa], epochs=2)
    ends = [min(b, 8) for b in range(execution, 8 + execution, execution)]
    called = [epoch * 8 + end for epoch in range(2) for end in ends]
    assert sorted(recorder.snapshots) == called
    expected = [
        s for a, s in zip([0, *called[:-1]], called, strict=True) if s // N > a // N
    ]
    assert [h["step"] for h in aswa.history] == expected
    if execution == 2:
        assert expected == [4, 6, 10, 12, 16]
    float_mask = [keras.backend.is_float_dtype(v.dtype) for v in model.weights]
    ensemble, _ = replay(recorder.snapshots, aswa.history, float_mask)
    for record in aswa.history:
        theta = recorder.snapshots[record["step"]]
        assert record["running"] == pytest.approx(numpy_mse(theta, xv, yv), rel=1e-4)
    for got, want in zip(model.get_weights(), ensemble, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_validation_steps_scores_the_first_batches_only():
    _, (xv, yv) = regression_data()
    recorder = StepRecorder(4)
    aswa = ASWA(
        update_freq=4, validation_data=(xv, yv), validation_steps=2, restore_best=False
    )
    fit_regression(compiled_model(), [recorder, aswa], epochs=1)
    used = 2 * BATCH_SIZE  # evaluate's default batch size
    for record in aswa.history:
        theta = recorder.snapshots[record["step"]]
        want = numpy_mse(theta, xv[:used], yv[:used])
        assert record["running"] == pytest.approx(want, rel=1e-4)
        assert record["running"] != pytest.approx(numpy_mse(theta, xv, yv), rel=1e-4)


def test_step_level_swa_is_the_mean_of_the_checked_steps():
    recorder = StepRecorder(N)
    swa = SWA(update_freq=N, start_from_epoch=1)
    model = fit_regression(compiled_model(), [recorder, swa], epochs=EPOCHS)
    averaged = [s for s in sorted(recorder.snapshots) if s > 8]
    assert [h["step"] for h in swa.history] == averaged
    for i, got in enumerate(model.get_weights()):
        if not keras.backend.is_float_dtype(model.weights[i].dtype):
            continue
        want = np.mean([recorder.snapshots[s][i] for s in averaged], axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_step_level_leaves_training_untouched():
    _, (xv, yv) = regression_data()
    plain = fit_regression(compiled_model(), [], epochs=2)
    aswa = ASWA(update_freq=N, validation_data=(xv, yv), restore_best=False)
    keras.utils.set_random_seed(7)
    with_aswa = fit_regression(compiled_model(), [aswa], epochs=2, shuffle=True)
    keras.utils.set_random_seed(7)
    reference = fit_regression(compiled_model(), [], epochs=2, shuffle=True)
    assert len(aswa.history) == 16 // N
    for a, b in zip(with_aswa.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(plain.get_weights(), with_aswa.get_weights(), strict=True)
    )


def test_epoch_logs_and_batch_logs_carry_the_ensemble():
    _, (xv, yv) = regression_data()
    aswa = ASWA(update_freq=N, validation_data=(xv, yv))
    history = fit_regression(compiled_model(), [aswa], epochs=EPOCHS).history
    last_of_epoch = [
        [h for h in aswa.history if h["epoch"] == e][-1] for e in range(EPOCHS)
    ]
    assert history.history["aswa_size"] == [h["ensemble_size"] for h in last_of_epoch]
    assert history.history["aswa_val_loss"] == [
        h["ensemble_score"] for h in last_of_epoch
    ]


def test_step_level_needs_callback_validation():
    with pytest.raises(ValueError, match="validation_data="):
        ASWA(update_freq=10)
    with pytest.raises(ValueError, match="update_freq"):
        ASWA(update_freq=0, validation_data=(np.zeros((2, 8)), np.zeros((2, 1))))
    with pytest.raises(ValueError, match="update_freq"):
        SWA(update_freq="batch")
    with pytest.raises(ValueError, match="frequency"):
        SWA(update_freq=5, frequency=2)
    with pytest.raises(ValueError, match="validation_data"):
        ASWA(validation_steps=3)
