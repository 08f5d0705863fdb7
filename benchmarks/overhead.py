"""Cost benchmark: what `ASWA()` adds to `fit`, in time and memory, per backend.

Full run (all three backends, one subprocess each; about 12 minutes on 2 CPU
cores), tables printed and written to a file:

    .venv/bin/python -m benchmarks.overhead --backend all --out /tmp/overhead.md

Smoke run (tiny model, 3 epochs, every code path; well under a minute a
backend):

    .venv/bin/python -m benchmarks.overhead --backend all --smoke

One backend: `--backend jax` (re-launched with `KERAS_BACKEND=jax` unless this
process already runs it). `--json FILE` dumps the raw numbers.

Reference workload: an MLP 784-2048-2048-10 (5,824,522 float32 parameters,
22.2 MiB), Adam, batch 128, 2048 training and 512 validation images of
Fashion-MNIST (random data of the same shape where it is not installed), 5
epochs a fit. In one process, repetitions interleave (in rotating order):

- `plain`: `fit` with validation;
- `eval`: `fit` with `EvalOnly`, one more evaluation per scored epoch through
  the cached validation iterator ASWA uses and nothing else: the ideal ASWA,
  measured;
- `aswa`: `fit` with `ASWA()` (val_loss, restore_best=True);
- `naive`: `fit` with `NaiveASWA` below, ASWA done the way the authors' code
  does it: the running model is evaluated again, weights go through
  `get_weights`/`set_weights` and the average is computed in numpy.

Reported, as medians over repetitions: each variant's fit time and its ratio to
the plain fit of the same repetition; the ideal ratio, plain fit plus one
standalone `model.evaluate` on the validation data for every epoch whose
provisional ensemble ASWA scores (all but the first, which only starts the
ensemble); the excess over that ideal, and over the measured one (`eval`), in %
of the plain fit; the time the callback takes at each epoch end. Also the time
of one epoch's weight bookkeeping (`WeightAverage.provisional()` entered and
left without evaluating, then the decision's `discard()`, `commit()` or
`restart()`; the slowest of the three) against `np.copy` of the same float
weights on the host, with a breakdown of its steps; the bytes the average
holds; and the growth of peak RSS during one fit of each variant, each in a
fresh process (on CPU, device memory is host RAM).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from benchmarks.machine import code_version, cpu_model  # noqa: E402
from keras_aswa import ASWA  # noqa: E402
from keras_aswa.averaging import WeightAverage  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")
VARIANTS = ("plain", "eval", "aswa", "naive")
RSS_VARIANTS = ("plain", "aswa", "naive")
RSS_EPOCHS = 3  # epoch 0 starts the average; 1 and 2 score a provisional one
REPO = Path(__file__).resolve().parent.parent
MIB = 2**20


@dataclass(frozen=True)
class Config:
    """One workload and how often to measure it."""

    hidden: tuple[int, ...] = (2048, 2048)
    n_train: int = 2048
    n_val: int = 512
    batch_size: int = 128
    epochs: int = 5
    reps: int = 5  # interleaved repetitions of each variant
    bookkeeping_reps: int = 21
    data: str = "auto"  # "auto" (Fashion-MNIST if installed), "fashion", "random"
    seed: int = 0
    smoke: bool = False
    # torch intra-op threads (None: torch's default). On a loaded machine
    # torch's thread pool can stall tiny steps 50-fold, so smoke uses one.
    torch_threads: int | None = None


REFERENCE = Config()
SMOKE = Config(
    hidden=(64, 64),
    n_train=256,
    n_val=64,
    batch_size=64,
    epochs=3,
    reps=2,
    bookkeeping_reps=5,
    data="random",
    smoke=True,
    torch_threads=1,
)


# --------------------------------------------------------------------------
# workload
# --------------------------------------------------------------------------


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
    if name == "plain":
        return []
    if name == "eval":
        return [EvalOnly()]
    if name == "aswa":
        return [ASWA(restore_best=restore)]
    if name == "naive":
        return [NaiveASWA(w.xv, w.yv, w.cfg.batch_size, restore=restore)]
    raise ValueError(name)


# --------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------


def _log(msg):
    print(f"[{keras.backend.backend()}] {msg}", file=sys.stderr, flush=True)


def time_fits(w: Workload) -> dict:
    """Interleaved repetitions: per variant, fit seconds (wall and process CPU
    time), callback epoch-end ms and decisions; a standalone `evaluate`'s."""
    cfg = w.cfg
    # Warm-up: compile the train and test paths, then run each variant once
    # (2 epochs: a provisional ensemble is scored), so that one-time costs
    # stay out of the repetitions. The first ASWA fit's one-time cost (JAX
    # compiles each eager op per weight shape) is timed against a plain one.
    w.reset()
    w.fit(epochs=2)
    w.evaluate()
    once = {}
    for name in ("aswa", "plain", "naive", "eval"):
        w.reset()
        t = time.perf_counter()
        w.fit(variant_callbacks(name, w), epochs=2)
        once[name] = time.perf_counter() - t
    out = {
        v: {"fit_s": [], "fit_cpu_s": [], "epoch_end_ms": [], "decisions": []}
        for v in VARIANTS
    }
    out["first_aswa_extra_s"] = once["aswa"] - once["plain"]
    evaluate_s, evaluate_cpu_s = [], []
    for rep in range(cfg.reps):
        k = rep % len(VARIANTS)  # rotate the order
        for name in VARIANTS[k:] + VARIANTS[:k]:
            w.reset()
            callbacks = variant_callbacks(name, w)
            first, last = Clock(), Clock()
            gc.collect()
            t, cpu = time.perf_counter(), time.process_time()
            w.fit([first, *callbacks, last])
            out[name]["fit_s"].append(time.perf_counter() - t)
            out[name]["fit_cpu_s"].append(time.process_time() - cpu)
            # Epoch 0 only starts the ensemble: the scored epochs are 1..E-1.
            ends = [
                (b - a) * 1e3
                for a, b in zip(first.epoch_end, last.epoch_end, strict=True)
            ]
            out[name]["epoch_end_ms"] += ends[1:]
            if name == "aswa":
                out[name]["decisions"].append(
                    [h["decision"] for h in callbacks[0].history]
                )
            elif name == "naive":
                out[name]["decisions"].append(callbacks[0].decisions)
        t, cpu = time.perf_counter(), time.process_time()
        w.evaluate()
        evaluate_s.append(time.perf_counter() - t)
        evaluate_cpu_s.append(time.process_time() - cpu)
        _log(
            f"rep {rep + 1}/{cfg.reps}: "
            + ", ".join(f"{v} {out[v]['fit_s'][-1]:.2f}s" for v in VARIANTS)
            + f", evaluate {evaluate_s[-1] * 1e3:.0f}ms"
        )
    out["evaluate_s"], out["evaluate_cpu_s"] = evaluate_s, evaluate_cpu_s
    return out


