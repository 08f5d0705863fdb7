"""ASWA and SWA in the same fit as Keras' own callbacks and optimizer EMA."""

import functools
import warnings

import keras
import numpy as np
import pytest
from scenarios import (
    ADAM_LR,
    Crash,
    SnapshotRecorder,
    aswa_run,
    compiled_model,
    fit_regression,
    regression_model,
    weights,
)

from keras_aswa import ASWA, SWA

# The shared run (tests/scenarios.py), 8 epochs unless told.
fit = functools.partial(aswa_run, epochs=8)


def assert_weights_equal(a, b, exact=False):
    for x, y in zip(a, b, strict=True):
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


class BestRecorder(keras.callbacks.Callback):
    """The best-val_loss epoch's weights, as EarlyStopping keeps them."""

    def on_train_begin(self, logs=None):
        self.best, self.weights = np.inf, None

    def on_epoch_end(self, epoch, logs=None):
        if logs["val_loss"] < self.best:
            self.best, self.weights = logs["val_loss"], self.model.get_weights()


@pytest.mark.parametrize("aswa_last", [True, False])
def test_early_stopping_restore_best_weights_last_writer_wins(aswa_last):
    aswa, best = ASWA(), BestRecorder()
    stopper = keras.callbacks.EarlyStopping(restore_best_weights=True, patience=100)
    order = [stopper, aswa] if aswa_last else [aswa, stopper]
    with pytest.warns(UserWarning, match="decides the final weights") as record:
        model = fit([best, *order])
    winner = "ASWA" if aswa_last else "EarlyStopping"
    assert any(f"the later one, {winner}" in str(w.message) for w in record)
    expected = aswa.ensemble_weights() if aswa_last else best.weights
    assert_weights_equal(weights(model), expected)
    # The two really differ, so the test tells them apart.
    assert not all(
        np.allclose(a, b)
        for a, b in zip(aswa.ensemble_weights(), best.weights, strict=True)
    )


def test_stopping_on_the_ensemble_score():
    aswa = ASWA()
    stopper = keras.callbacks.EarlyStopping(
        monitor="aswa_val_loss", mode="min", patience=2
    )
    model = fit([aswa, stopper], epochs=40)
    scores = model.history.history["aswa_val_loss"]
    assert len(scores) < 40
    # It stopped because the ensemble stopped improving for `patience` epochs.
    assert min(scores[-2:]) >= min(scores[:-2])
    assert_weights_equal(weights(model), aswa.ensemble_weights())


def test_optimizer_ema_is_replaced_by_the_ensemble_with_a_warning():
    def ema_optimizer():
        return keras.optimizers.Adam(ADAM_LR, use_ema=True, ema_momentum=0.9)

    aswa = ASWA()
    with pytest.warns(UserWarning, match="use_ema=True"):
        model = fit([aswa], optimizer=ema_optimizer())
    assert_weights_equal(weights(model), aswa.ensemble_weights())
    # restore_best=False: fit's own EMA overwrite stands, as without ASWA.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        kept = fit([ASWA(restore_best=False)], optimizer=ema_optimizer())
    plain = fit([], optimizer=ema_optimizer())
    assert_weights_equal(weights(kept), weights(plain), exact=True)


def test_reduce_lr_on_plateau_sees_an_undisturbed_run():
    def run(callbacks):
        lrs = []
        record = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda e, logs: lrs.append(
                float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
            )
        )
        model = regression_model()
        fit(
            [
                *callbacks,
                keras.callbacks.ReduceLROnPlateau(patience=1, factor=0.5),
                record,
            ],
            epochs=10,
            model=model,
        )
        return lrs, weights(model)

    lrs_plain, w_plain = run([])
    lrs_aswa, w_aswa = run([ASWA(restore_best=False)])
    assert lrs_plain == lrs_aswa and min(lrs_plain) < ADAM_LR  # it did reduce
    assert_weights_equal(w_plain, w_aswa, exact=True)


@pytest.mark.parametrize("callback_cls", [ASWA, SWA])
def test_model_checkpoint_saves_the_ensemble_with_swap_on_epoch(tmp_path, callback_cls):
    path = str(tmp_path / "ensemble.weights.h5")
    averaging = callback_cls(swap_on_epoch=True)
    saved = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            saved[epoch] = averaging.ensemble_weights()

    checkpoint = keras.callbacks.ModelCheckpoint(path, save_weights_only=True)
    recorder = SnapshotRecorder()
    model = fit([recorder, averaging, checkpoint, Probe()], epochs=5)
    restored = regression_model()
    restored.load_weights(path)
    assert_weights_equal(weights(restored), saved[4])
    # Swapping does not disturb training: the last epoch's running weights
    # are those of a plain run.
    plain = SnapshotRecorder()
    fit([plain], epochs=5)
    assert_weights_equal(recorder.snapshots[4], plain.snapshots[4], exact=True)
    assert_weights_equal(weights(model), averaging.ensemble_weights())


def test_backup_and_restore_resumes_training_and_restarts_the_average(tmp_path):
    backup = str(tmp_path / "backup")

    model = regression_model()
    first = ASWA()
    with pytest.raises(RuntimeError, match="preempted"):
        fit(
            [keras.callbacks.BackupAndRestore(backup), first, Crash(3, batch=2)],
            model=model,
        )
    assert [h["epoch"] for h in first.history] == [0, 1, 2]
    second = ASWA()
    with pytest.warns(UserWarning, match="resum"):
        fit([keras.callbacks.BackupAndRestore(backup), second], model=model)
    # Keras resumed at epoch 3; the average starts again there.
    assert second.history[0]["epoch"] == 3 and second.history[0]["decision"] == "init"


def test_interrupt_with_swap_on_epoch_gives_the_running_weights_back():
    # Ctrl-C in a callback after ASWA's epoch end: the model holds the
    # ensemble; the next fit puts the running weights back before training.
    recorder, aswa = SnapshotRecorder(), ASWA(swap_on_epoch=True)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:
                raise KeyboardInterrupt

    class FirstBatch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not hasattr(self, "seen"):
                self.seen = [keras.ops.convert_to_numpy(v) for v in self.model.weights]

    model = compiled_model()
    with pytest.raises(KeyboardInterrupt):
        fit_regression(model, [recorder, aswa, Interrupt()], epochs=6)
    held = [keras.ops.convert_to_numpy(v) for v in model.weights]
    ensemble = aswa.ensemble_weights()
    for a, b in zip(held, ensemble, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    first = FirstBatch()
    with pytest.warns(UserWarning, match="running weights were put back"):
        fit_regression(model, [first, aswa], epochs=1)
    for a, b in zip(first.seen, recorder.snapshots[3], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("later", [SWA, ASWA])
def test_averaging_after_swap_on_epoch_is_refused(later):
    model = compiled_model()
    with pytest.raises(ValueError, match="before it"):
        fit_regression(model, [ASWA(swap_on_epoch=True), later()], epochs=1)
    # The other order is fine: the earlier one reads the running weights.
    fit_regression(
        model,
        [
            later(restore_best=False),
            ASWA(swap_on_epoch=True),
        ],
        epochs=1,
    )
