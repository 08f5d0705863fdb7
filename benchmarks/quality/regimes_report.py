"""quality-regimes.md from quality-regimes.json: every ASWA variant against
every baseline, regime by regime, one section per backend.

Imports no Keras, keras_aswa or backend: a report re-renders anywhere.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.quality.config import (
    EMA_MOMENTA,
    FINETUNE_EPOCHS,
    FINETUNE_LRS,
    FINETUNE_TRAIN,
    FINETUNE_VAL,
    LORA_RANK,
    PRETRAIN_EPOCHS,
    SHORT_EPOCHS,
    SHORT_LEARNING_RATE,
    SMALL_EPOCHS,
    SMALL_TRAIN,
    SMALL_VAL,
    STEP_VARIANTS,
    TEXT_BATCH_SIZE,
    TEXT_EPOCHS,
    TEXT_LEARNING_RATE,
    TEXT_SEQUENCE_LENGTH,
    Config,
    method_label,
)
from benchmarks.quality.report import fmt_p, run_header, table_head

# Column order: baselines first, the ASWAs last.
ORDER = (
    "last",
    "early_stopping",
    "best_step",
    "swa",
    "ema",
    "ema_tuned",
    "aswa",
)
REGIME_TITLES = {
    "finetune": "Fine-tuning a pretrained CNN (classes 0-4 → 5-9, 1,000 images)",
    "small": "Small data, overfitting (2,000 images, MLP)",
    "rich": "Data-rich (Fashion-MNIST, 54,000 images)",
    "text": "Fine-tuning a pretrained BERT with LoRA (Austen's novels, 1,000 "
    "paragraphs)",
    "short": "Short fine-tuning: 96 optimizer steps of a pretrained CNN",
}


def _ordered(entries: dict, attribute: str) -> list[str]:
    """The methods `Config.<attribute>` names in any configuration, in
    report order: ORDER, then the step-level ASWAs."""
    methods = list(
        dict.fromkeys(
            m
            for e in entries.values()
            for m in getattr(Config(**e["config"]), attribute)
        )
    )
    known = [m for m in ORDER if m in methods]
    return known + [m for m in methods if m not in ORDER]


def _wtl(h: dict) -> str:
    return (
        f"{h['wins']}/{h['ties']}/{h['losses']} {100 * h['mean_diff']:+.2f} "
        f"({fmt_p(h['wilcoxon_p'])})"
    )


def _cells(row: dict, columns: list[str], totals: dict) -> list[str]:
    """One configuration's comparisons in `row`, a cell per column ("–"
    where it was not run); adds their wins, ties and losses to
    `totals[column]`."""
    cells = []
    for c in columns:
        if c not in row:
            cells.append("–")
            continue
        h = row[c]["accuracy"]
        cells.append(_wtl(h))
        total = totals.setdefault(c, [0, 0, 0])
        for i, part in enumerate(("wins", "ties", "losses")):
            total[i] += h[part]
    return cells


def _total(total: list[int] | None) -> str:
    return "–" if total is None else "**{}/{}/{}**".format(*total)


def _means_table(entries: dict) -> list[str]:
    """Test accuracy (%) per configuration and method, mean ± std over seeds."""
    methods = _ordered(entries, "methods")
    lines = table_head(["configuration", "seeds", *methods])
    for key, entry in entries.items():
        s = entry["summary"]["methods"]
        means = {m: s[m]["accuracy"]["mean"] for m in methods if m in s}
        top = max(means.values())
        cells = []
        for m in methods:
            if m not in s:
                cells.append("–")
                continue
            text = f"{100 * means[m]:.2f} ± {100 * s[m]['accuracy']['std']:.2f}"
            cells.append(f"**{text}**" if means[m] == top else text)
        lines.append(
            f"| {key} | {entry['summary']['n_seeds']} | " + " | ".join(cells) + " |"
        )
    return lines


def _versus_table(entries: dict) -> list[str]:
    """W/T/L, mean difference and Wilcoxon p of each ASWA against each baseline."""
    baselines = _ordered(entries, "baseline_methods")
    lines = table_head(["configuration", "ASWA", *(f"vs {b}" for b in baselines)])
    totals = {}  # variant -> baseline -> [wins, ties, losses]
    for key, entry in entries.items():
        for variant, row in entry["summary"]["vs_baselines"].items():
            cells = _cells(row, baselines, totals.setdefault(variant, {}))
            lines.append(f"| {key} | {variant} | " + " | ".join(cells) + " |")
    for variant, by_baseline in totals.items():
        cells = [_total(by_baseline.get(b)) for b in baselines]
        lines.append(f"| all seeds above | {variant} | " + " | ".join(cells) + " |")
    return lines


def _variants_table(entries: dict) -> list[str]:
    """W/T/L, mean difference and Wilcoxon p of each `STEP_VARIANTS` ASWA
    against ``aswa_auto``; empty when no configuration ran one."""
    rows = {k: e["summary"].get("vs_auto", {}) for k, e in entries.items()}
    variants = list(dict.fromkeys(v for row in rows.values() for v in row))
    if not variants:
        return []
    lines = [
        "Each step-level variant against `aswa_auto`, the rule it varies (read "
        "off the same run; each times its own checks, so N can differ by a "
        "few batches), seed by seed, as above:",
        "",
        *table_head(["configuration", *(f"{v} vs aswa_auto" for v in variants)]),
    ]
    totals = {}
    for key, row in rows.items():
        lines.append(f"| {key} | " + " | ".join(_cells(row, variants, totals)) + " |")
    cells = [_total(totals.get(v)) for v in variants]
    lines.append("| all seeds above | " + " | ".join(cells) + " |")
    return lines + [""]


def _details(entries: dict) -> list[str]:
    """Per configuration: what each selecting method chose, seed by seed."""
    lines = []
    for key, entry in entries.items():
        recs = entry["records"]
        cfg = Config(**entry["config"])
        sizes = ", ".join(f"{k} {n}" for k, n in entry["data_sizes"].items())
        chosen = [r.get("ema_tuned_momentum") for r in recs]
        best = [r["best_step"].get("step") if "best_step" in r else None for r in recs]
        best_epoch = [
            r["best_step"].get("epoch") if "best_step" in r else None for r in recs
        ]
        auto = [r.get("step_aswa", {}).get("aswa_auto") for r in recs]
        auto_nk = [
            None if a is None else (a["every"], a["validation_steps"]) for a in auto
        ]
        checks = [None if a is None else a["checks"] for a in auto]
        ema_diff = max(
            (r.get("ema_099_vs_optimizer_max_abs_diff", 0.0) for r in recs),
            default=0.0,
        )
        fit_s = [r["fit_seconds"] for r in recs]
        lines += [
            f"- **{key}**: {cfg.epochs} epochs, batch {cfg.batch_size}, "
            f"{cfg.optimizer} {cfg.learning_rate:g}, monitor `{cfg.monitor}` "
            f"(step-level: `{cfg.step_watch[0]}`); data {sizes}; fit {min(fit_s):.0f}-"
            f"{max(fit_s):.0f} s a seed. Early stopping's best epoch "
            f"{[r['early_stopping_best_epoch'] for r in recs]}; best step-level "
            f"check at batch {best} (epoch {best_epoch}); `aswa_auto` (N, K) "
            f"{auto_nk}, {checks} checks; ASWA sizes "
            f"{[r['aswa_size'] for r in recs]}; EMA momentum chosen {chosen}; "
            f"the 0.99 shadow against the optimizer's EMA: max abs weight "
            f"difference {ema_diff:.2g}.",
        ]
    return lines + [""]


def _backend_section(run: dict, level: str) -> list[str]:
    """One run's tables, regime by regime."""
    lines = []
    configs = run["configs"]
    for regime, title in REGIME_TITLES.items():
        entries = {
            k: e for k, e in configs.items() if e["config"].get("regime") == regime
        }
        if not entries:
            continue
        lines += [
            f"{level} {title}",
            "",
            "Test accuracy (%), mean ± std over seeds (bold: the best mean):",
            "",
            *_means_table(entries),
            "",
            "Each ASWA against each baseline, seed by seed: wins/ties/losses, "
            "mean difference (points, ASWA − baseline), (Wilcoxon p); the last "
            "rows add up the wins, ties and losses over the configurations above:",
            "",
            *_versus_table(entries),
            "",
            *_variants_table(entries),
            *_details(entries),
        ]
    return lines