def summarize(t: dict, epochs: int) -> dict:
    """Medians over repetitions, ratios paired within a repetition.

    Each fit is timed by the wall clock and by this process's CPU time: on a
    shared machine the wall clock also counts waiting for a core, CPU time
    much less so. Excess over the ideal, in % of the plain fit: over plain
    plus one standalone `model.evaluate` per scored epoch (`computed`; a
    standalone call also builds a data adapter, which ASWA's cached evaluation
    does not), and over the `eval` fit of the same repetition (`measured`);
    and from the callbacks' own epoch-end time against `EvalOnly`'s
    (`callback`; wall clock, least noisy, but misses costs outside the
    callback, such as JAX's asynchronously dispatched work).
    """
    scored = epochs - 1  # provisional evaluations ASWA makes in one fit
    eval_cb_ms = statistics.median(t["eval"]["epoch_end_ms"])
    plain_ms = 1e3 * statistics.median(t["plain"]["fit_s"])
    rows = {}
    for v in VARIANTS:
        cb_ms = statistics.median(t[v]["epoch_end_ms"])
        row = {
            "epoch_end_ms": cb_ms,
            "excess_callback_pct": 100 * scored * (cb_ms - eval_cb_ms) / plain_ms,
            "evaluations": {
                "plain": 0,
                "eval": scored,
                "aswa": scored,
                "naive": epochs + scored,
            }[v],
        }
        for clock, key, ev_key in (
            ("wall", "fit_s", "evaluate_s"),
            ("cpu", "fit_cpu_s", "evaluate_cpu_s"),
        ):
            fit, plain = t[v][key], t["plain"][key]
            ideal, ev = t["eval"][key], t[ev_key]
            paired = list(zip(fit, plain, ideal, ev, strict=True))
            row[clock] = {
                "fit_s": statistics.median(fit),
                "ratio": statistics.median([f / p for f, p, _, _ in paired]),
                "ideal_ratio": statistics.median(
                    [1 + scored * e / p for _, p, _, e in paired]
                ),
                "excess_computed_pct": statistics.median(
                    [100 * (f - p - scored * e) / p for f, p, _, e in paired]
                ),
                "excess_measured_pct": statistics.median(
                    [100 * (f - i) / p for f, p, i, _ in paired]
                ),
            }
        rows[v] = row
    return {
        "rows": rows,
        "evaluate_ms": 1e3 * statistics.median(t["evaluate_s"]),
        "cached_evaluate_ms": eval_cb_ms,
        "first_aswa_extra_s": t["first_aswa_extra_s"],
        "epoch_s": statistics.median(t["plain"]["fit_s"]) / epochs,
    }


