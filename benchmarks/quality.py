"""Quality benchmark: ASWA against the last running model, early stopping, SWA and EMA.

Full run (benchmarks/results/quality.md: 27 min on 2 cores, 37 under load; TensorFlow
because its CPU convolutions make a Fashion-MNIST CNN epoch ~14 s here, against
~70 s on JAX)::

    python -m benchmarks.quality --backend tensorflow --seeds 1-5 \\
        --out benchmarks/results --img-dir docs/img

The UMLS timing on JAX (its plain fit is 5x faster than TensorFlow's)::

    python -m benchmarks.quality --backend jax --datasets umls --seeds 1-5 \\
        --out benchmarks/out/umls-jax

The step-level study (Fashion-MNIST, its 2-epoch runs too; step-level ASWA
every 50/100/200 batches against EMA and the rest; writes
benchmarks/results/quality-steps.json/.md)::

    python -m benchmarks.quality --steps --backend tensorflow --seeds 1-5 \\
        --timing-repeats 2 --out benchmarks/results

Smoke run (every data set, model and method; tiny data, 3 epochs; <1 min;
writes benchmarks/out/smoke-<backend>)::

    python -m benchmarks.quality --smoke --backend torch

Re-render the report from its JSON, merging the runs above::

    python -m benchmarks.quality --report --out benchmarks/results --include \\
        benchmarks/out/smoke-*/quality.json benchmarks/out/umls-jax/quality.json

What is compared, per data set, model and seed (same data, seed and epochs):

- ``last``: the running model after the last epoch;
- ``early_stopping``: ``EarlyStopping(restore_best_weights=True)`` with
  unlimited patience, i.e. the best-validation epoch's snapshot;
- ``swa``: ``keras_aswa.SWA`` from 50 % of the epochs on;
- ``ema``: the optimizer's own ``use_ema=True`` (Keras' defaults, momentum
  0.99 per step; Keras swaps in the EMA of the trainable weights only);
- ``aswa``: ``keras_aswa.ASWA``;
- ``aswa_n<N>`` (Fashion-MNIST): ``ASWA(update_freq=N)``, deciding every N
  training batches on the first 20 validation batches, on val_loss.

None of them changes the training trajectory, so all five are read off ONE
training run per seed (EMA shadow on the optimizer, ASWA/SWA without
restoring, a recorder for the last and the best weights), then each method's
weights are written into the model and scored on the test set.
`verify_read_off` checks that equivalence against real single-method runs
(exact on all three backends: the callbacks leave the generators that
shuffle the training batches untouched).

Learning rates are constant for the whole run, for every method (SWA's
usual constant-rate phase; Adam 1e-3 for the images, Adam 0.1 for the
knowledge graphs as in the reference setting).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path


def _backend_from_argv(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


# Keras fixes its backend at first import: honour --backend before that.
if __name__ == "__main__" and _backend_from_argv(sys.argv[1:]):
    os.environ["KERAS_BACKEND"] = _backend_from_argv(sys.argv[1:])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import kg as kglib  # noqa: E402
from benchmarks.datasets import (  # noqa: E402
    load_digits,
    load_fashion_mnist,
    load_kg,
    split_validation,
)
from benchmarks.machine import code_version, cpu_model  # noqa: E402
from keras_aswa import ASWA, SWA, plot_history  # noqa: E402
from keras_aswa.scoring import DataValidation  # noqa: E402

METHODS = ("last", "early_stopping", "swa", "ema", "aswa")
METHOD_LABELS = {
    "last": "last running model",
    "early_stopping": "EarlyStopping (best val epoch)",
    "swa": "SWA (from 50 %)",
    "ema": "optimizer EMA (use_ema=True)",
    "aswa": "ASWA",
}
# Step-level ASWA (`update_freq=N`): a Fashion-MNIST epoch is 422 batches of
# 128, so N = 50 / 100 / 200 decide ~8 / 4 / 2 times an epoch. Each check
# scores the running and the provisional model on the first 20 batches of 32
# (640 of the 6000 validation images), on val_loss: at 640 images accuracy
# moves in steps of 1/640 and ties (which never win) are frequent, while the
# loss is continuous.
STEP_FREQS = (50, 100, 200)
STEP_VALIDATION_STEPS = 20
STEP_MONITOR = "val_loss"
# Smoke: 4 batches an epoch, 128 validation images.
SMOKE_STEP_FREQS = (2, 5)
SMOKE_VALIDATION_STEPS = 2


def step_method(n: int) -> str:
    return f"aswa_n{n}"


def method_label(method: str) -> str:
    if method in METHOD_LABELS:
        return METHOD_LABELS[method]
    return f"step ASWA, every {method.removeprefix('aswa_n')} batches"


IMAGE_DATASETS = ("fashion_mnist", "digits")
KG_DATASETS = ("umls", "nations")
DATASETS = IMAGE_DATASETS + KG_DATASETS
KG_METRICS = ("mrr", "hits@1", "hits@3", "hits@10")

# The authors' library (dicee 0.3.3), UMLS, KvsAll, dim 32, Adam 0.1, batch
# 1024, 200 epochs, seed 1: test filtered MRR (from the project's issue).
DICEE_UMLS = {
    "distmult": {"last": 0.602, "swa": 0.675, "aswa": 0.778},
    "complex": {"last": 0.763, "swa": 0.822, "aswa": 0.851},
}
DICEE_ASWA_TIME_RATIO = 6.0


@dataclass(frozen=True)
class Config:
    """One data set / model pair and how it is trained."""

    dataset: str
    model: str
    epochs: int
    batch_size: int
    learning_rate: float
    monitor: str  # what ASWA and early stopping compare
    mode: str
    # Step-level ASWA read off the same run: every N training batches, on
    # the first `validation_steps` batches (of 32) of the validation split.
    step_freqs: tuple[int, ...] = ()
    validation_steps: int | None = None
    variant: str = ""  # e.g. "2ep": a second configuration of one model

    @property
    def key(self) -> str:
        suffix = f"-{self.variant}" if self.variant else ""
        return f"{self.dataset}/{self.model}{suffix}"

    @property
    def methods(self) -> tuple[str, ...]:
        """What is read off this configuration's runs."""
        return METHODS + tuple(step_method(n) for n in self.step_freqs)

    @property
    def is_kg(self) -> bool:
        return self.dataset in KG_DATASETS

    @property
    def metric(self) -> str:
        """The headline test metric."""
        return "mrr" if self.is_kg else "accuracy"