def _regime_setup() -> dict[str, str]:
    """Each regime's set-up, the bullet that describes it."""
    lrs = "; ".join(f"{ft} {lo:g} and {hi:g}" for ft, (lo, hi) in FINETUNE_LRS.items())
    return {
        "finetune": (
            "- Fine-tuning: a CNN (two Conv-BatchNorm-ReLU-MaxPool blocks, "
            "Dense 64) pretrained once per backend on the training images of "
            f"Fashion-MNIST classes 0-4 ({PRETRAIN_EPOCHS} epochs, seed 0, cached), "
            f"fine-tuned under a new 5-way head on {FINETUNE_TRAIN} training images "
            f"of classes 5-9 (200 a class); validation: {FINETUNE_VAL} other "
            "training images of classes 5-9; test: the 5,000 test images of classes "
            "5-9. Variants: `full` (everything trains, BatchNorm statistics too), "
            "`frozen` (only the head trains), `lora` (LoRA of rank "
            f"{LORA_RANK} on the backbone's Dense layer via `Dense.enable_lora`, "
            "the head trained in full; the convolutions and BatchNorm are frozen, "
            "as Keras has LoRA for Dense and EinsumDense layers only). "
            f"{FINETUNE_EPOCHS} epochs, batch 32, at constant Adam learning rates "
            f"({lrs}): at the lower one of each variant the runs are still "
            "improving at the end, at the higher one they have converged (chosen "
            "by a sweep, docs/benchmarks.md)."
        ),
        "short": (
            "- Short fine-tuning: the fine-tuning regime's pretrained CNN and data, "
            f"fully fine-tuned for {SHORT_EPOCHS} epochs of 32 batches (96 optimizer "
            f"steps) at Adam {SHORT_LEARNING_RATE:g}, every method on `val_loss`; "
            "step-level ASWA every 4 and 8 batches on all validation batches, and "
            '`update_freq="auto"` (its floor of 24 checks: every 4 batches, on 8).'
        ),
        "small": (
            f"- Small data: an MLP (256-128) on {SMALL_TRAIN} training images (200 a "
            f"class), validation {SMALL_VAL} other training images, test the 10,000 "
            f"test images; {SMALL_EPOCHS} epochs of Adam 1e-3 at batch 32, long "
            "enough to overfit; two configurations, every selecting method (early "
            "stopping, best_step, ASWA at both levels, the EMA's momentum) on "
            "`val_loss` or on `val_accuracy`."
        ),
        "rich": (
            "- Data-rich: the quality benchmark's Fashion-MNIST configurations, "
            "unchanged, with the extra baselines read off."
        ),
        "text": (
            "- Text: `examples/finetune_lora.py`'s task and settings: which of "
            "Jane Austen's six novels a paragraph comes from, on the example's "
            "fixed split (1,000 training, 200 validation, 300 test paragraphs), "
            f"as word-level token ids, {TEXT_SEQUENCE_LENGTH} a paragraph; its "
            "keras-hub `BertTextClassifier` on the small BERT backbone pretrained "
            "(masked language model, training paragraphs only) in "
            "`examples/data/austen_bert`, mixed_bfloat16, a new 6-way head, "
            f"LoRA of rank {LORA_RANK} on the backbone (`backbone.enable_lora` "
            "freezes it: the EMAs and ensembles hold the LoRA factors, the head "
            f"and the query and value biases). {TEXT_EPOCHS} epochs, batch "
            f"{TEXT_BATCH_SIZE}, constant AdamW {TEXT_LEARNING_RATE:g}, as the "
            "example, but the batches shuffled every epoch (keras-hub's fit, "
            "which the example uses, keeps one order)."
        ),
    }


