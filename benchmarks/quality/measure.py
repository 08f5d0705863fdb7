"""What the quality benchmark measures: one run per seed, every method read
off it, the read-off checked against real runs, fit times compared.
"""

from __future__ import annotations

import keras
import numpy as np

from benchmarks.quality.config import METHODS, Config, step_method
from benchmarks.quality.results import history_columns, rounded
from benchmarks.quality.training import (
    BestSnapshot,
    BestStepSnapshot,
    LastWeights,
    MultiEMA,
    ValidationMRR,
    build_model,
    eval_seconds,
    evaluate,
    fit,
    make_aswa,
    make_step_aswa,
    validation_score,
)
from keras_aswa import ASWA, SWA


def _step_record(cb: ASWA, model) -> dict:
    """A step-level ASWA's ensemble, decisions and the time of its checks,
    with the median of 5 evaluations of its K batches (after one more)."""
    decisions = [h["decision"] for h in cb.history]
    secs = getattr(cb, "check_seconds", [])
    return {
        "size": cb.ensemble_size,
        "checks": len(cb.history),
        "decisions": {d: decisions.count(d) for d in sorted(set(decisions))},
        "best_score": rounded(cb.best_score),
        "check_seconds_total": round(float(np.sum(secs)), 4),
        "check_seconds_median": round(float(np.median(secs)), 5) if secs else None,
        # What it checked with: N and K (chosen by "auto").
        "every": cb.update_every,
        "validation_steps": cb._scorer.batches(),
        "eval_seconds": round(eval_seconds(cb, model), 5),
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
    swa = SWA(start_from_epoch=0.5, restore_best=False)
    best = BestSnapshot(cfg.monitor, cfg.mode)
    last = LastWeights()
    steps = {
        step_method(n): make_step_aswa(cfg, data, n, restore=False)
        for n in cfg.step_freqs
    }
    extra = []
    if "best_step" in cfg.baselines:
        # The step-level ASWA it follows: "auto" where there is one.
        followed = "auto" if "auto" in cfg.step_freqs else cfg.step_freqs[0]
        best_step = BestStepSnapshot(steps[step_method(followed)], cfg.step_watch[1])
        extra.append(best_step)
    if "ema_tuned" in cfg.baselines:
        emas = MultiEMA()
        extra.append(emas)
    # ASWA first: with score_fn it logs val_mrr for BestSnapshot; each
    # BestStepSnapshot after the step-level ASWA it reads.
    seconds = fit(cfg, data, model, [aswa, swa, best, last, *steps.values(), *extra])
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
    regime = {}
    if "best_step" in cfg.baselines and best_step.best_check is None:
        # No finite check score: nothing was kept, the last model stands in.
        weights["best_step"] = weights["last"]
        regime["best_step"] = {"follows": step_method(followed), "check": None}
    elif "best_step" in cfg.baselines:
        weights["best_step"] = best_step.best_weights
        regime["best_step"] = {
            "follows": step_method(followed),
            "check": best_step.best_check,
            "checks": len(best_step.source.history),
            "step": best_step.source.history[best_step.best_check].get("step"),
            "epoch": best_step.source.history[best_step.best_check]["epoch"],
            "score": rounded(best_step.best),
        }
    if "ema_tuned" in cfg.baselines:
        # The optimizer's own shadow is in the model now: the 0.99 one must
        # equal it (a live check of MultiEMA, recorded).
        optimizer_ema = [np.asarray(w) for w in weights["ema"]]
        mine = emas.weights_for(0.99, weights["last"])
        regime["ema_099_vs_optimizer_max_abs_diff"] = max(
            float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            for a, b in zip(mine, optimizer_ema, strict=True)
        )
        shadows = {}
        for m in emas.momenta:
            model.set_weights(emas.weights_for(m, weights["last"]))
            shadows[m] = evaluate(cfg, data, model)
        # The best validation score wins; ties go to Keras' default 0.99.
        order = sorted(emas.momenta, key=lambda m: m != 0.99)
        chosen = order[0]
        for m in order[1:]:
            score, higher = validation_score(cfg, shadows[m])
            best_score, _ = validation_score(cfg, shadows[chosen])
            if (score > best_score) if higher else (score < best_score):
                chosen = m
        weights["ema_tuned"] = emas.weights_for(chosen, weights["last"])
        regime["ema_tuned_momentum"] = chosen
        regime["ema_momenta"] = {
            f"{m:g}": {k: rounded(v) for k, v in shadows[m].items()}
            for m in emas.momenta
        }
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
        "aswa_history": history_columns(aswa.history),
    }
    if steps:
        record["step_aswa"] = {m: _step_record(cb, model) for m, cb in steps.items()}
    record.update(regime)
    return record, weights, aswa, swa.history[0]["epoch"]


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
