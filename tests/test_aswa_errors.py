"""Bad input gets a clear error, before training is wasted where possible."""

import math

import numpy as np
import pytest
from scenarios import (
    BatchCounter,
    aswa_run,
    compiled_model,
    regression_data,
)

from keras_aswa import ASWA


def test_no_validation_anywhere_fails_before_training():
    (x, y), _ = regression_data()
    counter = BatchCounter()
    with pytest.raises(ValueError, match="validation_split") as info:
        compiled_model().fit(x, y, epochs=2, verbose=0, callbacks=[counter, ASWA()])
    assert "score_fn" in str(info.value)
    assert counter.batches == 0


def test_monitor_missing_from_logs_names_the_keys():
    with pytest.raises(ValueError, match="val_loss") as info:
        aswa_run([ASWA(monitor="val_accuracy", mode="max")], epochs=2)
    assert "not in the epoch logs" in str(info.value)


def test_monitor_without_direction_asks_for_mode():
    with pytest.raises(ValueError, match="mode='max'"):
        aswa_run([ASWA(monitor="val_mystery")], epochs=1)


def test_monitor_must_be_a_validation_quantity():
    with pytest.raises(ValueError, match="validation quantity"):
        ASWA(monitor="loss")


@pytest.mark.parametrize("mode", ["minimum", "", None])
def test_unknown_mode(mode):
    with pytest.raises(ValueError, match="mode="):
        ASWA(mode=mode)


@pytest.mark.parametrize("start", [-1, 1.5, "3"])
def test_bad_start_from_epoch(start):
    with pytest.raises(ValueError, match="start_from_epoch"):
        ASWA(start_from_epoch=start)


def test_validation_data_and_score_fn_together():
    with pytest.raises(ValueError, match="either"):
        ASWA(validation_data=regression_data()[1], score_fn=lambda m: 0.0)


def test_score_fn_must_be_callable():
    with pytest.raises(TypeError, match="callable"):
        ASWA(score_fn=0.5)


@pytest.mark.parametrize("bad", ["0.5", [0.1, 0.2], None, np.zeros(3)])
def test_score_fn_returning_no_scalar(bad):
    aswa = ASWA(monitor="val_score", mode="max", score_fn=lambda model: bad)
    with pytest.raises(TypeError, match="single real number"):
        aswa_run([aswa], epochs=1)


def test_score_fn_nan_and_inf_follow_the_contract():
    scores = iter([math.nan, 1.0, math.inf, 2.0, -math.inf, 0.5, 0.5])

    aswa = ASWA(monitor="val_score", mode="max", score_fn=lambda model: next(scores))
    aswa_run([aswa], epochs=4)
    # Epoch 0: NaN never initialises. Epoch 1: init at 1.0. Epoch 2: running
    # inf loses, provisional 2.0 wins (soft). Epoch 3: running -inf loses,
    # provisional 0.5 does not beat 2.0 (reject).
    assert [h["decision"] for h in aswa.history] == ["skip", "init", "soft", "reject"]
    assert aswa.best_score == 2.0 and aswa.ensemble_size == 2


def test_apply_before_training_says_what_to_do():
    with pytest.raises(RuntimeError, match="fit"):
        ASWA().apply_ensemble()
    with pytest.raises(RuntimeError, match="fit"):
        ASWA().ensemble_weights()
