"""Fit times of every variant, interleaved, and whether ASWA and the naive
reimplementation decide alike.
"""

from __future__ import annotations

import gc
import statistics
import time

import numpy as np

from benchmarks.overhead.config import VARIANTS
from benchmarks.overhead.workload import (
    Clock,
    NaiveASWA,
    Workload,
    log,
    variant_callbacks,
)
from keras_aswa import ASWA


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
        log(
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