def _nbytes(x) -> int:
    dtype = keras.backend.standardize_dtype(x.dtype)
    itemsize = {"bfloat16": 2}.get(dtype) or np.dtype(dtype).itemsize
    # The size the tensor has now: TensorFlow's slot variables take any shape.
    return int(ops.convert_to_numpy(ops.size(x))) * itemsize


def _block(tensors):
    """Waits until `tensors` are computed: JAX dispatches asynchronously, and
    so do GPUs (eager TensorFlow and torch ops on CPU are synchronous)."""
    tensors = [t for t in tensors if t is not None]
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.block_until_ready(tensors)
    elif backend == "torch":
        import torch

        if tensors and tensors[-1].is_cuda:
            torch.cuda.synchronize()
    elif tensors:  # one element of the last: ops run in order on a device
        ops.convert_to_numpy(ops.reshape(tensors[-1], (-1,))[:1])


def bookkeeping(model, reps: int) -> dict:
    """One epoch's weight bookkeeping of ASWA against np.copy of the same
    bytes: the provisional ensemble shown and taken out again, then rejected
    (`discard`), adopted (`commit`, a soft update) or replaced by the running
    weights (`restart`, a hard update); SWA's `update`; and the bytes alive
    in the WeightAverage at each point."""
    floats = [v for v in model.weights if keras.backend.is_float_dtype(v.dtype)]
    host = [ops.convert_to_numpy(v.value) for v in floats]
    weight_bytes = sum(a.nbytes for a in host)
    average = WeightAverage(model.weights)
    average.restart()
    _block(average.average)

    def values():
        return [v.value for v in floats]

    def timed(fn):
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def ensemble_bytes():
        return sum(_nbytes(a) for a in average.average if a is not None)

    # The running weights kept while the provisional ensemble is shown, and
    # the provisional ensemble kept for `commit` afterwards.
    held = {"ensemble": ensemble_bytes(), "during": 0, "after": 0}

    def kept(key):
        return sum(_nbytes(x) for x in average.held()[key] or [] if x is not None)

    def provisional():
        with average.provisional():
            _block(values())
            during = ensemble_bytes() + kept("running")
        _block(values())
        after = ensemble_bytes() + kept("provisional")
        held["during"] = max(held["during"], during)
        held["after"] = max(held["after"], after)

    def reject():
        provisional()
        average.discard()

    def soft():
        provisional()
        average.commit()
        _block(average.average)

    def hard():
        provisional()
        average.restart()
        _block(average.average)

    def update():
        average.update()
        _block(average.average)

    # Reference costs over all float weights, for the profile: a device copy
    # (one is kept during the provisional) and an assign (three per epoch).
    targets = [np.empty_like(a) for a in host]
    others = [ops.convert_to_tensor(a + 1) for a in host]  # distinct buffers

    def device_copy():
        _block([ops.copy(v.value) for v in floats])

    def assign():
        for v, other in zip(floats, others, strict=True):
            v.assign(other)
        _block(values())

    steps = {
        "memcpy": lambda: [np.copy(a) for a in host],
        "memcpy_prealloc": lambda: [
            np.copyto(t, a) for t, a in zip(targets, host, strict=True)
        ],
        "reject": reject,
        "soft": soft,
        "hard": hard,
        "update": update,
        "device_copy": device_copy,
        "assign": assign,
    }
    ms = {k: [] for k in steps}
    for _ in range(reps):
        for k, fn in steps.items():
            ms[k].append(timed(fn))
    for v, value in zip(floats, host, strict=True):  # leave the model as it was
        v.assign(value)
    med = {k: statistics.median(x) for k, x in ms.items()}
    worst = max(med["reject"], med["soft"], med["hard"])  # one per epoch
    return {
        "weight_bytes": weight_bytes,
        "largest_variable_bytes": max(a.nbytes for a in host),
        "ms": med,
        "bookkeeping_ms": worst,
        "ratio_to_memcpy": worst / med["memcpy"],
        "ensemble_bytes": held["ensemble"],
        "provisional_bytes": max(held["during"], held["after"]),
    }


