"""update_freq="auto", the warnings found before training, and what a
step-level ASWA prints and logs."""

import contextlib
import io
import re
import warnings

import keras
import numpy as np
import pytest
from scenarios import compiled_model, regression_data, regression_model

from keras_aswa import ASWA, SWA

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


def expected_choice(chosen, check_budget, steps, k_there):
    """N and K by the documented rule, from the timings the callback took:
    a check is two evaluations, each `fixed + per_batch * K` seconds."""
    rate = check_budget * chosen["step_seconds"]
    cost = chosen["evaluation_seconds"]
    fixed, per_batch = cost["fixed"], cost["per_batch"]

    def affordable(every):
        spare = rate * every / 2 - fixed
        if spare < 0:
            return 0
        return 32 if per_batch == 0 else int(np.floor(spare / per_batch))

    floor_every = steps // 2
    if affordable(steps // 8) >= min(k_there, 8):  # eight checks an epoch
        k = min(k_there, 32, affordable(steps // 8))
    elif affordable(floor_every) >= min(k_there, 8):  # two at least
        k = min(k_there, 8)
    else:  # one check an epoch on 8 batches, over the budget if need be
        floor_every = steps
        k = min(k_there, 8)
    every = floor_every
    if rate > 0:
        check = 2 * (fixed + per_batch * k)
        every = min(floor_every, max(1, int(np.ceil(check / rate))))
    return every, k


class SlowTraining(keras.layers.Layer):
    """Makes a training step cost far more than an evaluation: some batches
    of validation then fit the budget, and K falls between its bounds."""

    def call(self, x, training=False):
        if training:
            square = keras.ops.ones((1024, 1024)) * keras.ops.mean(x)
            x = x + 0.0 * keras.ops.mean(keras.ops.matmul(square, square))
        return x


@pytest.mark.parametrize(
    "model, budget, there",
    [("built", 0.1, 8), ("subclassed-unbuilt", 0.1, 8), ("slow-training", 0.3, 48)],
)
def test_auto_chooses_n_and_k_by_its_rule(model, budget, there):
    xv, yv = np.tile(XV, (there // 8, 1)), np.tile(YV, (there // 8, 1))
    aswa = ASWA(update_freq="auto", validation_data=(xv, yv), check_budget=budget)
    assert aswa.timing == {}  # filled when a fit ends
    models = {
        "built": regression_model,
        "subclassed-unbuilt": Subclassed,
        "slow-training": lambda: regression_model(extra_layers=[SlowTraining()]),
    }
    fit([aswa], model=models[model]())
    chosen = aswa._chosen
    steps = len(X) // 32
    # K at most the validation batches there are (of 32).
    assert (aswa.update_every, chosen["validation_steps"]) == expected_choice(
        chosen, aswa.check_budget, steps, there
    )
    assert chosen["warm_up_seconds"] > 0
    # Checks at the multiples of N from the sixth batch on, where N was
    # chosen (a multiple before it passed unchecked).
    every = aswa.update_every
    checked = [s for s in range(every, 2 * steps + 1, every) if s >= 6]
    assert [r["step"] for r in aswa.history] == checked
    assert set(aswa.timing) == {"fit", "checks", "warm_up"}
    assert aswa.timing["warm_up"] == chosen["warm_up_seconds"]
    assert aswa.timing["checks"] > 0


def test_auto_within_a_tiny_budget_checks_once_an_epoch_on_8_batches():
    # Not even one check an epoch (of 32 batches) fits: the floor, one check
    # an epoch on 8 of the 16 validation batches, over the budget.
    xv, yv = np.tile(XV, (2, 1)), np.tile(YV, (2, 1))
    aswa = ASWA(update_freq="auto", validation_data=(xv, yv), check_budget=1e-9)
    fit([aswa])
    assert (aswa.update_every, aswa._chosen["validation_steps"]) == (32, 8)


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
    assert aswa._chosen["validation_steps"] == 3


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
    assert f"ensemble of {aswa.ensemble_size} snapshot(s)" in summary[0]
    share = float(re.search(r"([\d.]+)% of the fit", summary[0]).group(1))
    expected = 100 * aswa.timing["checks"] / aswa.timing["fit"]
    assert abs(share - expected) < 0.06
