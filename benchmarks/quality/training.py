"""Training for the quality benchmark: data, models, fit, scores, callbacks.

Everything here needs Keras (the backend is fixed at its first import).
"""

from __future__ import annotations

import time

import keras
import numpy as np

from benchmarks import kg as kglib
from benchmarks.datasets import (
    load_digits,
    load_fashion_mnist,
    load_kg,
    split_validation,
)
from benchmarks.quality.config import KG_DATASETS, STEP_MONITOR, Config
from keras_aswa import ASWA


def load_data(dataset: str, smoke: bool) -> dict:
    """Train/validation/test data; validation is carved from training data.

    Splits are fixed (seed 0), so seeds vary only initialisation and batch
    order, and every method of a seed sees exactly the same data.
    """
    if dataset in KG_DATASETS:
        graph = load_kg(dataset)
        x, y = kglib.kvsall_data(graph)
        # The graphs' own validation split (held out from training triples).
        return {
            "kg": graph,
            "x": x,
            "y": y,
            "valid_score": kglib.make_score_fn(graph, "valid"),
            "test_queries": kglib.RankingQueries(graph, "test"),
        }
    if dataset == "fashion_mnist":
        (x, y), (x_test, y_test) = load_fashion_mnist()
        x = (x[..., None] / 255.0).astype("float32")
        x_test = (x_test[..., None] / 255.0).astype("float32")
        (x_train, y_train), (x_val, y_val) = split_validation(
            x, y, 0.1, seed=0, stratify=True
        )
    elif dataset == "digits":
        x, y = load_digits(images=True)
        x = x[..., None]
        # digits has no test split: hold out 20 %, then 10 % of the rest.
        (x, y), (x_test, y_test) = split_validation(x, y, 0.2, seed=0, stratify=True)
        (x_train, y_train), (x_val, y_val) = split_validation(
            x, y, 0.1, seed=0, stratify=True
        )
    else:
        raise ValueError(f"unknown data set {dataset!r}")
    if smoke:
        x_train, y_train = x_train[:512], y_train[:512]
        x_val, y_val = x_val[:128], y_val[:128]
        x_test, y_test = x_test[:256], y_test[:256]
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_val": x_val,
        "y_val": y_val,
        "x_test": x_test,
        "y_test": y_test,
    }


def data_sizes(cfg: Config, data: dict) -> dict:
    """The size of each split, as the report shows it."""
    if cfg.is_kg:
        g = data["kg"]
        return {"train": len(g.train), "valid": len(g.valid), "test": len(g.test)}
    return {s: len(data[f"y_{s}"]) for s in ("train", "val", "test")}


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------


