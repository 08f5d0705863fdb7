"""update_freq="auto", the warnings found before training, and what a
step-level ASWA prints and logs."""

import contextlib
import io
import re
import time
import warnings

import keras
import numpy as np
import pytest
from scenarios import compiled_model, regression_data, regression_model

from keras_aswa import ASWA, SWA, cadence

(X, Y), (XV, YV) = regression_data(0, n_train=1024, n_val=256)


def fit(callbacks, epochs=2, verbose=0, batch_size=32, model=None):
    model = model or regression_model()
    compiled_model(model)
    model.fit(
        X,
        Y,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=False,
        verbose=verbose,
        callbacks=callbacks,
    )
    return model


def chosen_for(aswa, steps, epochs, there):
    """What keras_aswa.cadence chooses for this fit's counts."""
    return cadence.choose(
        total_steps=steps * epochs,
        steps_per_epoch=steps,
        validation_batches=there,
        batch_size=32,
        validation_batch_size=32,
        check_budget=aswa.check_budget,
    )


@pytest.mark.parametrize("model", ["built", "subclassed-unbuilt"])
def test_auto_chooses_n_and_k_by_its_rule_from_the_fits_counts(model):
    there = 48
    xv, yv = np.tile(XV, (there // 8, 1)), np.tile(YV, (there // 8, 1))
    aswa = ASWA(update_freq="auto", validation_data=(xv, yv))
    assert aswa.timing == {}  # filled when a fit ends
    models = {"built": regression_model, "subclassed-unbuilt": Subclassed}
    fit([aswa], model=models[model]())
    steps = len(X) // 32
    assert aswa.cadence == chosen_for(aswa, steps, 2, there)
    assert aswa.update_every == aswa.cadence.every
    every = aswa.update_every
    checked = list(range(every, 2 * steps + 1, every))
    assert [r["step"] for r in aswa.history] == checked
    timing = aswa.timing
    assert set(timing) == {
        "fit",
        "checks",
        "warm_up",
        "warm_up_check",
        "warm_up_averaging",
    }
    assert timing["warm_up_check"] > 0 and timing["checks"] > 0
    parts = timing["warm_up_check"] + timing["warm_up_averaging"]
    assert timing["warm_up"] == pytest.approx(parts)


class Sleep(keras.callbacks.Callback):
    """Makes every training batch take 20 ms longer."""

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.02)


def test_auto_chooses_the_same_when_training_is_slower():
    chosen = []
    for callbacks in ([], [Sleep()]):
        aswa = ASWA(update_freq="auto", validation_data=(XV, YV))
        fit([aswa, *callbacks], epochs=1)
        chosen.append((aswa.cadence, [r["step"] for r in aswa.history]))
    assert chosen[0] == chosen[1]


def test_auto_checks_the_fits_last_batch():
    # 51 batches of 16: N = 51 // 24 = 2 does not divide them.
    aswa = ASWA(update_freq="auto", validation_data=(XV, YV))
    model = compiled_model()
    n = 51 * 16
    model.fit(
        X[:n],
        Y[:n],
        batch_size=16,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[aswa],
    )
    assert aswa.update_every == 2
    assert [r["step"] for r in aswa.history] == [*range(2, 51, 2), 51]


def test_auto_prints_its_choice_and_how_to_make_it_again():
    aswa = ASWA(update_freq="auto", validation_data=(XV, YV), verbose=1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fit([aswa], epochs=1)
    line = next(x for x in out.getvalue().splitlines() if "update_freq='auto'" in x)
    n, k = aswa.cadence.every, aswa.cadence.validation_steps
    assert f"a check every {n} batches on {k} validation batches" in line
    assert f"ASWA(update_freq={n}, validation_steps={k})" in line
    assert f"{aswa.cadence.checks} checks over the fit's 32 batches" in line


class Subclassed(keras.Model):
    """Built by its first batch."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))


def test_auto_with_explicit_validation_steps_keeps_them():
    aswa = ASWA(update_freq="auto", validation_data=(XV, YV), validation_steps=3)
    fit([aswa], epochs=1)
    assert aswa.cadence.validation_steps == 3
    steps = [r["step"] for r in aswa.history]
    assert all(s % aswa.update_every == 0 or s == 32 for s in steps)


def test_auto_needs_validation_data_and_swa_refuses_it():
    with pytest.raises(ValueError, match="validation_data="):
        ASWA(update_freq="auto")
    with pytest.raises(ValueError, match="pass an int N"):
        SWA(update_freq="auto")
    with pytest.raises(ValueError, match="check_budget must be a float in"):
        ASWA(update_freq="auto", validation_data=(XV, YV), check_budget=1.5)


def test_update_freq_beyond_the_fit_warns_before_training():
    aswa = ASWA(update_freq=500, validation_data=(XV, YV))
    seen = []

    class FirstBatch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(len(caught))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit([aswa, FirstBatch()], epochs=1)
    messages = [str(w.message) for w in caught if "update_freq=500" in str(w.message)]
    assert len(messages) == 1 and "32 training batches" in messages[0]
    assert "update_freq='auto'" in messages[0]
    assert seen[0] >= 1  # warned before the first batch


def test_step_level_logs_its_own_keys_never_val_loss():
    logged = []

    class Logs(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            logged.append(dict(logs))

        def on_epoch_end(self, epoch, logs=None):
            logged.append(dict(logs))

    fit([ASWA(update_freq=8, validation_data=(XV, YV)), Logs()], epochs=1)
    assert not any("val_loss" in logs for logs in logged)
    # The checks' batches (the 8th, 16th, ...) and the epoch end carry them.
    for logs in logged[7:32:8] + logged[-1:]:
        assert "aswa_val_loss" in logs and "aswa_size" in logs, logs


def test_lines_never_glued_to_the_progress_bar_and_a_summary_at_the_end():
    aswa = ASWA(update_freq=8, validation_data=(XV, YV), verbose=1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fit([aswa], epochs=1, verbose=1)
    text = out.getvalue()
    lines = re.split(r"[\r\n]", text)
    ours = [line for line in lines if "ASWA" in line]
    # Each of ASWA's lines starts a line of its own.
    assert ours and all(line.startswith("ASWA") for line in ours), ours
    assert sum("ASWA epoch 0, step" in line for line in ours) == 4
    summary = [line for line in ours if line.startswith("ASWA summary")]
    assert len(summary) == 1
    decisions = {r["decision"] for r in aswa.history}
    assert "4 decisions" in summary[0]
    assert all(d in summary[0] for d in decisions)
    after = text[text.index("ASWA summary") :]
    best, last = aswa.best_score, aswa.history[-1]["running"]
    assert (
        f"val_loss: ensemble {best:.6g}, running model at the last check {last:.6g}"
        in after
    )
    if aswa.ensemble_size == 1:
        start = next(
            r for r in reversed(aswa.history) if r["decision"] in ("init", "hard")
        )
        assert (
            "no averaging: the ensemble is the running model at step "
            f"{start['step']}" in summary[0]
        )
    else:
        assert f"the ensemble averages {aswa.ensemble_size} snapshots" in summary[0]
    added = re.search(r"time added: ([\d.]+) s, ([\d.]+)% of the fit's", after)
    seconds = aswa.timing["checks"] + aswa.timing["warm_up"]
    assert abs(float(added.group(1)) - seconds) < 0.06
    assert abs(float(added.group(2)) - 100 * seconds / aswa.timing["fit"]) < 0.06