def configs(
    datasets, smoke: bool, steps: bool = False, step_freqs=None, only=None
) -> list[Config]:
    """The benchmark grid, sized for a ~1 h run on 2 shared CPU cores.

    Epoch counts: a Fashion-MNIST CNN epoch costs ~14 s here (TensorFlow),
    so 15 epochs; the MLPs and graphs are cheap. The graphs use the
    reference (dicee) setting. Smoke: 3 epochs, so that SWA averages 2.
    Fashion-MNIST also reads off step-level ASWA (`STEP_FREQS`); `steps`
    (the step-level study) adds 2-epoch runs of both its models, the
    fine-tuning regime.
    """
    freqs = tuple(step_freqs or (SMOKE_STEP_FREQS if smoke else STEP_FREQS))
    vsteps = SMOKE_VALIDATION_STEPS if smoke else STEP_VALIDATION_STEPS
    step = {"step_freqs": freqs, "validation_steps": vsteps}
    grid = []
    for ds in datasets:
        if ds == "fashion_mnist":
            grid += [
                Config(ds, "mlp", 20, 128, 1e-3, "val_accuracy", "max", **step),
                Config(ds, "cnn", 15, 128, 1e-3, "val_accuracy", "max", **step),
            ]
            if steps:  # the cheap 2-epoch runs first
                grid[-2:-2] = [
                    Config(
                        ds,
                        m,
                        2,
                        128,
                        1e-3,
                        "val_accuracy",
                        "max",
                        **step,
                        variant="2ep",
                    )
                    for m in ("mlp", "cnn")
                ]
        elif ds == "digits":
            grid.append(Config(ds, "mlp", 100, 32, 1e-3, "val_accuracy", "max"))
        elif ds in KG_DATASETS:
            grid += [
                Config(ds, m, 200, 1024, 0.1, "val_mrr", "max")
                for m in ("distmult", "complex")
            ]
        else:
            raise ValueError(f"unknown data set {ds!r}; have {DATASETS}")
    if smoke:
        grid = [Config(**{**asdict(c), "epochs": min(c.epochs, 3)}) for c in grid]
    if only:  # these configuration keys, in this order
        by_key = {c.key: c for c in grid}
        grid = [by_key[k] for k in only]
    return grid


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------


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


def make_step_aswa(cfg: Config, data: dict, n: int, restore: bool) -> ASWA:
    """ASWA every `n` training batches on the validation split's first
    `cfg.validation_steps` batches (of 32)."""
    return TimedASWA(
        monitor=STEP_MONITOR,
        mode="min",
        validation_data=(data["x_val"], data["y_val"]),
        validation_steps=cfg.validation_steps,
        update_freq=n,
        restore_best=restore,
    )


def eval_seconds(cfg: Config, data: dict, model, repeats: int = 5) -> float:
    """Median wall time of one evaluation of `validation_steps` batches, as a
    step-level check runs it (after one warm-up call)."""
    scorer = DataValidation(
        STEP_MONITOR, (data["x_val"], data["y_val"]), steps=cfg.validation_steps
    )
    scorer.current(model)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scorer.current(model)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _step_record(cb: ASWA) -> dict:
    decisions = [h["decision"] for h in cb.history]
    secs = getattr(cb, "check_seconds", [])
    return {
        "size": cb.ensemble_size,
        "checks": len(cb.history),
        "decisions": {d: decisions.count(d) for d in sorted(set(decisions))},
        "best_score": _round(cb.best_score),
        "check_seconds_total": round(float(np.sum(secs)), 4),
        "check_seconds_median": round(float(np.median(secs)), 5) if secs else None,
    }


def run_seed(cfg: Config, data: dict, seed: int) -> tuple[dict, dict, ASWA, int]:
    """One training run; every method read off it.

    Returns:
        ``(record, weights, aswa, swa_start)``: the per-seed record (test
        metrics per method, ASWA's decisions), each method's weights, the
        trained ASWA callback (for the plot) and SWA's first epoch.
    """
    model = build_model(cfg, data, seed, ema=True)
    aswa = make_aswa(cfg, data, restore=False)
    swa = SWA(start_from_epoch=0.5, restore=False)
    best = BestSnapshot(cfg.monitor, cfg.mode)
    last = LastWeights()
    steps = {
        step_method(n): make_step_aswa(cfg, data, n, restore=False)
        for n in cfg.step_freqs
    }
    # ASWA first: with score_fn it logs val_mrr for BestSnapshot.
    seconds = fit(cfg, data, model, [aswa, swa, best, last, *steps.values()])
    weights = {
        "last": last.weights,
        "early_stopping": best.best_weights,
        "swa": swa.ensemble_weights(),
        # After fit the model holds the EMA of the trainable weights (and
        # the last running non-trainable ones), exactly as Keras leaves it.
        "ema": model.get_weights(),
        "aswa": aswa.ensemble_weights(),
        **{m: cb.ensemble_weights() for m, cb in steps.items()},
    }
    eval_s = eval_seconds(cfg, data, model) if steps else None
    metrics = {}
    for method in cfg.methods:
        model.set_weights(weights[method])
        metrics[method] = evaluate(cfg, data, model)
    decisions = [h["decision"] for h in aswa.history]
    record = {
        "seed": seed,
        "metrics": metrics,
        "fit_seconds": round(seconds, 2),
        "early_stopping_best_epoch": int(best.best_epoch),
        "swa_size": swa.ensemble_size,
        "aswa_size": aswa.ensemble_size,
        "aswa_decisions": {d: decisions.count(d) for d in sorted(set(decisions))},
        "aswa_history": _columns(aswa.history),
    }
    if steps:
        record["step_aswa"] = {m: _step_record(cb) for m, cb in steps.items()}
        record["eval_seconds"] = round(eval_s, 5)
    return record, weights, aswa, swa.history[0]["epoch"]


def _round(x, digits: int = 5):
    return None if x is None else round(float(x), digits)


HISTORY_KEYS = {  # JSON column <- ASWA.history key
    "epoch": "epoch",
    "decision": "decision",
    "running": "running",
    "provisional": "provisional",
    "ensemble": "ensemble_score",
    "size": "ensemble_size",
}


def _columns(history: list[dict]) -> dict:
    """ASWA's per-epoch records as columns (compact in JSON)."""
    out = {}
    for column, key in HISTORY_KEYS.items():
        values = [h.get(key, h.get(column)) for h in history]
        if column in ("running", "provisional", "ensemble"):
            values = [_round(v) for v in values]
        out[column] = values
    return out


# --------------------------------------------------------------------------
# checks and timings
# --------------------------------------------------------------------------


def verify_read_off(
    cfg: Config, data: dict, seed: int, read_off: dict, methods=METHODS
) -> dict:
    """Compares read-off weights with real runs of each method alone.

    Each real run: same seed, no EMA unless the method is EMA, only that
    method's callback (restoring). Returns per method the largest absolute
    weight difference and the two test scores.
    """
    real_callbacks = {
        "last": lambda: [],
        "ema": lambda: [],
        "early_stopping": lambda: (
            ([ValidationMRR(data["valid_score"])] if cfg.is_kg else [])
            + [
                keras.callbacks.EarlyStopping(
                    monitor=cfg.monitor,
                    mode=cfg.mode,
                    patience=10**9,
                    restore_best_weights=True,
                )
            ]
        ),
        "swa": lambda: [SWA(start_from_epoch=0.5)],
        "aswa": lambda: [make_aswa(cfg, data, restore=True)],
        **{
            step_method(n): (lambda n=n: [make_step_aswa(cfg, data, n, restore=True)])
            for n in cfg.step_freqs
        },
    }
    out = {}
    for method in methods:
        model = build_model(cfg, data, seed, ema=method == "ema")
        fit(cfg, data, model, real_callbacks[method]())
        real = model.get_weights()
        diff = max(
            float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
            for a, b in zip(real, read_off[method], strict=True)
        )
        real_score = evaluate(cfg, data, model)[cfg.metric]
        model.set_weights(read_off[method])
        out[method] = {
            "max_abs_weight_diff": diff,
            "real_run": real_score,
            "read_off": evaluate(cfg, data, model)[cfg.metric],
        }
    return out