def build_model(cfg: Config, data: dict, seed: int, ema: bool) -> keras.Model:
    """A compiled model; the same seed gives the same initial weights."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    if cfg.is_kg:
        model = kglib.build_kge_model(
            cfg.model, data["kg"], embedding_dim=32, seed=seed, compile=False
        )
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        metrics = []
    else:
        shape = data["x_train"].shape[1:]
        if cfg.model == "mlp":
            body = [
                layers.Flatten(),
                layers.Dense(256, activation="relu"),
                layers.Dense(128, activation="relu"),
            ]
        elif cfg.model == "cnn":
            # Small on purpose: one epoch of 54k images must stay ~15 s on
            # 2 CPU cores. BatchNorm makes its statistics part of the average.
            body = []
            for width in (16, 32):
                body += [
                    layers.Conv2D(width, 3, padding="same", use_bias=False),
                    layers.BatchNormalization(),
                    layers.ReLU(),
                    layers.MaxPooling2D(),
                ]
            body += [layers.Flatten(), layers.Dense(64, activation="relu")]
        else:
            raise ValueError(f"unknown image model {cfg.model!r}")
        model = keras.Sequential(
            [keras.Input(shape), *body, layers.Dense(10)], name=cfg.model
        )
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = ["accuracy"]
    # epsilon 1e-8 as torch's Adam (the reference library's optimizer).
    optimizer = keras.optimizers.Adam(cfg.learning_rate, epsilon=1e-8, use_ema=ema)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


def fit(cfg: Config, data: dict, model: keras.Model, callbacks: list) -> float:
    """Trains; returns the wall time in seconds."""
    start = time.perf_counter()
    if cfg.is_kg:
        model.fit(
            data["x"],
            data["y"],
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            callbacks=callbacks,
            verbose=0,
        )
    else:
        model.fit(
            data["x_train"],
            data["y_train"],
            validation_data=(data["x_val"], data["y_val"]),
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            callbacks=callbacks,
            verbose=0,
        )
    return time.perf_counter() - start


def evaluate(cfg: Config, data: dict, model: keras.Model) -> dict:
    """Test metrics, plus the validation score the methods select on."""
    if cfg.is_kg:
        test = kglib.link_prediction_metrics(model, queries=data["test_queries"])
        return {**test, "val": data["valid_score"](model)}
    test = model.evaluate(
        data["x_test"], data["y_test"], batch_size=1024, verbose=0, return_dict=True
    )
    val = model.evaluate(
        data["x_val"], data["y_val"], batch_size=1024, verbose=0, return_dict=True
    )
    return {"accuracy": float(test["accuracy"]), "val": float(val["accuracy"])}


# --------------------------------------------------------------------------
# callbacks that read methods off one run
# --------------------------------------------------------------------------


class LastWeights(keras.callbacks.Callback):
    """Keeps the running weights of the last epoch.

    Captured at every epoch end because `fit` writes the EMA weights into
    the model (`optimizer.finalize_variable_values`) before `on_train_end`.
    """

    def on_epoch_end(self, epoch, logs=None):
        self.weights = self.model.get_weights()


class BestSnapshot(keras.callbacks.EarlyStopping):
    """`EarlyStopping(restore_best_weights=True)` with unlimited patience.

    Keras' own rule picks the best epoch (first strictly best); the
    snapshot is kept in `best_weights` instead of written at the end, so
    that it can be read off beside the other methods.
    """

    def __init__(self, monitor: str, mode: str):
        super().__init__(
            monitor=monitor, mode=mode, patience=10**9, restore_best_weights=True
        )

    def on_train_end(self, logs=None):
        pass


class ValidationMRR(keras.callbacks.Callback):
    """Logs `val_mrr` for callbacks after it (for a real EarlyStopping run)."""

    def __init__(self, score_fn):
        super().__init__()
        self.score_fn = score_fn

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["val_mrr"] = self.score_fn(self.model)


def make_aswa(cfg: Config, data: dict, restore: bool) -> ASWA:
    """Epoch-level ASWA, on the configuration's monitor (or validation MRR)."""
    if cfg.is_kg:
        # Link prediction: decisions on validation filtered MRR.
        return ASWA(
            monitor="val_mrr",
            mode="max",
            score_fn=data["valid_score"],
            restore_best=restore,
        )
    return ASWA(monitor=cfg.monitor, mode=cfg.mode, restore_best=restore)


class TimedASWA(ASWA):
    """ASWA that adds up the wall time of its decisions (`_act`: scoring,
    bookkeeping, the step counter's check), for the per-check cost."""

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.check_seconds = []

    def _act(self, epoch, step, logs):
        start = time.perf_counter()
        super()._act(epoch, step, logs)
        self.check_seconds.append(time.perf_counter() - start)


def make_step_aswa(cfg: Config, data: dict, n: int | str, restore: bool) -> ASWA:
    """ASWA every `n` training batches on the validation split's first
    `cfg.validation_steps` batches (of 32); with `n="auto"`, N and the
    batches as `update_freq="auto"` chooses them."""
    return TimedASWA(
        monitor=STEP_MONITOR,
        mode="min",
        validation_data=(data["x_val"], data["y_val"]),
        validation_steps=None if n == "auto" else cfg.validation_steps,
        update_freq=n,
        restore_best=restore,
    )


def eval_seconds(cb: ASWA, model, repeats: int = 5) -> float:
    """Median wall time of one evaluation as step-level `cb`'s checks run it
    (its K batches; after one warm-up call)."""
    cb._scorer.current(model)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        cb._scorer.current(model)
        times.append(time.perf_counter() - start)
    return float(np.median(times))