def _setup(regimes: set[str], variants: list[str]) -> list[str]:
    """The set-up: the methods (the `STEP_VARIANTS` among them where the
    report holds some), then each regime in `regimes` (those it holds)."""
    momenta = ", ".join(f"{m:g}" for m in EMA_MOMENTA)
    return [
        "## Set-up",
        "",
        "As in the quality benchmark, every method of a seed is read off **one** "
        "training run: none of them changes the trajectory. Methods:",
        "",
        *(
            f"- `{m}`: {method_label(m)}"
            for m in (
                "last",
                "early_stopping",
                "best_step",
                "swa",
                "ema",
                "ema_tuned",
                "aswa",
                "aswa_auto",
                *variants,
            )
        ),
        "",
        "- `best_step` is early stopping at step granularity: at every check of "
        '`aswa_auto` (`ASWA(update_freq="auto")`, its N training batches and K '
        "validation batches), the running model's score there is compared with "
        "the best so far and the best running weights are kept (strictly "
        "better, as Keras' rule).",
        f"- `ema_tuned`: EMAs of the trainable weights at momenta {momenta}, "
        "tracked after every optimizer step beside the optimizer's own (`ema`, "
        "0.99) by a callback that updates as Keras does (on every seed its 0.99 "
        "shadow is checked against the optimizer's, see the details); per seed "
        "the momentum whose weights score best on the validation split "
        "(the configuration's monitor; ties go to 0.99) is taken, and its test "
        "score reported.",
        *(b for r, b in _regime_setup().items() if r in regimes),
        "- Seeds vary initialisation (the head's, LoRA's) and batch order; the "
        "splits are fixed. With 5 seeds the smallest two-sided Wilcoxon p is "
        "0.0625.",
        "",
    ]