def time_kg(
    cfg: Config, data: dict, seed: int, repeats: int, smoke: bool = False
) -> dict:
    """Wall time of a plain fit against a fit with ASWA, fresh models.

    Also (not in smoke mode) a plain fit that logs validation MRR every
    epoch, what early stopping on MRR would cost. Runs alternate; the median
    is reported.
    """
    variants = {"plain": lambda: []}
    if not smoke:
        variants["plain_with_val_mrr"] = lambda: [ValidationMRR(data["valid_score"])]
    variants["aswa"] = lambda: [make_aswa(cfg, data, restore=True)]
    times, median = _time_variants(cfg, data, seed, repeats, variants)
    out = {
        "seconds": times,
        "median": median,
        "aswa_over_plain": median["aswa"] / median["plain"],
    }
    if "plain_with_val_mrr" in median:
        out["aswa_over_plain_with_val_mrr"] = (
            median["aswa"] / median["plain_with_val_mrr"]
        )
    return out


def _time_variants(cfg, data, seed, repeats, variants) -> tuple[dict, dict]:
    """Fit times of each variant's callbacks on fresh models, runs alternating:
    the seconds of every run and their medians, by variant."""
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for name, callbacks in variants.items():
            model = build_model(cfg, data, seed, ema=False)
            times[name].append(round(fit(cfg, data, model, callbacks()), 3))
    median = {k: float(np.median(v)) for k, v in times.items()}
    return times, median


def time_steps(cfg: Config, data: dict, seed: int, repeats: int) -> dict:
    """Wall time of a plain fit against a fit with one step-level ASWA, for
    each N (fresh models, no EMA, fit's own validation in all; runs
    alternate; the median is reported)."""
    variants = {"plain": lambda: []}
    for n in cfg.step_freqs:
        variants[step_method(n)] = lambda n=n: [
            make_step_aswa(cfg, data, n, restore=True)
        ]
    times, median = _time_variants(cfg, data, seed, repeats, variants)
    return {
        "seconds": times,
        "median": median,
        "over_plain": {k: median[k] / median["plain"] for k in variants},
    }


# --------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------


def _paired(a: np.ndarray, b: np.ndarray) -> dict:
    """W/T/L of `a` against `b` seed by seed, mean difference, Wilcoxon p."""
    diff = a - b
    if len(diff) < 2:
        p = None
    elif not np.any(diff):
        p = 1.0
    else:
        from scipy.stats import wilcoxon

        p = float(wilcoxon(diff).pvalue)
    return {
        "wins": int(np.sum(diff > 0)),
        "ties": int(np.sum(diff == 0)),
        "losses": int(np.sum(diff < 0)),
        "mean_diff": float(diff.mean()),
        "wilcoxon_p": p,
    }


def summarize(records: list[dict], metric_names, methods=METHODS) -> dict:
    """Mean and std per method; ASWA's paired comparison on each metric.

    Std is the sample std (ddof=1). Wins/ties/losses compare ASWA with the
    other method seed by seed (exact equality is a tie). The p-value is
    scipy's two-sided Wilcoxon signed-rank test on the paired differences
    (zero differences dropped); None with fewer than 2 seeds, 1.0 when all
    differences are zero. With 5 seeds the smallest possible p is 0.0625.
    With step-level methods, `vs_ema` holds the same comparison of every
    ASWA variant (epoch and step level) against EMA.
    """
    out = {"n_seeds": len(records), "methods": {}}

    def values(method, name):
        return np.array([r["metrics"][method][name] for r in records], float)

    for method in methods:
        entry = {}
        for name in metric_names:
            v = values(method, name)
            entry[name] = {
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            }
            if method != "aswa":
                entry[name].update(_paired(values("aswa", name), v))
        out["methods"][method] = entry
    if len(methods) > len(METHODS):
        out["vs_ema"] = {
            m: {n: _paired(values(m, n), values("ema", n)) for n in metric_names}
            for m in methods
            if m == "aswa" or m not in METHODS
        }
    return out


def metric_names(cfg: Config) -> tuple[str, ...]:
    return KG_METRICS + ("val",) if cfg.is_kg else ("accuracy", "val")


# --------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------


