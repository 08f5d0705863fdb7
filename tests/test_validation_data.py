"""The callback's validation_data takes what fit's validation_data takes,
and what it cannot use is refused before training where possible."""

import math
import warnings

import keras
import numpy as np
import pytest
from scenarios import BatchCounter, aswa_run, regression_data

from keras_aswa import ASWA


def callback_data():
    _, (xv, yv) = regression_data()
    return xv[:96], yv[:96] * 1.5  # not fit's validation data


def run(validation_data, epochs=3, **aswa_kw):
    aswa = ASWA(validation_data=validation_data, **aswa_kw)
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


# --- Data each evaluation cannot use -----------------------------------------


class Cycled(keras.utils.PyDataset):
    """The callback's data in its 3 batches of 32, cycled; `__len__` answers
    `length`, or raises it if it is an exception."""

    def __init__(self, length=3):
        super().__init__()
        self.xv, self.yv = callback_data()
        self.length = length

    def __len__(self):
        if isinstance(self.length, Exception):
            raise self.length
        return self.length

    def __getitem__(self, i):
        start = i % 3 * 32
        return self.xv[start : start + 32], self.yv[start : start + 32]


class Endless(Cycled):
    @property
    def num_batches(self):
        return None  # how Keras 3 marks an infinite PyDataset


def tf_batches(xv, yv):
    tf = pytest.importorskip("tensorflow")
    return tf.data.Dataset.from_tensor_slices((xv, yv)).batch(32)


@pytest.fixture(scope="module")
def whole_run():
    """A 2-epoch run scored on all of the callback's data, as arrays."""
    return run(callback_data(), epochs=2)


@pytest.fixture(scope="module")
def two_batches_run():
    """The same, scored on its first 2 batches of 32."""
    xv, yv = callback_data()
    return run((xv[:64], yv[:64]), epochs=2)


def infinite_data(kind):
    return {
        "tf_data": lambda: tf_batches(*callback_data()).repeat(),
        "py_dataset": Endless,
    }[kind]()


@pytest.mark.parametrize("kind", ["tf_data", "py_dataset"])
def test_infinite_data_without_validation_steps_is_refused_at_construction(kind):
    # Each evaluation would otherwise never end, silently.
    with pytest.raises(ValueError, match=r"infinite.*pass validation_steps="):
        ASWA(validation_data=infinite_data(kind))


@pytest.mark.parametrize("kind", ["tf_data", "py_dataset"])
def test_infinite_data_with_validation_steps_scores_those_batches(
    kind, two_batches_run
):
    scored = run(infinite_data(kind), validation_steps=2, epochs=2)
    assert_same_run(scored, two_batches_run)


@pytest.mark.parametrize("length", [math.inf, NotImplementedError("no length")])
def test_a_py_dataset_without_a_number_of_batches_is_refused_at_construction(length):
    # Keras reads num_batches (by default len()) even with validation_steps.
    with pytest.raises(ValueError, match=r"num_batches.*None.*validation_steps="):
        ASWA(validation_data=Cycled(length), validation_steps=2)


# Keras says so at the end of any dataset of unknown length.
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_a_dataset_of_unknown_length_is_evaluated_whole(whole_run):
    ds = tf_batches(*callback_data()).filter(lambda x, y: True)
    assert_same_run(run(ds, epochs=2), whole_run)


def empty_data(kind):
    xv, yv = callback_data()
    xv, yv = xv[:0], yv[:0]

    def torch_dataloader():
        import torch

        dataset = torch.utils.data.TensorDataset(
            torch.from_numpy(xv), torch.from_numpy(yv)
        )
        return torch.utils.data.DataLoader(dataset, batch_size=32)

    return {
        "arrays": lambda: (xv, yv),
        "tf_data": lambda: tf_batches(xv, yv),
        "py_dataset": lambda: Cycled(0),
        "torch_dataloader": torch_dataloader,
    }[kind]()


@pytest.mark.parametrize("steps", [None, 2])
@pytest.mark.parametrize(
    "kind", ["arrays", "tf_data", "py_dataset", "torch_dataloader"]
)
def test_empty_data_is_refused_at_construction(kind, steps):
    with pytest.raises(ValueError, match="validation_data is empty"):
        ASWA(validation_data=empty_data(kind), validation_steps=steps)


@pytest.mark.parametrize("kind", ["generator", "iterator"])
def test_one_shot_iterators_are_refused_at_construction(kind):
    # The first evaluation would use it up, and the second find it empty.
    xv, yv = callback_data()
    batches = [(xv[:48], yv[:48]), (xv[48:], yv[48:])]
    data = {"generator": (b for b in batches), "iterator": iter(batches)}[kind]
    with pytest.raises(ValueError, match="iterated again") as info:
        ASWA(validation_data=data)
    assert "tf.data.Dataset" in str(info.value) and "PyDataset" in str(info.value)


@pytest.mark.parametrize("kind", ["arrays", "tf_data", "py_dataset"])
def test_validation_steps_beyond_the_data_are_clamped_with_one_warning(kind, whole_run):
    # 3 batches of 32: each evaluation scores them all, and Keras never warns
    # that the input ran out of data.
    xv, yv = callback_data()
    data = {
        "arrays": lambda: (xv, yv),
        "tf_data": lambda: tf_batches(xv, yv),
        "py_dataset": Cycled,
    }[kind]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clamped = run(data, validation_steps=5, epochs=2)
    messages = [str(w.message) for w in caught]
    ours = [m for m in messages if "validation_steps=5" in m]
    assert len(ours) == 1 and "3 batches" in ours[0], messages
    assert not [m for m in messages if "ran out of data" in m]
    assert_same_run(clamped, whole_run)