def check_decisions(w: Workload) -> dict:
    """ASWA and NaiveASWA side by side in one fit (neither restores): the same
    running model every epoch, so the same decisions and ensemble."""
    w.reset()
    aswa = ASWA(restore_best=False)
    naive = NaiveASWA(w.xv, w.yv, w.cfg.batch_size, restore=False)
    w.fit([aswa, naive])
    ours = [h["decision"] for h in aswa.history]
    ensemble = aswa.ensemble_weights()
    diff = max(
        float(np.max(np.abs(np.asarray(a, np.float64) - b))) if a.size else 0.0
        for a, b in zip(ensemble, naive.ensemble, strict=True)
    )
    running = max(
        abs(h["running"] - r) for h, r in zip(aswa.history, naive.running, strict=True)
    )
    return {
        "aswa": ours,
        "naive": naive.decisions,
        "agree": ours == naive.decisions,
        "ensemble_max_abs_diff": diff,
        "running_score_max_abs_diff": running,
    }


# --------------------------------------------------------------------------
# cost against the number of variables
# --------------------------------------------------------------------------

# Two stacks of Dense layers of (about) the same 3.1M float32 parameters: 3
# layers 1024 wide (6 variables) and 150 layers 144 wide (300 variables).
STACKS = {"few": (3, 1024), "many": (150, 144)}
DECISIONS = ("restart", "soft", "reject")


def dense_stack(layers: int, width: int):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((width,))] + [keras.layers.Dense(width) for _ in range(layers)]
    )


def decisions_by_count(reps: int) -> dict:
    """One decision's bookkeeping, for few large and many small variables.

    Per stack (`STACKS`), interleaved: `restart` (a hard update, or the
    first), `soft` (`provisional()` entered and left, then `commit()`) and
    `reject` (the same, then `discard()`), with nothing evaluated inside,
    against `np.copy` of the same float weights in host memory. Uses only the
    public API of `WeightAverage`, so that it measures an earlier engine as
    well (`--baseline`).

    Args:
        reps: Repetitions of each step.

    Returns:
        Per stack: its variables, parameters and bytes, and per step the
        milliseconds of every repetition.
    """
    import keras_aswa

    out = {}
    steps = {}
    for name, shape in STACKS.items():
        model = dense_stack(*shape)
        host = [ops.convert_to_numpy(v.value) for v in model.weights]
        average = WeightAverage(model.weights)
        average.restart()

        def restart(average=average):
            average.restart()
            _block(average.average)

        def soft(average=average):
            with average.provisional():
                pass
            average.commit()
            _block(average.average)

        def reject(average=average, model=model):
            with average.provisional():
                pass
            average.discard()
            _block([v.value for v in model.weights])

        def copy(host=host):
            return [np.copy(a) for a in host]

        steps[name] = {"restart": restart, "soft": soft, "reject": reject}
        steps[name]["copy"] = copy
        out[name] = {
            "variables": len(model.weights),
            "params": model.count_params(),
            "bytes": sum(a.nbytes for a in host),
            "ms": {k: [] for k in steps[name]},
        }
    for fns in steps.values():  # compile and warm up
        for fn in fns.values():
            fn()
    for _ in range(reps):
        for name, fns in steps.items():
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                out[name]["ms"][k].append((time.perf_counter() - t) * 1e3)
    return {
        "backend": keras.backend.backend(),
        "engine": str(Path(keras_aswa.__file__).parent),
        "stacks": out,
        "versions": versions(),
        "load_avg": os.getloadavg()[0],
    }