def plot_run(
    cfg: Config, aswa: ASWA, record: dict, swa_start: int, path: Path, dpi: int = 100
):
    """ASWA's running and ensemble validation curves, decisions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = record["metrics"]
    name = cfg.metric
    title = (
        f"{cfg.dataset} {cfg.model}, seed {record['seed']}: test {name} "
        f"last {m['last'][name]:.3f}, SWA {m['swa'][name]:.3f}, "
        f"ASWA {m['aswa'][name]:.3f}"
    )
    fig = plot_history(aswa, title=title, figsize=(9, 5.5))
    top = fig.axes[0]
    top.axvline(swa_start, color="tab:olive", linestyle="--", linewidth=1)
    top.axvline(
        record["early_stopping_best_epoch"],
        color="tab:cyan",
        linestyle=":",
        linewidth=1,
    )
    top.text(
        0.01,
        0.02,
        "dashed: SWA starts; dotted: early stopping's best epoch",
        transform=top.transAxes,
        fontsize="x-small",
        color="0.3",
    )
    top.set_ylabel(f"validation {cfg.monitor.removeprefix('val_')}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """ "1-5" or "1,2,7" or "1-3,9" -> list of ints."""
    seeds = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            seeds += list(range(int(lo), int(hi) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def environment() -> dict:
    backend = keras.backend.backend()
    versions = {"python": platform.python_version(), "keras": keras.__version__}
    for lib in (backend, "numpy", "scipy", "sklearn", "matplotlib"):
        try:
            versions[lib] = __import__(lib).__version__
        except ImportError:
            pass
    versions["keras_aswa"] = code_version()
    return {
        "backend": backend,
        "versions": versions,
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def log(message: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


def run(
    smoke: bool,
    seeds: list[int],
    datasets: list[str],
    out: Path,
    img_dir: Path,
    verify: dict | None = None,
    timing_repeats: int = 3,
    command: str | None = None,
    steps: bool = False,
    step_freqs=None,
    only=None,
) -> dict:
    """Runs the benchmark; writes quality.json, quality.md and the plots.

    With `steps` (the step-level study): the Fashion-MNIST configurations
    plus their 2-epoch runs, no plots, quality-steps.json/.md instead; its
    read-off check covers epoch- and step-level ASWA on the 2-epoch MLP,
    and a plain fit is timed against one with each step-level ASWA there.

    Args:
        verify: Config key ("umls/distmult") -> methods whose read-off is
            checked on the first seed against real single-method runs.
            Default: digits (fit's validation path) and UMLS DistMult
            (score_fn path); every method, only SWA in smoke mode.
        timing_repeats: Repeats of the plain vs ASWA timing (UMLS only;
            DistMult only in smoke mode).
    """
    started = time.perf_counter()
    grid = configs(datasets, smoke, steps, step_freqs, only)
    stem = "quality-steps" if steps else "quality"
    first_step = next((step_method(c.step_freqs[0]) for c in grid if c.step_freqs), "")
    if verify is None and steps:
        verify = {"fashion_mnist/mlp-2ep": ("aswa", first_step)}
    elif verify is None:
        # Smoke: SWA on both scoring paths (fit's validation, score_fn) and
        # one step-level ASWA, kept short; a full run checks every method.
        methods = ("swa",) if smoke else METHODS
        verify = {
            "digits/mlp": methods,
            "umls/distmult": methods,
            "fashion_mnist/mlp": (first_step,),
        }
    timed = ("umls/distmult",) if smoke else ("umls/distmult", "umls/complex")
    timed_steps = ("fashion_mnist/mlp-2ep",) if steps else ()
    result = {
        "smoke": smoke,
        "command": command or " ".join(["python -m benchmarks.quality", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": environment(),
        "seeds": seeds,
        "configs": {},
    }
    if steps:
        result["study"] = "steps"
    out.mkdir(parents=True, exist_ok=True)
    cache = {}
    for cfg in grid:
        if cfg.dataset not in cache:
            cache = {cfg.dataset: load_data(cfg.dataset, smoke)}  # one at a time
        data = cache[cfg.dataset]
        t0 = time.perf_counter()
        entry = {
            "config": asdict(cfg),
            "data_sizes": data_sizes(cfg, data),
            "records": [],
        }
        for i, seed in enumerate(seeds):
            record, weights, aswa, swa_start = run_seed(cfg, data, seed)
            entry["records"].append(record)
            m = record["metrics"]
            log(
                f"{cfg.key} seed {seed}: "
                + ", ".join(f"{k} {m[k][cfg.metric]:.4f}" for k in METHODS)
                + f" ({record['fit_seconds']:.1f} s, ASWA {record['aswa_decisions']})"
            )
            if "step_aswa" in record:
                log(
                    f"{cfg.key} seed {seed} step-level: "
                    + ", ".join(
                        f"{k} {m[k][cfg.metric]:.4f} ({v['checks']} checks, "
                        f"{v['check_seconds_total']:.1f} s, {v['decisions']})"
                        for k, v in record["step_aswa"].items()
                    )
                    + f"; one evaluation {record['eval_seconds'] * 1e3:.0f} ms"
                )
            if i == 0:
                if not steps:
                    png = img_dir / f"quality_{cfg.key.replace('/', '_')}.png"
                    plot_run(cfg, aswa, record, swa_start, png, 50 if smoke else 100)
                    entry["plot"] = str(png)
                if cfg.key in timed_steps:
                    entry["step_timing"] = time_steps(
                        cfg, data, seed, 1 if smoke else timing_repeats
                    )
                    log(f"{cfg.key} step timing: {entry['step_timing']['median']}")
                if cfg.key in verify:
                    entry["verification"] = verify_read_off(
                        cfg, data, seed, weights, verify[cfg.key]
                    )
                    log(f"{cfg.key} read-off check: {entry['verification']}")
                if cfg.key in timed:
                    entry["timing"] = time_kg(
                        cfg, data, seed, 1 if smoke else timing_repeats, smoke
                    )
                    log(f"{cfg.key} timing: {entry['timing']['median']}")
            del weights, aswa
            # Partial results survive, seed by seed.
            entry["summary"] = summarize(
                entry["records"], metric_names(cfg), cfg.methods
            )
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            result["configs"][cfg.key] = entry
            result["runtime_seconds"] = round(time.perf_counter() - started, 1)
            write_json(result, out / f"{stem}.json")
    result["environment"]["load_average_at_end"] = [
        round(x, 2) for x in os.getloadavg()
    ]
    result["runtime_seconds"] = round(time.perf_counter() - started, 1)
    write_json(result, out / f"{stem}.json")
    render = render_steps_markdown if steps else render_markdown
    (out / f"{stem}.md").write_text(render(result, out))
    log(f"done in {result['runtime_seconds']:.0f} s; wrote {out / f'{stem}.md'}")
    return result


def write_json(result: dict, path: Path) -> None:
    text = json.dumps(result, indent=1)
    # One line per list of numbers or strings: per-epoch columns stay short.
    text = re.sub(
        r"\[([^\[\]{}]*)\]",
        lambda m: "[" + " ".join(m.group(1).split()) + "]",
        text,
    )
    path.write_text(text + "\n")


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def _fmt_p(p) -> str:
    return "–" if p is None else f"{p:.3g}"


def _mean_std(s: dict, scale: float) -> str:
    return f"{scale * s['mean']:.2f} ± {scale * s['std']:.2f}"


def _config_table(entry: dict) -> list[str]:
    cfg = Config(**entry["config"])
    summary = entry["summary"]
    scale = 100.0  # percent, for accuracy, MRR and hits alike
    names = KG_METRICS if cfg.is_kg else ("accuracy",)
    head = " | ".join(f"test {n}" for n in names)
    lines = [
        f"| method | {head} | val {cfg.metric} | ASWA W/T/L | mean Δ (ASWA − method) "
        "| Wilcoxon p |",
        "|---" * (len(names) + 5) + "|",
    ]
    for method in METHODS:
        s = summary["methods"][method]
        cells = [_mean_std(s[n], scale) for n in names]
        cells.append(_mean_std(s["val"], scale))
        if method == "aswa":
            cells += ["", "", ""]
        else:
            h = s[cfg.metric]
            cells += [
                f"{h['wins']}/{h['ties']}/{h['losses']}",
                f"{scale * h['mean_diff']:+.2f}",
                _fmt_p(h["wilcoxon_p"]),
            ]
        label = (
            f"**{METHOD_LABELS[method]}**"
            if method == "aswa"
            else METHOD_LABELS[method]
        )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _relative(path: str, out: Path) -> str:
    return os.path.relpath(Path(path).resolve(), out.resolve())


def _run_header(title: str, kind: str, result: dict) -> list[str]:
    """A report's title and the run it comes from: command, machine, versions."""
    env = result["environment"]
    return [
        title,
        "",
        f"{kind}; backend **{env['backend']}**; seeds {result['seeds']}; "
        f"{result['date']}; runtime {result['runtime_seconds'] / 60:.1f} min.",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {env['nproc']} cores ({env['cpu']}), {env['platform']}; shared "
        f"with other jobs (load average {env['load_average_at_start']} at start, "
        f"{env.get('load_average_at_end', '?')} at end)",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in env["versions"].items()),
    ]


