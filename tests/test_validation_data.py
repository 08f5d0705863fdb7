"""The callback's validation_data takes what fit's validation_data takes,
and what it cannot use is refused before training where possible."""

import keras
import numpy as np
import pytest
from scenarios import BatchCounter, aswa_run, regression_data

from keras_aswa import ASWA


def callback_data():
    _, (xv, yv) = regression_data()
    return xv[:96], yv[:96] * 1.5  # not fit's validation data


def run(validation_data, epochs=3):
    aswa = ASWA(validation_data=validation_data)
    model = aswa_run([aswa], epochs=epochs)
    return aswa, [keras.ops.convert_to_numpy(v) for v in model.weights]


def assert_same_run(a, b):
    (cb_a, w_a), (cb_b, w_b) = a, b
    assert [h["decision"] for h in cb_a.history] == [
        h["decision"] for h in cb_b.history
    ]
    for h_a, h_b in zip(cb_a.history, cb_b.history, strict=True):
        assert h_a["running"] == pytest.approx(h_b["running"], rel=1e-6)
    for x, y in zip(w_a, w_b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_a_list_is_a_tuple():
    xv, yv = callback_data()
    weights = np.linspace(0.5, 1.5, len(xv)).astype("float32")
    assert_same_run(run([xv, yv]), run((xv, yv)))
    assert_same_run(run([xv, yv, weights]), run((xv, yv, weights)))


def test_flat_labels_beside_fits_column_labels():
    # fit's labels are (n, 1); the callback's (n,), which the loss accepts.
    xv, yv = callback_data()
    flat = run((xv, yv[:, 0]))
    assert_same_run(flat, run((xv, yv)))


def test_flat_labels_in_a_dataset():
    tf = pytest.importorskip("tensorflow")
    xv, yv = callback_data()
    ds = tf.data.Dataset.from_tensor_slices((xv, yv[:, 0])).batch(32)
    assert_same_run(run(ds), run((xv, yv)))


@pytest.mark.parametrize("shape", ["bare", "1-tuple", "1-list"])
def test_arrays_without_labels_stop_fit_before_training(shape):
    xv, _ = callback_data()
    data = {"bare": xv, "1-tuple": (xv,), "1-list": [xv]}[shape]
    counter = BatchCounter()
    with pytest.raises(ValueError, match=r"no labels: pass validation_data=\(x_val"):
        aswa_run([counter, ASWA(validation_data=data)], epochs=2)
    assert counter.batches == 0


@pytest.mark.parametrize("n", [0, 4])
def test_wrong_number_of_items_is_refused_at_construction(n):
    xv, yv = callback_data()
    with pytest.raises(ValueError, match=r"\(x_val, y_val\).*of 4 items|of 0 items"):
        ASWA(validation_data=(xv, yv, yv, yv)[:n])


def test_arrays_of_different_lengths_are_refused_at_construction():
    xv, yv = callback_data()
    with pytest.raises(ValueError, match="same number of samples") as info:
        ASWA(validation_data=[xv, yv[:50]])
    assert "'x': 96" in str(info.value) and "'y': 50" in str(info.value)


def test_data_the_model_cannot_take_says_what_validation_data_takes():
    xv, yv = callback_data()
    with pytest.raises(ValueError, match="callback's validation_data failed") as info:
        aswa_run([ASWA(validation_data=(xv[:, :5], yv))], epochs=1)
    assert "takes what fit's validation_data takes" in str(info.value)
