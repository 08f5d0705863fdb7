"""The cost benchmark's workload and the variants it times (Keras).

`plain`, `eval` (`EvalOnly`), `aswa` (`ASWA`) and `naive` (`NaiveASWA`, ASWA
done the way the authors' code does it), each a list of callbacks for one
fit of the same `Workload`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time

import keras
import numpy as np
from keras import ops

from benchmarks import machine
from benchmarks.overhead.config import Config
from keras_aswa import ASWA


def load_data(cfg: Config):
    """`(x_train, y_train, x_val, y_val, description)`, images flattened to 784."""
    n = cfg.n_train + cfg.n_val
    if cfg.data in ("auto", "fashion"):
        from benchmarks.datasets import load_fashion_mnist

        try:
            (x, y), _ = load_fashion_mnist()
            x = (x[:n].reshape(n, -1) / 255.0).astype("float32")
            y = y[:n]
            source = "Fashion-MNIST"
        except FileNotFoundError:
            if cfg.data == "fashion":
                raise
            x = None
    if cfg.data == "random" or (cfg.data == "auto" and x is None):
        # Labels from a fixed random linear teacher, so there is something
        # to learn and the validation loss moves.
        rng = np.random.default_rng(cfg.seed)
        x = rng.random((n, 784), dtype=np.float32)
        y = np.argmax((x - 0.5) @ rng.normal(size=(784, 10)), axis=1)
        source = "random"
    t = cfg.n_train
    return x[:t], y[:t], x[t:], y[t:], f"{source} {t} train / {cfg.n_val} validation"


def build_model(cfg: Config):
    """The compiled MLP, its optimizer built; the same seed, the same weights."""
    keras.utils.set_random_seed(cfg.seed)
    layers = [keras.Input((784,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in cfg.hidden]
    layers += [keras.layers.Dense(10)]
    model = keras.Sequential(layers)
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.optimizer.build(model.trainable_variables)
    return model


class Workload:
    """Data, one compiled model and its initial state, reset before each fit."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.x, self.y, self.xv, self.yv, self.data = load_data(cfg)
        self.model = build_model(cfg)
        self.state = [ops.convert_to_numpy(v.value) for v in self._variables()]

    def _variables(self):
        return list(self.model.weights) + list(self.model.optimizer.variables)

    def reset(self):
        for v, value in zip(self._variables(), self.state, strict=True):
            v.assign(value)
        keras.utils.set_random_seed(self.cfg.seed)

    def fit(self, callbacks=(), epochs=None):
        self.model.fit(
            self.x,
            self.y,
            validation_data=(self.xv, self.yv),
            batch_size=self.cfg.batch_size,
            epochs=epochs or self.cfg.epochs,
            callbacks=list(callbacks),
            verbose=0,
        )

    def evaluate(self):
        return self.model.evaluate(
            self.xv, self.yv, batch_size=self.cfg.batch_size, verbose=0
        )


# --------------------------------------------------------------------------
# the naive reimplementation
# --------------------------------------------------------------------------


def _beats(a, b):
    # val_loss, min_delta=0: strictly lower; NaN/inf never win, always lose.
    return math.isfinite(a) and (b is None or not math.isfinite(b) or a < b)


class NaiveASWA(keras.callbacks.Callback):
    """ASWA on val_loss as the authors' code does it, through host copies.

    At each epoch end: evaluate the running model again, copy its weights to
    host (`get_weights`), build the provisional average in numpy, write it in
    (`set_weights`), evaluate, decide, write the running weights back. At the
    end of training the model receives the ensemble (with `restore`).
    """

    def __init__(self, x_val, y_val, batch_size, restore=True):
        super().__init__()
        self.x_val, self.y_val, self.batch_size = x_val, y_val, batch_size
        self.restore = restore

    def on_train_begin(self, logs=None):
        self.ensemble, self.count, self.best = None, 0, None
        self.decisions, self.running, self.provisional = [], [], []

    def _score(self):
        results = self.model.evaluate(
            self.x_val,
            self.y_val,
            batch_size=self.batch_size,
            verbose=0,
            return_dict=True,
        )
        return float(results["loss"])

    def on_epoch_end(self, epoch, logs=None):
        running = self._score()
        theta = self.model.get_weights()
        floats = [np.issubdtype(t.dtype, np.floating) for t in theta]
        provisional = None
        if self.ensemble is None:
            decision = "init"
        else:
            n = self.count
            prov = [
                e + (t.astype(e.dtype) - e) / (n + 1) if f else t
                for e, t, f in zip(self.ensemble, theta, floats, strict=True)
            ]
            self.model.set_weights(
                [p.astype(t.dtype) for p, t in zip(prov, theta, strict=True)]
            )
            provisional = self._score()
            if _beats(running, provisional) and _beats(running, self.best):
                decision = "hard"
            elif _beats(provisional, self.best):
                decision = "soft"
                self.ensemble, self.count, self.best = prov, n + 1, provisional
            else:
                decision = "reject"
            self.model.set_weights(theta)
        if decision in ("init", "hard"):
            acc = [np.float64 if t.dtype == np.float64 else np.float32 for t in theta]
            self.ensemble = [
                t.astype(a) if f else t
                for t, a, f in zip(theta, acc, floats, strict=True)
            ]
            self.count, self.best = 1, running
        self.decisions.append(decision)
        self.running.append(running)
        self.provisional.append(provisional)

    def on_train_end(self, logs=None):
        if self.restore and self.ensemble is not None:
            theta = self.model.get_weights()
            self.model.set_weights(
                [e.astype(t.dtype) for e, t in zip(self.ensemble, theta, strict=True)]
            )


class EvalOnly(keras.callbacks.Callback):
    """What ASWA cannot avoid: at each epoch end after the first, one more
    evaluation on fit's validation data, made as ASWA makes it (the cached
    iterator and compiled test function), and nothing else."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch > 0:
            self.model.evaluate(
                verbose=0, return_dict=True, _use_cached_eval_dataset=True
            )


class Clock(keras.callbacks.Callback):
    """Timestamps of epoch ends. One placed first and one last bracket the
    epoch ends of the callbacks between them. (By then fit's validation has
    returned floats, so JAX's asynchronous training steps have finished.)"""

    def __init__(self):
        super().__init__()
        self.epoch_end = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_end.append(time.perf_counter())


def variant_callbacks(name: str, w: Workload, restore=True):
    """The callbacks of variant `name` (`VARIANTS`) for one fit."""
    if name == "plain":
        return []
    if name == "eval":
        return [EvalOnly()]
    if name == "aswa":
        return [ASWA(restore_best=restore)]
    if name == "naive":
        return [NaiveASWA(w.xv, w.yv, w.cfg.batch_size, restore=restore)]
    raise ValueError(name)


def log(msg):
    """A progress line on stderr, with the backend."""
    print(f"[{keras.backend.backend()}] {msg}", file=sys.stderr, flush=True)


def versions() -> dict:
    """Keras', the backend's and numpy's versions; torch's thread count."""
    backend = keras.backend.backend()
    out = machine.versions("keras", backend, "numpy")
    if backend == "torch":
        import torch

        out["torch threads"] = torch.get_num_threads()
    return out


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to `n` within (None, or not torch: as is)."""
    if keras.backend.backend() != "torch" or not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
