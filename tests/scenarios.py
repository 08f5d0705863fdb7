"""Seeded training runs shared by the tests and the cross-backend check.

Everything random is drawn with numpy, so a run starts from the same weights
and sees the same batches on every backend.
"""

from __future__ import annotations

import math

import keras
import numpy as np


def regression_data(seed: int = 0, n_train: int = 256, n_val: int = 128):
    """A noisy non-linear regression problem: (x, y), (x_val, y_val)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 1))

    def draw(n):
        x = rng.normal(size=(n, 8)).astype("float32")
        y = np.tanh(x @ w) + 0.5 * rng.normal(size=(n, 1))
        return x, y.astype("float32")

    return draw(n_train), draw(n_val)


def regression_model(seed: int = 0, dtype=None, extra_layers=()):
    """Dense -> BatchNorm -> Dense, weights drawn with numpy from `seed`."""
    rng = np.random.default_rng(seed + 1)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="tanh", dtype=dtype),
            keras.layers.BatchNormalization(dtype=dtype),
            *extra_layers,
            keras.layers.Dense(1, dtype=dtype),
        ]
    )
    set_numpy_weights(model, rng)
    return model


def set_numpy_weights(model, rng):
    """Draws every float weight with numpy (variances kept positive)."""
    values = []
    for v in model.weights:
        dtype = keras.backend.standardize_dtype(v.dtype)
        if not keras.backend.is_float_dtype(dtype):
            values.append(keras.ops.convert_to_numpy(v))
            continue
        value = rng.normal(scale=0.5, size=v.shape)
        if "variance" in v.path:
            value = np.abs(value) + 0.5
        values.append(value.astype("float32"))
    model.set_weights(values)


# An Adam run whose ASWA decisions include init, hard, soft and reject, with
# a margin between compared scores far above cross-backend float noise.
ADAM_LR = 0.03
EPOCHS = 12
BATCH_SIZE = 32


def fit_regression(model, callbacks, seed: int = 0, epochs: int = EPOCHS, **fit_kw):
    """Fits a compiled `model` on the regression data, unshuffled; returns it."""
    (x, y), (xv, yv) = regression_data(seed)
    fit_kw.setdefault("validation_data", (xv, yv))
    fit_kw.setdefault("shuffle", False)
    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        verbose=0,
        callbacks=callbacks,
        **fit_kw,
    )
    return model


def aswa_run(
    callbacks,
    seed: int = 0,
    dtype=None,
    epochs: int = EPOCHS,
    optimizer=None,
    model=None,
    **fit_kw,
):
    """Trains `model` (by default the regression model of `seed`), compiled
    with `optimizer` (see `compiled_model`), with `callbacks`; returns it."""
    model = regression_model(seed, dtype=dtype) if model is None else model
    compiled_model(model, optimizer)
    return fit_regression(model, callbacks, seed, epochs, **fit_kw)


BN_EPSILON = 1e-3  # Keras' BatchNormalization default


def numpy_mse(weights, x, y):
    """The regression model's loss computed in numpy, independently of Keras.

    `weights` in the order of `model.weights`: Dense kernel and bias, BN gamma,
    beta, moving mean and variance, Dense kernel and bias.
    """
    k1, b1, gamma, beta, mean, var, k2, b2 = (
        np.asarray(w, np.float64) for w in weights
    )
    h = np.tanh(x @ k1 + b1)
    h = (h - mean) / np.sqrt(var + BN_EPSILON) * gamma + beta
    return float(np.mean((h @ k2 + b2 - y) ** 2))


def replay(snapshots, history, float_mask, mode="min", min_delta=0.0):
    """ASWA replayed in numpy from the running snapshots and recorded scores.

    `snapshots` are keyed by epoch, or by step for step-level records. A
    score improves on another by more than `min_delta`. Returns the final
    ensemble and the provisional ensembles built, by the same keys.
    """

    def better(a, b):
        if not math.isfinite(a):
            return False
        if not math.isfinite(b):
            return True
        return a + min_delta < b if mode == "min" else a - min_delta > b

    ensemble, n, best, provisionals = None, 0, None, {}
    for record in history:
        theta = snapshots[record.get("step", record["epoch"])]
        r = record["running"]
        if ensemble is None:
            ensemble, n, best = [t.astype(np.float32) for t in theta], 1, r
            assert record["decision"] == "init"
            continue
        prov = [
            e + (t.astype(np.float32) - e) / np.float32(n + 1) if f else t
            for e, t, f in zip(ensemble, theta, float_mask, strict=True)
        ]
        provisionals[record.get("step", record["epoch"])] = prov
        p = record["provisional"]
        if better(r, p) and better(r, best):
            expected, ensemble, n, best = (
                "hard",
                [t.astype(np.float32) for t in theta],
                1,
                r,
            )
        elif better(p, best):
            expected, ensemble, n, best = "soft", prov, n + 1, p
        else:
            expected = "reject"
        assert record["decision"] == expected, record
        assert record["ensemble_size"] == n
        assert record["ensemble_score"] == best
    return ensemble, provisionals


def compiled_model(model=None, optimizer=None, loss="mse", **compile_kw):
    """`model` (by default the regression model) compiled: the tests' one
    compile line.

    Args:
        model: The model to compile; None for `regression_model()`.
        optimizer: None for `Adam(ADAM_LR)`.
        loss: The loss (MSE by default).
        **compile_kw: Passed on to `compile` (metrics, ...).

    Returns:
        The model.
    """
    model = regression_model() if model is None else model
    optimizer = keras.optimizers.Adam(ADAM_LR) if optimizer is None else optimizer
    model.compile(optimizer, loss, **compile_kw)
    return model


def weights(model) -> list:
    """The model's weights as numpy arrays, in the order of `model.weights`."""
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