def render_markdown(result: dict, out: Path) -> str:
    env = result["environment"]
    kind = (
        "SMOKE run (tiny data, 3 epochs: not quality results)"
        if result["smoke"]
        else "full run"
    )
    backend_note = []
    if env["backend"] == "tensorflow" and not result["smoke"]:
        backend_note.append(
            "- Backend: TensorFlow, because a Fashion-MNIST CNN epoch took ~14 s on "
            "it here against ~70 s on JAX (measured before the run; JAX is the "
            "faster one for the graphs, see the UMLS timing)."
        )
    lines = [
        *_run_header(
            "# Quality benchmark: ASWA vs last model, early stopping, SWA, EMA",
            kind,
            result,
        ),
        "- raw per-seed numbers, ASWA decisions per epoch: `quality.json`",
        "",
        "## Set-up",
        "",
        "All five methods of a seed are read off **one** training run (none of them "
        "changes the trajectory, exactly so on all three backends, see the read-off "
        "check): the optimizer has `use_ema=True`, `ASWA(restore_best="
        "False)` and `SWA(start_from_epoch=0.5, restore=False)` run beside a recorder "
        "of the last running weights and Keras' `EarlyStopping` rule with unlimited "
        "patience (best validation epoch). After `fit` each method's weights are "
        "written into the model and scored on the test set. The read-off was checked "
        "against real single-method runs (below).",
        "",
        *backend_note,
        "- Learning rate: **constant for the whole run**, all methods (Adam; 1e-3 for "
        "images, 0.1 for graphs). SWA averages every epoch from 50 % of the epochs.",
        "- Images: ASWA and early stopping select on **validation accuracy** "
        "(`val_accuracy`, "
        "fit's validation data). Validation is 10 % of the training data, stratified, "
        "fixed across seeds. Digits has no test split: 20 % is held out first. "
        'BatchNorm statistics are averaged with the weights (`batchnorm="average"`).',
        "- Graphs: KvsAll with inverse triples, embedding dim 32, Adam 0.1, "
        "batch 1024, "
        "200 epochs, no dropout or label smoothing (the dicee reference setting); "
        "ASWA and early stopping select on **validation filtered MRR** "
        '(`ASWA(monitor="val_mrr", mode="max", score_fn=make_score_fn(kg, "valid"))`); '
        "test metrics are filtered MRR and Hits@1/3/10 over both directions.",
        "- EMA: Keras' `use_ema=True` with its defaults (momentum 0.99 per step, the "
        "trainable weights only; BatchNorm statistics stay the running model's).",
        "- Numbers are in %, mean ± sample std over seeds. W/T/L: seeds where ASWA's "
        "test score is higher / equal / lower than the method's. Wilcoxon: two-sided "
        "signed-rank test on the paired differences (scipy); with 5 seeds the "
        "smallest attainable p is 0.0625, so no 5-seed comparison can reach p < 0.05.",
        "",
        *_overview(result),
    ]
    for key, entry in result["configs"].items():
        cfg = Config(**entry["config"])
        sizes = ", ".join(f"{k} {n}" for k, n in entry["data_sizes"].items())
        lines += [
            f"## {cfg.dataset} / {cfg.model}",
            "",
            f"{cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.learning_rate:g}; "
            f"data: {sizes}; {entry['summary']['n_seeds']} seeds; "
            f"{entry['seconds'] / 60:.1f} min.",
            "",
            *_config_table(entry),
            "",
        ]
        recs = entry["records"]
        sizes_ = [r["aswa_size"] for r in recs]
        best = [r["early_stopping_best_epoch"] for r in recs]
        hard = [r["aswa_decisions"].get("hard", 0) for r in recs]
        soft = [r["aswa_decisions"].get("soft", 0) for r in recs]
        lines += [
            f"ASWA's final ensemble sizes {sizes_}; soft updates {soft}, hard "
            f"updates {hard} per seed; early stopping's best epoch (0-based) {best}.",
            "",
        ]
        if "plot" in entry:
            rel = _relative(entry["plot"], out)
            lines += [f"![{key}]({rel})", ""]
    lines += _verification_section(result)
    lines += _dicee_section(result)
    lines += [
        "## Context: the paper's image-classification numbers",
        "",
        "The ASWA paper (Demir, Sharma, Ngonga Ngomo, ACML 2024, arXiv 2406.19092) "
        "reports test accuracy at epoch 1000 from its image-classification code, "
        "e.g. CIFAR-10 with PreResNet-164: **ASWA 96.2 vs SWA 96.0** (as quoted in "
        "this project's issue). Those runs are far longer and larger than the CPU-"
        "sized ones above, so they are context, not a target.",
        "",
    ]
    lines += _smoke_section(result)
    return "\n".join(lines) + "\n"


def _verification_section(result: dict) -> list[str]:
    checked = {
        k: e["verification"]
        for k, e in result["configs"].items()
        if "verification" in e
    }
    if not checked:
        return []
    lines = [
        "## Read-off check",
        "",
        "First seed of these configurations, re-trained once per method with only "
        "that method (restoring callback, no EMA unless the method is EMA). Largest "
        "absolute weight difference to the weights read off the shared run, and the "
        "two test scores:",
        "",
        "| configuration | method | max abs weight diff | test, real run "
        "| test, read off |",
        "|---|---|---|---|---|",
    ]
    for key, ver in checked.items():
        for method, v in ver.items():
            lines.append(
                f"| {key} | {method} | {v['max_abs_weight_diff']:.2g} | "
                f"{v['real_run']:.4f} | {v['read_off']:.4f} |"
            )
    lines.append("")
    return lines


def _dicee_rows(result: dict) -> list[str]:
    rows = []
    backend = result["environment"]["backend"]
    for model in ("distmult", "complex"):
        entry = result["configs"].get(f"umls/{model}")
        if entry is None:
            continue
        recs = {r["seed"]: r for r in entry["records"]}
        s = entry["summary"]["methods"]
        one = recs.get(1)

        def seed1(method, one=one):
            return "–" if one is None else f"{one['metrics'][method]['mrr']:.3f}"

        d = DICEE_UMLS[model]
        t = entry.get("timing")
        timing = (
            f"{t['median']['plain']:.1f} / {t['median']['aswa']:.1f} s = "
            f"**{t['aswa_over_plain']:.1f}x**"
            if t
            else "–"
        )
        n = entry["summary"]["n_seeds"]
        over_seeds = (
            f"{s['last']['mrr']['mean']:.3f} / {s['swa']['mrr']['mean']:.3f} / "
            f"{s['aswa']['mrr']['mean']:.3f} ± {s['aswa']['mrr']['std']:.3f} "
            f"({n} seeds)"
            if n > 1
            else "–"
        )
        rows.append(
            f"| {model} | {d['last']:.3f} / {d['swa']:.3f} / {d['aswa']:.3f} | "
            f"{backend} | {seed1('last')} / {seed1('swa')} / {seed1('aswa')} | "
            f"{over_seeds} | ~{DICEE_ASWA_TIME_RATIO:.0f}x | {timing} |"
        )
    return rows