def _baseline_checkout(rev: str, into: str) -> str:
    """`keras_aswa/` as of git revision `rev`, unpacked under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "keras_aswa"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def by_count(
    backends,
    reps: int,
    rounds: int,
    baseline: str | None,
    torch_threads: int | None = None,
) -> dict:
    """`decisions_by_count` per backend and engine, each in a fresh process.

    The engines alternate, `rounds` times (the baseline first in each), so
    that both see the same load on a shared machine; repetitions pool over
    rounds.

    Args:
        backends: Backend names.
        reps: Repetitions of each step, per process.
        rounds: Processes per backend and engine.
        baseline: A git revision whose `keras_aswa` to measure beside this
            checkout's, or None.
        torch_threads: torch's intra-op threads in the processes (None:
            torch's default).

    Returns:
        `{"runs": {backend: {engine: result}}, "baseline": baseline,
        "commit": ..., "machine": ...}`, each result as `decisions_by_count`
        returns it, with repetitions pooled.
    """
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"this": str(REPO)}
        if baseline:
            engines = {baseline: _baseline_checkout(baseline, tmp), **engines}
        for b in backends:
            runs[b] = {}
            for r in range(rounds):
                for label, path in engines.items():
                    _log(f"{b}: {label}, round {r + 1}/{rounds}")
                    result = _by_count_child(b, path, reps, torch_threads)
                    runs[b][label] = _pool(runs[b].get(label), result)
    return {
        "runs": runs,
        "baseline": baseline,
        "commit": code_version(),
        "machine": {k: v for k, v in machine().items() if k != "accelerator"},
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _by_count_child(
    backend: str, engine: str, reps: int, torch_threads: int | None
) -> dict:
    # `-c` rather than `-m`: the engine's directory goes first on sys.path,
    # before the checkout and any installed keras_aswa.
    launcher = (
        f"import runpy, sys; sys.path.insert(0, {engine!r}); "
        "runpy.run_module('benchmarks.overhead', run_name='__main__')"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "by_count.json"
        cmd = [sys.executable, "-c", launcher, "--by-count-of", str(reps)]
        cmd += ["--json", str(path)]
        if torch_threads:
            cmd += ["--torch-threads", str(torch_threads)]
        subprocess.run(cmd, cwd=REPO, env=_child_env(backend), check=True)
        return json.loads(path.read_text())


def _pool(into: dict | None, result: dict) -> dict:
    if into is None:
        return result
    for name, stack in result["stacks"].items():
        for k, ms in stack["ms"].items():
            into["stacks"][name]["ms"][k] += ms
    into["load_avg"] = max(into["load_avg"], result["load_avg"])
    return into


def by_count_markdown(report: dict, argv: list[str]) -> str:
    """The report of `by_count`: medians, ratios many/few and to `np.copy`."""
    med = statistics.median
    first = next(iter(next(iter(report["runs"].values())).values()))
    stacks = first["stacks"]
    m = report["machine"]
    vers = {
        k: v
        for engines in report["runs"].values()
        for r in engines.values()
        for k, v in r["versions"].items()
    }
    few, many = stacks["few"], stacks["many"]
    lines = [
        "# Cost against the number of variables",
        "",
        f"Command: `python -m benchmarks.overhead {' '.join(argv)}`",
        f"Date: {report['date']}; commit {report['commit']}",
        f"Machine: {m['nproc']} CPU cores, {m['cpu']}; no GPU; Python {m['python']}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"Models: Dense stacks of {few['variables']} variables "
        f"({few['params']:,} float32 parameters) and {many['variables']} "
        f"variables ({many['params']:,}); medians of "
        f"{len(few['ms']['copy'])} repetitions per engine, the engines "
        "alternating in fresh processes; load average at most "
        + ", ".join(
            f"{b} {max(r['load_avg'] for r in engines.values()):.1f}"
            for b, engines in report["runs"].items()
        ),
        "",
        "One decision's weight bookkeeping (`WeightAverage`, nothing evaluated): "
        "`restart` (a hard update), `soft` (provisional average shown, taken "
        "out, committed), `reject` (shown, taken out, discarded); `np.copy` "
        "copies the same float weights in host memory.",
        "",
        "| backend | engine | variables | restart ms | soft ms | reject ms | "
        "worst ms | `np.copy` ms | worst / copy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst = {}
    for b, engines in report["runs"].items():
        for label, r in engines.items():
            for name in STACKS:
                s = r["stacks"][name]
                ms = {k: med(v) for k, v in s["ms"].items()}
                w = max(ms[d] for d in DECISIONS)
                worst[b, label, name] = ms | {"worst": w}
                lines.append(
                    f"| {b} | {label} | {s['variables']} | "
                    + " | ".join(f"{ms[d]:.2f}" for d in DECISIONS)
                    + f" | {w:.2f} | {ms['copy']:.2f} | {w / ms['copy']:.1f}x |"
                )
    lines += [
        "",
        f"Ratio {many['variables']} variables / {few['variables']} variables "
        "(target: at most 1.5x):",
        "",
        "| backend | engine | restart | soft | reject | worst |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for b, engines in report["runs"].items():
        for label in engines:
            ratio = {
                k: worst[b, label, "many"][k] / worst[b, label, "few"][k]
                for k in (*DECISIONS, "worst")
            }
            lines.append(
                f"| {b} | {label} | "
                + " | ".join(f"{ratio[k]:.1f}x" for k in (*DECISIONS, "worst"))
                + " |"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# peak memory
# --------------------------------------------------------------------------


def _proc_status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    # Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM).
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _release_free_memory():
    # Hand freed heap pages back to the OS (glibc), so that the peak counts
    # every page the measured fit needs, not only those beyond a reused heap.
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss(w: Workload, variant: str, warm_up: bool = True) -> dict:
    """Growth of the process's peak RSS over its current RSS during one fit of
    `variant`, after a warm-up fit of the same variant (compiling its paths,
    JAX's eager ops included) and handing freed memory back to the OS."""
    if warm_up:
        w.reset()
        w.fit(variant_callbacks(variant, w), epochs=2)
        w.evaluate()
    w.reset()
    _release_free_memory()
    if _reset_peak_rss() and _proc_status_kib("VmRSS") is not None:
        before, method = _proc_status_kib("VmRSS"), "VmHWM - VmRSS after reset"
        w.fit(variant_callbacks(variant, w), epochs=RSS_EPOCHS)
        peak = _proc_status_kib("VmHWM")
    else:  # only growth above the earlier peak shows
        before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
        w.fit(variant_callbacks(variant, w), epochs=RSS_EPOCHS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_delta_mib": (peak - before) / 1024,
        "rss_mib": before / 1024,
        "method": method,
    }


def peak_rss_all(cfg: Config, mode: str, w: Workload | None) -> dict:
    """Per variant: in a fresh process each (`subprocess`), one after the
    other in this one (`inprocess`: freed memory is reused, so later variants
    may show less), or not at all (`off`)."""
    if mode == "off":
        return {}
    if mode == "inprocess":
        return {v: peak_rss(w, v, warm_up=False) for v in RSS_VARIANTS}
    out = {}
    for v in RSS_VARIANTS:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rss.json"
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.overhead",
                "--peak-rss-of",
                v,
                "--json",
                str(path),
                *(["--smoke"] if cfg.smoke else []),
            ]
            if cfg.torch_threads:
                cmd += ["--torch-threads", str(cfg.torch_threads)]
            subprocess.run(cmd, cwd=REPO, check=True, env=_child_env())
            out[v] = json.loads(path.read_text())
    return out