def held_paths(callback, model) -> list:
    """The paths of the variables `callback`'s ensemble holds, seen from
    outside: `ensemble_weights()` reports the running values of the others,
    so those follow a change of the model's variables, and the held ones do
    not. The model's variables are put back afterwards."""
    saved = [keras.ops.convert_to_numpy(v) for v in model.weights]
    try:
        for v, value in zip(model.weights, saved, strict=True):
            v.assign((value + 1).astype(value.dtype))
        moved = [keras.ops.convert_to_numpy(v) for v in model.weights]
        ensemble = callback.ensemble_weights()
    finally:
        for v, value in zip(model.weights, saved, strict=True):
            v.assign(value)
    return [
        v.path
        for v, e, m in zip(model.weights, ensemble, moved, strict=True)
        if not np.array_equal(np.asarray(e, m.dtype), m)
    ]


class Crash(keras.callbacks.Callback):
    """Kills the run (an in-process `RuntimeError("preempted")`) after batch
    `batch` of `epoch`, or at the end of `epoch` where `batch` is None."""

    def __init__(self, epoch, batch=None):
        super().__init__()
        self.crash_epoch, self.crash_batch = epoch, batch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (self.crash_epoch, self.crash_batch):
            raise RuntimeError("preempted")

    def on_epoch_end(self, epoch, logs=None):
        if self.crash_batch is None and epoch == self.crash_epoch:
            raise RuntimeError("preempted")


class BatchCounter(keras.callbacks.Callback):
    """Counts the training batches run: whether `fit` trained at all."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


class SnapshotRecorder(keras.callbacks.Callback):
    """Records the running weights at each epoch end (place before ASWA)."""

    def __init__(self):
        super().__init__()
        self.snapshots = {}

    def on_epoch_end(self, epoch, logs=None):
        self.snapshots[epoch] = [
            keras.ops.convert_to_numpy(keras.ops.cast(v, "float32"))
            if keras.backend.is_float_dtype(v.dtype)
            else keras.ops.convert_to_numpy(v)
            for v in self.model.weights
        ]


def aswa_decisions() -> dict:
    """The reference ASWA run's decisions and scores, JSON-ready."""
    from keras_aswa import ASWA

    aswa = ASWA()
    model = aswa_run([aswa])
    return {
        "backend": keras.backend.backend(),
        "decisions": [h["decision"] for h in aswa.history],
        "running": [h["running"] for h in aswa.history],
        "weights": [w.tolist() for w in model.get_weights()],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(aswa_decisions()))