def _dicee_section(result: dict) -> list[str]:
    runs = [result, *(result.get("other_backends") or {}).values()]
    rows = [row for run in runs for row in _dicee_rows(run)]
    if not rows:
        return []
    lines = [
        "## UMLS against the authors' library (dicee 0.3.3)",
        "",
        "Same setting: KvsAll, dim 32, Adam 0.1, batch 1024, 200 epochs, no dropout "
        "or label smoothing; SWA from epoch 100 (0-based, i.e. the last 100 epochs). "
        "Test filtered MRR as last / SWA / ASWA. dicee: seed 1, figures from the "
        "project's issue. keras-aswa: seed 1 (one of the seeds above) and the mean "
        "over all seeds. Time: median wall time of a plain `fit` (no callbacks, no "
        "validation) vs a `fit` with ASWA (which scores the running model and the "
        "provisional ensemble on validation MRR every epoch), fresh model each, "
        "model build and compilation included, same machine.",
        "",
        "| model | dicee last / SWA / ASWA | keras backend | keras seed 1 | keras mean "
        "over seeds | dicee ASWA time ratio | keras plain / ASWA time |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    for run in runs:
        backend = run["environment"]["backend"]
        for model in ("distmult", "complex"):
            entry = run["configs"].get(f"umls/{model}")
            if entry is None:
                continue
            target = DICEE_UMLS[model]["aswa"]
            mean = entry["summary"]["methods"]["aswa"]["mrr"]["mean"]
            seeds = [r["metrics"]["aswa"]["mrr"] for r in entry["records"]]
            reached = sum(v >= target for v in seeds)
            verdict = "reaches" if mean >= target else "**falls short of**"
            lines.append(
                f"- {backend}, {model}: ASWA's mean test MRR {mean:.3f} {verdict} "
                f"dicee's {target:.3f} ({mean - target:+.3f}); {reached} of "
                f"{len(seeds)} seeds reach it."
            )
    for run in runs:
        backend = run["environment"]["backend"]
        for model in ("distmult", "complex"):
            t = run["configs"].get(f"umls/{model}", {}).get("timing")
            if t and "plain_with_val_mrr" in t["median"]:
                lines.append(
                    f"- {backend}, {model}: a plain fit that also logs validation MRR "
                    f"every epoch (what early stopping on MRR needs) "
                    f"{t['median']['plain_with_val_mrr']:.1f} s (ASWA / that = "
                    f"{t['aswa_over_plain_with_val_mrr']:.1f}x); all times (s) "
                    f"{t['seconds']}."
                )
    for run in runs[1:]:
        lines.append(
            f"- The {run['environment']['backend']} rows come from a separate run: "
            f"`{run['command']}`, {run['runtime_seconds'] / 60:.1f} min, "
            f"{run['date']}."
        )
    lines.append("")
    return lines


def _losses(result: dict) -> list[str]:
    """Where ASWA's mean is below another method's, said plainly."""
    found = []
    for key, entry in result["configs"].items():
        cfg = Config(**entry["config"])
        s = entry["summary"]["methods"]
        for m in METHODS[:-1]:
            h = s[m][cfg.metric]
            if h["mean_diff"] < 0:
                found.append(
                    f"- {key}: below {METHOD_LABELS[m]} by {-100 * h['mean_diff']:.2f} "
                    f"points (W/T/L {h['wins']}/{h['ties']}/{h['losses']}, "
                    f"p {_fmt_p(h['wilcoxon_p'])})"
                )
    if not found:
        return ["ASWA's mean is at least every other method's everywhere.", ""]
    return ["Where ASWA's mean test score is below another method's:", "", *found, ""]


def _overview(result: dict) -> list[str]:
    others = [m for m in METHODS if m != "aswa"]
    lines = [
        "## Overview",
        "",
        "Headline test metric (accuracy or filtered MRR, %), mean over seeds; then "
        "ASWA's wins/ties/losses over seeds against each method (Wilcoxon p).",
        "",
        "| configuration | "
        + " | ".join(METHODS)
        + " | "
        + " | ".join(f"ASWA vs {m}" for m in others)
        + " |",
        "|---|" + "---|" * (len(METHODS) + len(others)),
    ]
    for key, entry in result["configs"].items():
        cfg = Config(**entry["config"])
        s = entry["summary"]["methods"]
        means = [s[m][cfg.metric]["mean"] for m in METHODS]
        best = max(means)
        cells = [
            (f"**{100 * v:.2f}**" if v == best else f"{100 * v:.2f}") for v in means
        ]
        for m in others:
            h = s[m][cfg.metric]
            cells.append(
                f"{h['wins']}/{h['ties']}/{h['losses']} ({_fmt_p(h['wilcoxon_p'])})"
            )
        lines.append(f"| {key} ({cfg.metric}) | " + " | ".join(cells) + " |")
    lines.append("")
    return lines + _losses(result)


def _smoke_section(result: dict) -> list[str]:
    smoke = result.get("smoke_runs") or {}
    if not smoke:
        return []
    lines = [
        "## Smoke runs on every backend",
        "",
        "**Smoke figures**: tiny data (512 training / 128 validation / 256 test "
        "images; "
        "the full graphs), 3 epochs, seed 1. They show that every path runs on each "
        "backend and say nothing about quality. Test score (%) per method:",
        "",
        "| backend | configuration | " + " | ".join(METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    notes = []
    for backend, res in sorted(smoke.items()):
        for key, entry in res["configs"].items():
            cfg = Config(**entry["config"])
            m = entry["records"][0]["metrics"]
            cells = [f"{100 * m[k][cfg.metric]:.1f}" for k in METHODS]
            lines.append(
                f"| {backend} | {key} ({cfg.metric}) | " + " | ".join(cells) + " |"
            )
        checks = [
            f"{key} {method} {v['max_abs_weight_diff']:.2g}"
            for key, e in res["configs"].items()
            for method, v in e.get("verification", {}).items()
        ]
        env = res["environment"]
        notes.append(
            f"- {backend}: {res['runtime_seconds']:.0f} s for the whole smoke run "
            f"(load average {env['load_average_at_start'][0]} at start); read-off "
            f"check, max abs weight difference to a real run: {', '.join(checks)}."
        )
    return lines + [""] + notes + [""]


def _step_n(method: str) -> int | None:
    return int(method.removeprefix("aswa_n")) if method.startswith("aswa_n") else None


def render_steps_markdown(result: dict, out: Path) -> str:
    """quality-steps.md: step-level ASWA against EMA and the other methods."""
    kind = (
        "SMOKE run (tiny data, <= 3 epochs: not quality results)"
        if result["smoke"]
        else "full run"
    )
    entries = result["configs"]
    some = Config(**next(iter(entries.values()))["config"]) if entries else None
    freqs = sorted(
        {n for e in entries.values() for n in Config(**e["config"]).step_freqs}
    )
    vsteps = some.validation_steps if some else None
    lines = [
        *_run_header(
            "# Quality: step-level ASWA vs EMA, epoch-level ASWA, SWA, early stopping",
            kind,
            result,
        ),
        "- raw per-seed numbers, step-level decisions and check times: "
        "`quality-steps.json`",
        *(
            f"- {', '.join(o['configs'])}: from a separate run, `{o['command']}`, "
            f"seeds {o['seeds']}, {o['runtime_seconds'] / 60:.1f} min, {o['date']} "
            f"(load average {o['load_average_at_start']} at start, "
            f"{o.get('load_average_at_end') or '?'} at end)"
            for o in result.get("other_runs", [])
        ),
        "",
        "## Set-up",
        "",
        "The set-up of the quality benchmark (`quality.md`): Fashion-MNIST, the same "
        "MLP and BatchNorm CNN, Adam 1e-3 constant, batch 128, validation 10 % of "
        "the training data; every method of a seed is read off **one** training run "
        "(the optimizer has `use_ema=True`; no callback changes the trajectory, see "
        "the read-off check). Added to that run: "
        f'**step-level ASWA** `ASWA(update_freq=N, monitor="{STEP_MONITOR}", '
        "validation_data=(x_val, y_val), "
        f"validation_steps={vsteps}, restore_best=False)` for N = "
        f"{', '.join(map(str, freqs))} training batches (an epoch is 422 batches; "
        "which N each configuration has: its table).",
        "",
        f"- Each check scores the running and the provisional model on the first "
        f"{vsteps} batches of 32 of the validation split "
        f"({vsteps * 32 if vsteps else '?'} images, the same ones at every "
        "check). Monitor `val_loss`: at that size "
        "accuracy moves in steps of one image and ties (never an improvement) are "
        "common, while the loss is continuous.",
        "- Epoch-level ASWA (`aswa`), early stopping: `val_accuracy` on the whole "
        "validation split at each epoch end, as in `quality.md`. SWA from 50 % of "
        "the epochs (in a 2-epoch run: the last epoch only, so SWA = last). EMA: "
        "Keras' `use_ema=True` defaults (momentum 0.99 per step, trainable "
        "weights only).",
        "- `-2ep`: the same model trained for 2 epochs (the fine-tuning regime of "
        "one to three epochs; epoch-level ASWA then has 2 decisions).",
        "- Numbers in %, mean ± sample std over seeds. **W/T/L vs EMA**: seeds where "
        "the method's test accuracy is higher / equal / lower than EMA's; Wilcoxon: "
        "two-sided signed-rank test on the paired differences (scipy); with 5 seeds "
        "the smallest attainable p is 0.0625.",
        "",
        "## Overview",
        "",
        "Test accuracy (%), mean over seeds; then each ASWA variant against EMA: "
        "W/T/L (Wilcoxon p).",
        "",
    ]
    if not entries:
        return "\n".join(lines) + "\n"
    methods = []  # every configuration's methods, in order
    for entry in entries.values():
        for m in Config(**entry["config"]).methods:
            if m not in methods:
                methods.append(m)
    variants = [m for m in methods if m == "aswa" or m not in METHODS]
    lines += [
        "| configuration | "
        + " | ".join(methods)
        + " | "
        + " | ".join(f"{m} vs ema" for m in variants)
        + " |",
        "|---|" + "---|" * (len(methods) + len(variants)),
    ]
    for key, entry in entries.items():
        s = entry["summary"]
        means = [
            s["methods"].get(m, {}).get("accuracy", {}).get("mean") for m in methods
        ]
        top = max(x for x in means if x is not None)
        cells = [
            "–"
            if x is None
            else (f"**{100 * x:.2f}**" if x == top else f"{100 * x:.2f}")
            for x in means
        ]
        for m in variants:
            if m not in s["vs_ema"]:
                cells.append("–")
                continue
            h = s["vs_ema"][m]["accuracy"]
            cells.append(
                f"{h['wins']}/{h['ties']}/{h['losses']} ({_fmt_p(h['wilcoxon_p'])})"
            )
        lines.append(f"| {key} ({s['n_seeds']} seeds) | " + " | ".join(cells) + " |")
    lines.append("")
    short = []
    for key, entry in entries.items():
        s = entry["summary"]
        for m in s["vs_ema"]:
            h = s["vs_ema"][m]["accuracy"]
            if h["mean_diff"] < 0:
                short.append(
                    f"- {key}: {method_label(m)} below EMA by "
                    f"{-100 * h['mean_diff']:.2f} points (W/T/L {h['wins']}/"
                    f"{h['ties']}/{h['losses']}, p {_fmt_p(h['wilcoxon_p'])})"
                )
    lines += (
        ["Where an ASWA variant's mean test accuracy is below EMA's:", "", *short, ""]
        if short
        else ["Every ASWA variant's mean test accuracy is at least EMA's.", ""]
    )
    for key, entry in entries.items():
        cfg = Config(**entry["config"])
        s = entry["summary"]
        methods, variants = cfg.methods, ["aswa", *cfg.methods[len(METHODS) :]]
        sizes = ", ".join(f"{k} {n}" for k, n in entry["data_sizes"].items())
        lines += [
            f"## {key}",
            "",
            f"{cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.learning_rate:g}; "
            f"data: {sizes}; {s['n_seeds']} seeds; {entry['seconds'] / 60:.1f} min.",
            "",
            "| method | test accuracy | val accuracy | W/T/L vs EMA "
            "| mean Δ (method − EMA) | Wilcoxon p |",
            "|---|---|---|---|---|---|",
        ]
        for m in methods:
            sm = s["methods"][m]
            cells = [_mean_std(sm["accuracy"], 100), _mean_std(sm["val"], 100)]
            if m == "ema":
                cells += ["", "", ""]
            else:
                h = (
                    s["vs_ema"][m]["accuracy"]
                    if m in s["vs_ema"]
                    else _paired(
                        np.array(
                            [r["metrics"][m]["accuracy"] for r in entry["records"]]
                        ),
                        np.array(
                            [r["metrics"]["ema"]["accuracy"] for r in entry["records"]]
                        ),
                    )
                )
                cells += [
                    f"{h['wins']}/{h['ties']}/{h['losses']}",
                    f"{100 * h['mean_diff']:+.2f}",
                    _fmt_p(h["wilcoxon_p"]),
                ]
            label = f"**{method_label(m)}**" if m in variants else method_label(m)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        recs = entry["records"]
        for m in variants:
            if m == "aswa":
                sizes_ = [r["aswa_size"] for r in recs]
                dec = [r["aswa_decisions"] for r in recs]
            else:
                sizes_ = [r["step_aswa"][m]["size"] for r in recs]
                dec = [r["step_aswa"][m]["decisions"] for r in recs]
            counts = {
                d: [x.get(d, 0) for x in dec]
                for d in ("init", "hard", "soft", "reject")
            }
            lines.append(
                f"- {method_label(m)}: final ensemble sizes {sizes_}; hard "
                f"{counts['hard']}, soft {counts['soft']}, reject "
                f"{counts['reject']} per seed."
            )
        lines.append("")
    lines += _steps_cost_section(result)
    lines += _verification_section(result)
    return "\n".join(lines) + "\n"


def _steps_cost_section(result: dict) -> list[str]:
    lines = [
        "## Cost",
        "",
        "From the shared runs: the time each step-level ASWA spent in its checks "
        "(its `_act`: both evaluations and the bookkeeping, timed around the "
        "call), mean over seeds, as a share of the shared fit's wall time (which "
        "includes every callback and EMA); the median check as a multiple of one "
        "evaluation of the same validation batches (`evaluate(..., steps=K)`, "
        "median of 5 after the run). A check evaluates twice (running and "
        "provisional model; once for the first).",
        "",
        "| configuration | method | checks | fit (s) | in checks (s) | share of "
        "fit | median check (ms) | one evaluation (ms) | check / evaluation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in result["configs"].items():
        recs = entry["records"]
        if not recs or "step_aswa" not in recs[0]:
            continue
        fit_s = float(np.mean([r["fit_seconds"] for r in recs]))
        ev = float(np.mean([r["eval_seconds"] for r in recs]))
        for m in recs[0]["step_aswa"]:
            rows = [r["step_aswa"][m] for r in recs]
            total = float(np.mean([x["check_seconds_total"] for x in rows]))
            med = float(np.mean([x["check_seconds_median"] or 0.0 for x in rows]))
            checks = float(np.mean([x["checks"] for x in rows]))
            lines.append(
                f"| {key} | {m} | {checks:.0f} | {fit_s:.1f} | {total:.1f} | "
                f"{100 * total / fit_s:.1f} % | {1e3 * med:.1f} | {1e3 * ev:.1f} | "
                f"{med / ev:.1f}x |"
            )
    lines.append("")
    for key, entry in result["configs"].items():
        t = entry.get("step_timing")
        if not t:
            continue
        lines += [
            f"Separate timing on {key}, seed {result['seeds'][0]}: fresh model per "
            "fit, no EMA, fit's own validation every epoch in all; a plain fit "
            "against one with a single step-level ASWA (restoring); median of "
            f"{len(t['seconds']['plain'])} alternating runs (s); the machine is "
            "shared, so differences of a few % are noise.",
            "",
            "| fit | median (s) | / plain | all runs (s) |",
            "|---|---|---|---|",
        ]
        for k, med in t["median"].items():
            lines.append(
                f"| {k} | {med:.1f} | {t['over_plain'][k]:.2f}x | {t['seconds'][k]} |"
            )
        lines.append("")
    return lines


def report(out: Path, include: list[str], steps: bool = False) -> dict:
    """Re-renders quality.md from quality.json, merging other runs.

    Smoke runs go to the smoke section; full runs on other backends (e.g.
    UMLS timings) to the dicee comparison. `steps`: re-renders
    quality-steps.md from quality-steps.json (nothing merged).
    """
    if steps:
        # Configurations of other runs (e.g. the long ones, run apart) join.
        result = json.loads((out / "quality-steps.json").read_text())
        for path in include:
            res = json.loads(Path(path).read_text())
            for key, entry in res["configs"].items():
                mine = result["configs"].get(key)
                if mine is None:
                    result["configs"][key] = entry
                    continue
                # More seeds of a configuration: records join, by seed.
                if mine["config"] != entry["config"]:
                    raise ValueError(f"{path}: {key} was run with other settings")
                seeds = {r["seed"] for r in mine["records"]}
                mine["records"] += [
                    r for r in entry["records"] if r["seed"] not in seeds
                ]
                mine["records"].sort(key=lambda r: r["seed"])
                cfg = Config(**mine["config"])
                mine["summary"] = summarize(
                    mine["records"], metric_names(cfg), cfg.methods
                )
                mine["seconds"] = round(mine["seconds"] + entry["seconds"], 1)
            result.setdefault("other_runs", []).append(
                {k: res.get(k) for k in ("command", "date", "runtime_seconds", "seeds")}
                | {
                    "configs": list(res["configs"]),
                    "load_average_at_start": res["environment"][
                        "load_average_at_start"
                    ],
                    "load_average_at_end": res["environment"].get(
                        "load_average_at_end"
                    ),
                }
            )
        write_json(result, out / "quality-steps.json")
        (out / "quality-steps.md").write_text(render_steps_markdown(result, out))
        return result
    result = json.loads((out / "quality.json").read_text())
    for entry in result["configs"].values():
        for record in entry["records"]:
            if isinstance(record["aswa_history"], list):  # older row format
                record["aswa_history"] = _columns(record["aswa_history"])
    for path in include:
        res = json.loads(Path(path).read_text())
        for entry in res["configs"].values():
            for record in entry["records"]:
                record.pop("aswa_history", None)  # kept in their own JSON
        section = "smoke_runs" if res["smoke"] else "other_backends"
        result.setdefault(section, {})[res["environment"]["backend"]] = res
    write_json(result, out / "quality.json")
    (out / "quality.md").write_text(render_markdown(result, out))
    return result


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="ASWA vs last model, early stopping, SWA and EMA on "
        "Fashion-MNIST, digits, UMLS and Nations."
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny data, 3 epochs, 1 seed"
    )
    parser.add_argument(
        "--backend",
        choices=("tensorflow", "jax", "torch"),
        help="Keras backend (set before Keras is imported; default: KERAS_BACKEND)",
    )
    parser.add_argument(
        "--seeds", default=None, help="e.g. 1-5 or 1,3,7 (default 1-5; smoke: 1)"
    )
    parser.add_argument(
        "--datasets",
        default=None,
        help=f"comma-separated, from {DATASETS} (default: all; --steps: fashion_mnist)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where quality.json/.md go"
    )
    parser.add_argument(
        "--img-dir",
        type=Path,
        default=None,
        help="where the PNGs go (default: OUT/img)",
    )
    parser.add_argument(
        "--timing-repeats",
        type=int,
        default=3,
        help="plain vs ASWA timing repeats (UMLS)",
    )
    parser.add_argument(
        "--report", action="store_true", help="re-render OUT/quality.md only"
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated configuration keys to run, in this order "
        "(e.g. fashion_mnist/cnn,fashion_mnist/mlp)",
    )
    parser.add_argument(
        "--step-freqs",
        default=None,
        help="comma-separated N of the step-level ASWAs (default 50,100,200)",
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help="the step-level study: Fashion-MNIST only (default), plus 2-epoch "
        "runs; writes OUT/quality-steps.json/.md",
    )
    parser.add_argument(
        "--include",
        "--include-smoke",
        nargs="*",
        default=[],
        help="with --report: quality.json files of smoke runs or other backends' runs",
    )
    args = parser.parse_args(argv)

    if args.backend and keras.backend.backend() != args.backend:
        parser.error(
            f"Keras is already loaded with backend {keras.backend.backend()!r}; "
            f"run in a fresh process or set KERAS_BACKEND={args.backend}."
        )
    out = args.out or Path(
        f"benchmarks/out/smoke-{keras.backend.backend()}"
        if args.smoke
        else "benchmarks/results"
    )
    if args.report:
        return report(out, args.include, args.steps)
    seeds = parse_seeds(args.seeds or ("1" if args.smoke else "1-5"))
    if args.datasets is None:
        args.datasets = "fashion_mnist" if args.steps else ",".join(DATASETS)
    datasets = [d for d in args.datasets.split(",") if d]
    return run(
        smoke=args.smoke,
        seeds=seeds,
        datasets=datasets,
        out=out,
        img_dir=args.img_dir or out / "img",
        timing_repeats=args.timing_repeats,
        steps=args.steps,
        step_freqs=(
            tuple(int(n) for n in args.step_freqs.split(","))
            if args.step_freqs
            else None
        ),
        only=args.only.split(",") if args.only else None,
        command="python -m benchmarks.quality "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    )


if __name__ == "__main__":
    main()
