"""Paired comparisons over seeds: means, wins/ties/losses, Wilcoxon p.

numpy only (scipy for the test, imported when there is one to make): the
report code re-summarizes merged runs with it.
"""

from __future__ import annotations

import numpy as np

from benchmarks.quality.config import METHODS, STEP_VARIANTS, step_method


def paired(a: np.ndarray, b: np.ndarray) -> dict:
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


def summarize(
    records: list[dict], metric_names, methods=METHODS, baselines: bool = False
) -> dict:
    """Mean and std per method; ASWA's paired comparison on each metric.

    Std is the sample std (ddof=1). Wins/ties/losses compare ASWA with the
    other method seed by seed (exact equality is a tie). The p-value is
    scipy's two-sided Wilcoxon signed-rank test on the paired differences
    (zero differences dropped); None with fewer than 2 seeds, 1.0 when all
    differences are zero. With 5 seeds the smallest possible p is 0.0625.
    With step-level methods, `vs_ema` holds the same comparison of every
    ASWA variant (epoch and step level) against EMA. With `baselines` (the
    regimes study), `vs_baselines[variant][baseline]` holds it for every ASWA
    variant (a method named ``aswa*``) against every other method, and
    `vs_auto[variant]` that of each `STEP_VARIANTS` ASWA run against
    ``aswa_auto``, the rule it varies.
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
                entry[name].update(paired(values("aswa", name), v))
        out["methods"][method] = entry
    if len(methods) > len(METHODS):
        out["vs_ema"] = {
            m: {n: paired(values(m, n), values("ema", n)) for n in metric_names}
            for m in methods
            if m == "aswa" or m not in METHODS
        }
    if baselines:
        variants = [m for m in methods if m.startswith("aswa")]
        out["vs_baselines"] = {
            a: {
                b: {n: paired(values(a, n), values(b, n)) for n in metric_names}
                for b in methods
                if not b.startswith("aswa")
            }
            for a in variants
        }
        auto = step_method("auto")
        tried = [m for m in map(step_method, STEP_VARIANTS) if m in methods]
        if auto in methods and tried:
            out["vs_auto"] = {
                v: {n: paired(values(v, n), values(auto, n)) for n in metric_names}
                for v in tried
            }
    return out
