"""The quality benchmark's run: the grid, seed by seed, into JSON, Markdown
and plots.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import keras

from benchmarks.machine import load_average, machine, versions
from benchmarks.quality.config import (
    METHODS,
    Config,
    configs,
    metric_names,
    regime_configs,
    step_method,
)
from benchmarks.quality.measure import run_seed, time_kg, time_steps, verify_read_off
from benchmarks.quality.regimes_report import render_regimes_markdown
from benchmarks.quality.report import render_markdown
from benchmarks.quality.results import write_json
from benchmarks.quality.stats import summarize
from benchmarks.quality.steps_report import render_steps_markdown
from benchmarks.quality.training import data_sizes, load_data
from keras_aswa import ASWA, plot_history


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


def environment() -> dict:
    """The backend, library versions, machine and load a run starts with."""
    backend = keras.backend.backend()
    m = machine()
    libs = versions("keras", backend, "numpy", "scipy", "sklearn", "matplotlib")
    return {
        "backend": backend,
        "versions": {"python": m["python"], **libs, "keras_aswa": m["commit"]},
        "nproc": m["nproc"],
        "cpu": m["cpu"],
        "platform": m["platform"],
        "load_average_at_start": load_average(),
    }


def log(message: str) -> None:
    """A progress line, time-stamped."""
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
    regimes=None,
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
        regimes: The regimes study (`REGIMES`: "finetune", "small", "rich")
            instead of the data sets: the extra baselines read off too, no
            plots, timings or read-off check (the 0.99 EMA shadow is checked
            against the optimizer's on every seed); writes
            quality-regimes.json/.md.
    """
    started = time.perf_counter()
    if regimes:
        grid = regime_configs(regimes, smoke, only, step_freqs)
        stem = "quality-regimes"
        verify = verify or {}
    else:
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
    if regimes:
        result["study"] = "regimes"
        result["regimes"] = list(regimes)
    out.mkdir(parents=True, exist_ok=True)
    cache = {}
    for cfg in grid:
        if cfg.dataset not in cache:
            # One at a time; the pretrained backbone is cached beside the run.
            cache = {cfg.dataset: load_data(cfg.dataset, smoke, out / "pretrained")}
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
                + ", ".join(
                    f"{k} {m[k][cfg.metric]:.4f}" for k in METHODS + cfg.baselines
                )
                + f" ({record['fit_seconds']:.1f} s, ASWA {record['aswa_decisions']})"
            )
            if "step_aswa" in record:
                log(
                    f"{cfg.key} seed {seed} step-level: "
                    + ", ".join(
                        f"{k} {m[k][cfg.metric]:.4f} ({v['checks']} checks of "
                        f"{v['validation_steps']} batches every {v['every']}, "
                        f"{v['check_seconds_total']:.1f} s, one evaluation "
                        f"{v['eval_seconds'] * 1e3:.0f} ms, {v['decisions']})"
                        for k, v in record["step_aswa"].items()
                    )
                )
            if i == 0 and not regimes:
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
                entry["records"], metric_names(cfg), cfg.methods, bool(cfg.baselines)
            )
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            result["configs"][cfg.key] = entry
            result["runtime_seconds"] = round(time.perf_counter() - started, 1)
            write_json(result, out / f"{stem}.json")
    result["environment"]["load_average_at_end"] = load_average()
    result["runtime_seconds"] = round(time.perf_counter() - started, 1)
    write_json(result, out / f"{stem}.json")
    render = (
        render_regimes_markdown
        if regimes
        else render_steps_markdown
        if steps
        else render_markdown
    )
    (out / f"{stem}.md").write_text(render(result, out))
    log(f"done in {result['runtime_seconds']:.0f} s; wrote {out / f'{stem}.md'}")
    return result
