"""Where scores come from: fit's validation, the callback's data, score_fn."""

import keras
import numpy as np
import pytest
from scenarios import aswa_run, compiled_model, regression_data

from keras_aswa import ASWA
from keras_aswa.scoring import as_score


class ArraySequence(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size=32):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, i):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[s], self.y[s]


def validation_formats():
    _, (xv, yv) = regression_data()
    xv, yv = xv[:96], yv[:96] * 1.5  # not fit's validation data
    formats = {
        "tuple": lambda: (xv, yv),
        "tuple_with_weights": lambda: (xv, yv, np.ones(len(xv), "float32")),
        "py_dataset": lambda: ArraySequence(xv, yv),
        "tf_data": lambda: (
            __import__("tensorflow").data.Dataset.from_tensor_slices((xv, yv)).batch(32)
        ),
    }

    def torch_dataloader():
        import torch

        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.from_numpy(xv), torch.from_numpy(yv)),
            batch_size=32,
        )

    # Keras reads a torch DataLoader on every backend.
    formats["torch_dataloader"] = torch_dataloader
    return (xv, yv), formats


@pytest.mark.parametrize(
    "kind", ["tuple", "tuple_with_weights", "py_dataset", "tf_data", "torch_dataloader"]
)
def test_callback_validation_data_formats(kind):
    (xv, yv), formats = validation_formats()
    aswa = ASWA(validation_data=formats[kind]())
    model = aswa_run([aswa], epochs=3)
    assert [h["decision"] for h in aswa.history][0] == "init"
    # Scored on the callback's data, not fit's: the restored model's loss
    # there is the ensemble's recorded score.
    assert model.evaluate(xv, yv, verbose=0) == pytest.approx(aswa.best_score, rel=1e-5)
    assert aswa.history[0]["running"] != model.history.history["val_loss"][0]


def test_fit_validation_with_dataset_and_validation_steps():
    import tensorflow as tf

    (x, y), (xv, yv) = regression_data()
    ds = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(32)
    aswa = ASWA()
    model = aswa_run([aswa], epochs=3, validation_data=ds, validation_steps=2)
    # The provisional ensemble was scored on the same 2 batches as fit's score:
    # once restored, evaluating those 2 batches gives the ensemble's score.
    assert model.evaluate(ds, steps=2, verbose=0) == pytest.approx(
        aswa.best_score, rel=1e-5
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        (0.5, 0.5),
        (np.float32(2.0), 2.0),
        (np.array([[3.0]]), 3.0),
        (7, 7.0),
        (float("nan"), float("nan")),
        (float("inf"), float("inf")),
    ],
)
def test_as_score_accepts_any_scalar(value, expected):
    got = as_score(value, "score_fn")
    assert got == expected or (np.isnan(got) and np.isnan(expected))


def test_as_score_accepts_backend_tensors():
    assert as_score(keras.ops.convert_to_tensor(1.25), "score_fn") == 1.25


@pytest.mark.parametrize("value", ["1.0", None, [1.0, 2.0], np.zeros(2), {"a": 1}])
def test_as_score_rejects_non_scalars(value):
    with pytest.raises(TypeError, match="single real number"):
        as_score(value, "score_fn")


@pytest.mark.parametrize("inputs", ["array", "list", "dict"])
@pytest.mark.parametrize("steps", [1, 3, 40])
def test_validation_steps_score_the_first_batches(inputs, steps):
    # The K batches are cut from the arrays once (a tf.data.Dataset on
    # TensorFlow); the score is evaluate's on those batches, as numpy slices
    # them, with sample weights and several inputs.
    from keras_aswa.scoring import DataValidation

    rng = np.random.default_rng(0)
    a = rng.normal(size=(100, 3)).astype("float32")
    b = rng.normal(size=(100, 2)).astype("float32")
    y = rng.normal(size=(100, 1)).astype("float32")
    w = rng.uniform(size=100).astype("float32")
    if inputs == "array":
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        x = a
    else:
        ia, ib = keras.Input((3,), name="a"), keras.Input((2,), name="b")
        out = keras.layers.Dense(1)(keras.layers.Concatenate()([ia, ib]))
        model = keras.Model([ia, ib], out)
        x = [a, b] if inputs == "list" else {"a": a, "b": b}
    compiled_model(model, "sgd")
    scorer = DataValidation("val_loss", (x, y, w), batch_size=16, steps=steps)
    with pytest.warns(UserWarning) if steps == 40 else _no_warning():
        scorer.on_train_begin(model)
    n = min(steps * 16, 100)
    first = keras.tree.map_structure(lambda v: v[:n], x)
    expected = model.evaluate(
        first, y[:n], sample_weight=w[:n], batch_size=16, verbose=0
    )
    assert scorer.current(model) == pytest.approx(expected, rel=1e-6)
    assert scorer.current(model) == pytest.approx(expected, rel=1e-6)  # cached


def _no_warning():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def context():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield

    return context()


class BatchCount(keras.metrics.Metric):
    """How many batches an evaluation ran."""

    def __init__(self, name="batch_count"):
        super().__init__(name=name)
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.count.assign_add(1.0)

    def result(self):
        return keras.ops.cast(self.count, self.dtype)


@pytest.mark.parametrize("fit_batch_size, batches", [(None, 5), (8, 5), (64, 2)])
def test_arrays_are_evaluated_in_batches_as_large_as_fits(fit_batch_size, batches):
    # The first 5 batches of 16 (80 samples), in batches of fit's size where
    # that is larger: the same mean over samples, in fewer calls.
    from keras_aswa.scoring import DataValidation

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype("float32")
    y = rng.normal(size=(200, 1)).astype("float32")
    w = rng.uniform(size=200).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    compiled_model(model, "sgd", metrics=[BatchCount()])
    expected = model.evaluate(x[:80], y[:80], sample_weight=w[:80], verbose=0)[0]
    for monitor, value in (("val_loss", expected), ("val_batch_count", batches)):
        scorer = DataValidation(monitor, (x, y, w), batch_size=16, steps=5)
        scorer.on_train_begin(model, {"batch_size": fit_batch_size})
        assert scorer.current(model) == pytest.approx(value, rel=1e-6)