# --------------------------------------------------------------------------
# one backend, machine, tables
# --------------------------------------------------------------------------


def accelerator() -> str:
    """The device the backend computes on, or "no GPU"."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return "no GPU" if device.platform == "cpu" else device.device_kind
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "no GPU"


def machine() -> dict:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "accelerator": accelerator(),
        "python": platform.python_version(),
        "commit": code_version(),
    }


def versions() -> dict:
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    lib = __import__(module)
    out = {
        "keras": keras.__version__,
        backend: lib.__version__,
        "numpy": np.__version__,
    }
    if backend == "torch":
        out["torch threads"] = lib.get_num_threads()
    return out


def run_backend(cfg: Config, rss: str = "subprocess") -> dict:
    """Everything for the backend this process runs; `rss` as in `peak_rss_all`."""
    if keras.backend.backend() == "torch" and cfg.torch_threads:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.torch_threads)
        try:
            return _run_backend(cfg, rss)
        finally:
            torch.set_num_threads(threads)
    return _run_backend(cfg, rss)


def _run_backend(cfg: Config, rss: str) -> dict:
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    _log(f"{'smoke' if cfg.smoke else 'reference'} workload")
    w = Workload(cfg)
    timings = time_fits(w)
    _log("bookkeeping")
    book = bookkeeping(w.model, cfg.bookkeeping_reps)
    _log("decision check")
    check = check_decisions(w)
    _log(f"peak RSS ({rss})")
    memory = peak_rss_all(cfg, rss, w)
    return {
        "backend": keras.backend.backend(),
        "config": asdict(cfg),
        "data": w.data,
        "params": w.model.count_params(),
        "timings": timings,
        "summary": summarize(timings, cfg.epochs),
        "bookkeeping": book,
        "check": check,
        "memory": memory,
        "versions": versions(),
        "machine": machine(),
        "load_avg": [load0, os.getloadavg()[0]],
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "runtime_s": time.perf_counter() - start,
    }


def markdown(results: list[dict]) -> str:
    """Tables: cost per variant, bookkeeping and its breakdown, memory."""
    lines = [
        "Time per fit as wall clock / process CPU time; ratios and excesses are "
        "medians of per-repetition values.",
        "",
        "| backend | variant | fit s | ratio to plain | ideal ratio (plain + "
        "`evaluate`s) | excess over it (% of plain) | excess over `eval` fit (% of "
        "plain) | callback ms / scored epoch | excess from callback time (% of "
        "plain) | evaluations / fit | peak RSS growth MiB (over plain's, in copies "
        "of the float weights) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def pair(row, key, fmt):
        return " / ".join(format(row[c][key], fmt) for c in ("wall", "cpu"))

    def rss(r, v):
        mem, plain = r["memory"].get(v), r["memory"].get("plain")
        if mem is None:
            return "-"
        copies = (mem["peak_delta_mib"] - plain["peak_delta_mib"]) * MIB
        copies /= r["bookkeeping"]["weight_bytes"]
        return f"{mem['peak_delta_mib']:.1f}" + (
            "" if v == "plain" else f" ({copies:+.1f})"
        )

    for r in results:
        for v in VARIANTS:
            row = r["summary"]["rows"][v]
            ideal = v in ("plain", "eval")
            lines.append(
                f"| {r['backend']} | {v} | {pair(row, 'fit_s', '.2f')} | "
                f"{pair(row, 'ratio', '.3f')} | {pair(row, 'ideal_ratio', '.3f')} | "
                + ("-" if ideal else pair(row, "excess_computed_pct", "+.1f"))
                + " | "
                + ("-" if ideal else pair(row, "excess_measured_pct", "+.1f"))
                + f" | {row['epoch_end_ms']:.1f} | "
                + ("-" if ideal else f"{row['excess_callback_pct']:+.1f}")
                + f" | {row['evaluations']} | {rss(r, v)} |"
            )
    lines += [
        "",
        "| backend | epoch s (plain) | `evaluate` ms | cached evaluate ms | float "
        "weights MiB | bookkeeping ms (worst epoch) | `np.copy` ms | bookkeeping "
        "/ copy | held: ensemble | held: at most, around a provisional | first "
        "ASWA fit, one-time s | decisions agree (aswa vs naive) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        s, b, c = r["summary"], r["bookkeeping"], r["check"]
        wb = b["weight_bytes"]
        lines.append(
            f"| {r['backend']} | {s['epoch_s']:.2f} | {s['evaluate_ms']:.1f} | "
            f"{s['cached_evaluate_ms']:.1f} | {wb / MIB:.1f} | "
            f"{b['bookkeeping_ms']:.2f} | "
            f"{b['ms']['memcpy']:.2f} | {b['ratio_to_memcpy']:.1f}x | "
            f"{b['ensemble_bytes'] / wb:.2f} copies | "
            f"{b['provisional_bytes'] / wb:.2f} "
            f"copies | {s['first_aswa_extra_s']:+.2f} | "
            f"{'yes' if c['agree'] else 'NO'}: {' '.join(c['aswa'])} |"
        )
    lines += [
        "",
        "| backend | reject: provisional shown and discarded ms | soft: ... and "
        "committed ms | hard: ... and restarted ms | SWA's update ms | `ops.copy` "
        "all ms | assign all ms | `np.copy` ms | `np.copyto` (preallocated) ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r["bookkeeping"]["ms"]
        lines.append(
            f"| {r['backend']} | {m['reject']:.2f} | {m['soft']:.2f} | "
            f"{m['hard']:.2f} | {m['update']:.2f} | "
            f"{m['device_copy']:.2f} | {m['assign']:.2f} | "
            f"{m['memcpy']:.2f} | {m['memcpy_prealloc']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def header(results: list[dict], argv: list[str]) -> str:
    first = results[0]
    m, cfg = first["machine"], first["config"]
    vers = {k: v for r in results for k, v in r["versions"].items()}
    return (
        "\n".join(
            [
                f"Command: `python -m benchmarks.overhead {' '.join(argv)}`",
                f"Date: {first['date']}; commit {m['commit']}",
                f"Machine: {m['nproc']} CPU cores, {m['cpu']}; {m['accelerator']}; "
                f"Python {m['python']}",
                "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
                f"Workload: MLP 784-{'-'.join(map(str, cfg['hidden']))}-10, "
                f"{first['params']:,} parameters, Adam, batch {cfg['batch_size']}, "
                f"{first['data']}, {cfg['epochs']} epochs a fit, "
                f"{cfg['reps']} repetitions "
                "interleaved; medians",
                "Runtime and load average (start, end): "
                + "; ".join(
                    f"{r['backend']} {r['runtime_s']:.0f} s, "
                    f"{r['load_avg'][0]:.1f}/{r['load_avg'][1]:.1f}"
                    for r in results
                ),
                "",
            ]
        )
        + "\n"
    )


def _child_env(backend: str | None = None) -> dict:
    env = dict(os.environ)
    if backend:
        env["KERAS_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), env.get("PYTHONPATH")])
    )
    return env


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend", default=keras.backend.backend(), choices=[*BACKENDS, "all"]
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny model, 3 epochs: checks every path quickly",
    )
    parser.add_argument("--reps", type=int, help="repetitions of each variant")
    parser.add_argument("--epochs", type=int, help="epochs a fit")
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="torch intra-op threads (default: torch's own)",
    )
    parser.add_argument(
        "--rss",
        choices=["subprocess", "inprocess", "off"],
        help="how peak RSS is measured: each variant in a fresh "
        "process (default), one after another in this one "
        "(default with --smoke), or not",
    )
    parser.add_argument("--out", help="also write the Markdown tables here")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument(
        "--by-count",
        action="store_true",
        help="only the bookkeeping of 6 against 300 variables of the same bytes",
    )
    parser.add_argument(
        "--baseline",
        help="with --by-count: also measure keras_aswa as of this git revision",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with --by-count: processes per backend and engine",
    )
    parser.add_argument("--peak-rss-of", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--by-count-of", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else REFERENCE
    args.rss = args.rss or ("inprocess" if args.smoke else "subprocess")
    cfg = replace(cfg, reps=args.reps or cfg.reps, epochs=args.epochs or cfg.epochs)
    if args.torch_threads:
        cfg = replace(cfg, torch_threads=args.torch_threads)

    if args.peak_rss_of or args.by_count_of:  # child of peak_rss_all, by_count
        if keras.backend.backend() == "torch" and cfg.torch_threads:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        result = (
            peak_rss(Workload(cfg), args.peak_rss_of)
            if args.peak_rss_of
            else decisions_by_count(args.by_count_of)
        )
        Path(args.json).write_text(json.dumps(result))
        return
    backends = BACKENDS if args.backend == "all" else [args.backend]
    if args.by_count:
        reps = args.reps or cfg.bookkeeping_reps
        report = by_count(backends, reps, args.rounds, args.baseline, cfg.torch_threads)
        text = by_count_markdown(report, argv)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        return
    results = []
    for b in backends:
        if b == keras.backend.backend() and len(backends) == 1:
            results.append(run_backend(cfg, args.rss))
            continue
        # Keras fixes the backend per process: one child per backend.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "result.json"
            child = ["--rss", args.rss, *(["--smoke"] if args.smoke else [])]
            child += ["--reps", str(cfg.reps), "--epochs", str(cfg.epochs)]
            if cfg.torch_threads:
                child += ["--torch-threads", str(cfg.torch_threads)]
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.overhead",
                "--backend",
                b,
                "--json",
                str(path),
                *child,
            ]
            done = subprocess.run(cmd, cwd=REPO, env=_child_env(b))
            if done.returncode:  # report the backends that ran
                print(
                    f"{b}: failed with exit status {done.returncode}", file=sys.stderr
                )
                continue
            results += json.loads(path.read_text())
    if not results:
        sys.exit(1)
    text = header(results, argv) + markdown(results)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