def render_regimes_markdown(result: dict, out: Path) -> str:
    """quality-regimes.md: each backend's regimes, ASWA against every baseline."""
    kind = (
        "SMOKE run (tiny data, 2-3 epochs: not quality results)"
        if result["smoke"]
        else "full run"
    )
    lines = [
        *run_header(
            "# Quality where users train: fine-tuning, small data, data-rich",
            kind,
            result,
        ),
        "- raw per-seed numbers: `quality-regimes.json`",
    ]
    others = result.get("other_backends") or {}
    for backend, run in others.items():
        lines.append(
            f"- {backend}: `{run['command']}`; seeds {run['seeds']}; {run['date']}; "
            f"{run['runtime_seconds'] / 60:.1f} min"
        )
    for run in [result, *others.values()]:
        for extra in run.get("other_runs", []):
            again = " (run again: these results replace the earlier ones)"
            lines.append(
                f"- {run['environment']['backend']}, {', '.join(extra['configs'])}: "
                f"from a separate run{again if extra.get('replaced') else ''}, "
                f"`{extra['command']}`; seeds {extra['seeds']}; "
                f"{extra['date']}; {extra['runtime_seconds'] / 60:.1f} min"
            )
    runs = [result, *others.values(), *(result.get("smoke_runs") or {}).values()]
    configs = [e["config"] for run in runs for e in run["configs"].values()]
    read_off = {n for c in configs for n in c["step_freqs"]}
    variants = [f"aswa_{v}" for v in STEP_VARIANTS if v in read_off]
    lines += ["", *_setup({c["regime"] for c in configs}, variants)]
    for run in [result, *others.values()]:
        lines += [f"## {run['environment']['backend']}", ""]
        lines += _backend_section(run, "###")
    for backend, run in sorted((result.get("smoke_runs") or {}).items()):
        lines += [f"## Smoke run, {backend} (not quality results)", ""]
        lines += _backend_section(run, "###")
    return "\n".join(lines).rstrip() + "\n"
