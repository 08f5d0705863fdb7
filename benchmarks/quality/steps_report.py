"""quality-steps.md from quality-steps.json: step-level ASWA against EMA.

Imports no Keras, keras_aswa or backend, as `report`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.quality.config import METHODS, STEP_MONITOR, Config, method_label
from benchmarks.quality.report import (
    fmt_p,
    mean_std,
    run_header,
    table_head,
    verification_section,
)
from benchmarks.quality.stats import paired


def render_steps_markdown(result: dict, out: Path) -> str:
    """quality-steps.md: step-level ASWA against EMA and the other methods."""
    kind = (
        "SMOKE run (tiny data, <= 3 epochs: not quality results)"
        if result["smoke"]
        else "full run"
    )
    entries = result["configs"]
    some = Config(**next(iter(entries.values()))["config"]) if entries else None
    freqs = list(  # in the order of the configurations, "auto" last
        dict.fromkeys(
            n for e in entries.values() for n in Config(**e["config"]).step_freqs
        )
    )
    fixed = [n for n in freqs if n != "auto"]
    vsteps = some.validation_steps if some else None
    lines = [
        *run_header(
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
        f"{', '.join(map(str, fixed))} training batches (an epoch is 422 batches; "
        "which N each configuration has: its table)"
        + (
            ', and with `update_freq="auto"` (`aswa_auto`: no `validation_steps`; '
            "it chooses N and K itself from the first batches' timings, for a "
            "`check_budget` of 0.1; the N and K it chose per seed: each "
            "configuration's notes)."
            if "auto" in freqs
            else "."
        ),
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
    lines += table_head(["configuration", *methods, *(f"{m} vs ema" for m in variants)])
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
                f"{h['wins']}/{h['ties']}/{h['losses']} ({fmt_p(h['wilcoxon_p'])})"
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
                    f"{h['ties']}/{h['losses']}, p {fmt_p(h['wilcoxon_p'])})"
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
            cells = [mean_std(sm["accuracy"], 100), mean_std(sm["val"], 100)]
            if m == "ema":
                cells += ["", "", ""]
            else:
                h = (
                    s["vs_ema"][m]["accuracy"]
                    if m in s["vs_ema"]
                    else paired(
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
                    fmt_p(h["wilcoxon_p"]),
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
            chose = ""
            if m == "aswa_auto":
                chose = (
                    " (N, K) per seed: "
                    + ", ".join(
                        f"({r['step_aswa'][m]['every']}, "
                        f"{r['step_aswa'][m]['validation_steps']})"
                        for r in recs
                    )
                    + "."
                )
            lines.append(
                f"- {method_label(m)}: final ensemble sizes {sizes_}; hard "
                f"{counts['hard']}, soft {counts['soft']}, reject "
                f"{counts['reject']} per seed.{chose}"
            )
        lines.append("")
    lines += _steps_cost_section(result)
    lines += verification_section(result)
    return "\n".join(lines) + "\n"


def _steps_cost_section(result: dict) -> list[str]:
    """What the step-level checks cost: their share of fit, against an evaluation."""
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
        for m in recs[0]["step_aswa"]:
            rows = [r["step_aswa"][m] for r in recs]
            # Older runs timed one evaluation of the fixed K for all.
            evals = [
                x.get("eval_seconds") or r["eval_seconds"]
                for x, r in zip(rows, recs, strict=True)
            ]
            ev = float(np.mean(evals))
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
