"""The quality benchmark's smoke run, in-process on the current backend.

Structure and sanity only (every data set, model and method present, scores
in range, the report written, methods read off one run equal to real runs);
no quality thresholds: 3 epochs on tiny data say nothing about quality.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
from scipy.stats import wilcoxon

from benchmarks.quality.__main__ import main
from benchmarks.quality.config import (
    KG_METRICS,
    METHODS,
    SMOKE_STEP_FREQS,
    Config,
    configs,
    parse_seeds,
    step_method,
)
from benchmarks.quality.stats import summarize
from benchmarks.quality.steps_report import render_steps_markdown

EXPECTED_CONFIGS = {
    "fashion_mnist/mlp",
    "fashion_mnist/cnn",
    "digits/mlp",
    "umls/distmult",
    "umls/complex",
    "nations/distmult",
    "nations/complex",
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    result = main(["--smoke", "--out", str(out)])
    return result, out


def test_every_configuration_and_method_ran(smoke):
    result, _ = smoke
    assert result["smoke"] is True
    assert result["environment"]["backend"] == keras.backend.backend()
    assert set(result["configs"]) == EXPECTED_CONFIGS
    for key, entry in result["configs"].items():
        cfg = Config(**entry["config"])
        assert cfg.epochs == 3
        (record,) = entry["records"]
        assert record["seed"] == 1
        assert set(record["metrics"]) == set(cfg.methods)
        names = KG_METRICS if cfg.is_kg else ("accuracy",)
        for method, metrics in record["metrics"].items():
            for name in (*names, "val"):
                value = metrics[name]
                assert math.isfinite(value) and 0.0 <= value <= 1.0, (key, method, name)
            if cfg.is_kg:
                h1, h3, h10 = (metrics[f"hits@{k}"] for k in (1, 3, 10))
                assert h1 <= h3 <= h10
                assert h1 <= metrics["mrr"] <= 1.0
        # One decision per epoch; SWA from 50 % of 3 epochs = epochs 1 and 2.
        assert sum(record["aswa_decisions"].values()) == 3
        history = record["aswa_history"]
        assert history["epoch"] == [0, 1, 2]
        assert history["decision"][0] == "init"
        assert history["size"][-1] == record["aswa_size"]
        assert len(history["running"]) == len(history["ensemble"]) == 3
        assert record["swa_size"] == 2
        assert 1 <= record["aswa_size"] <= 3
        assert 0 <= record["early_stopping_best_epoch"] <= 2
        # Early stopping keeps the best validation epoch: nothing beats it
        # among single snapshots, so the last model can't score higher.
        assert (
            record["metrics"]["early_stopping"]["val"]
            >= record["metrics"]["last"]["val"]
        )
        summary = entry["summary"]["methods"]
        assert set(summary) == set(cfg.methods)
        for method in cfg.methods:
            s = summary[method][cfg.metric]
            assert s["mean"] == pytest.approx(record["metrics"][method][cfg.metric])
            if method != "aswa":
                assert s["wins"] + s["ties"] + s["losses"] == 1
                assert s["wilcoxon_p"] is None  # one seed: no test


def test_step_level_aswa_read_off_fashion_mnist(smoke):
    """Step-level ASWA every N of the 4 batches an epoch, beside the rest."""
    result, _ = smoke
    for entry in result["configs"].values():
        cfg = Config(**entry["config"])
        (record,) = entry["records"]
        if cfg.dataset != "fashion_mnist":
            assert not cfg.step_freqs and "step_aswa" not in record
            continue
        assert tuple(cfg.step_freqs) == SMOKE_STEP_FREQS
        assert set(record["step_aswa"]) == {step_method(n) for n in SMOKE_STEP_FREQS}
        for n in cfg.step_freqs:
            s = record["step_aswa"][step_method(n)]
            if n == "auto":
                # At most an epoch of 4 batches (half a one where two checks
                # fit the budget), chosen once the first epoch is timed: the
                # last two epochs' checks at least; K at most the 4
                # validation batches (128 images).
                assert 1 <= s["every"] <= 4
                assert 8 // s["every"] <= s["checks"] <= 12 // s["every"]
                assert 1 <= s["validation_steps"] <= 4
            else:
                assert (s["every"], s["validation_steps"]) == (n, 2)
                assert s["checks"] == (3 * 4) // n
            assert sum(s["decisions"].values()) == s["checks"]
            assert 1 <= s["size"] <= s["checks"]
            assert s["check_seconds_total"] > 0
            assert s["check_seconds_median"] > 0
            assert s["eval_seconds"] > 0
        vs_ema = entry["summary"]["vs_ema"]
        assert set(vs_ema) == {
            "aswa",
            *(step_method(n) for n in cfg.step_freqs),
        }
        for method, h in vs_ema.items():
            m = record["metrics"]
            diff = m[method]["accuracy"] - m["ema"]["accuracy"]
            assert h["accuracy"]["mean_diff"] == pytest.approx(diff)
            assert (
                h["accuracy"]["wins"] + h["accuracy"]["ties"] + h["accuracy"]["losses"]
                == 1
            )


def test_steps_report_renders_from_the_smoke_run(smoke, tmp_path):
    result, _ = smoke
    fashion = {k: e for k, e in result["configs"].items() if k.startswith("fashion")}
    md = render_steps_markdown(dict(result, configs=fashion), tmp_path)
    assert "SMOKE run" in md
    assert "| fashion_mnist/mlp (1 seeds) |" in md
    assert "aswa_n2 vs ema" in md
    assert "| fashion_mnist/cnn | aswa_n5 |" in md  # the cost table
    assert "| fashion_mnist/mlp | aswa_n2 | 6 |" in md  # 6 checks
    check = md[md.index("## Read-off check") :]
    assert "| fashion_mnist/mlp | aswa_n2 |" in check


def test_steps_study_grid():
    keys = [c.key for c in configs(["fashion_mnist"], smoke=False, steps=True)]
    assert keys == [
        "fashion_mnist/mlp-2ep",
        "fashion_mnist/cnn-2ep",
        "fashion_mnist/mlp",
        "fashion_mnist/cnn",
    ]
    grid = configs(["fashion_mnist"], smoke=True, steps=True)
    assert [c.epochs for c in grid] == [2, 2, 3, 3]
    assert all(c.step_freqs == SMOKE_STEP_FREQS for c in grid)


def test_report_json_and_plots_written(smoke):
    result, out = smoke
    assert json.loads((out / "quality.json").read_text()) == json.loads(
        json.dumps(result)
    )
    md = (out / "quality.md").read_text()
    assert "SMOKE run" in md
    for key in EXPECTED_CONFIGS:
        dataset, model = key.split("/")
        assert f"## {dataset} / {model}" in md
        png = out / "img" / f"quality_{dataset}_{model}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](img/quality_{dataset}_{model}.png)" in md
    assert "UMLS against the authors' library" in md
    assert "| distmult | 0.602 / 0.675 / 0.778 |" in md


def test_read_off_equals_real_single_method_runs(smoke):
    """The methods read off one run are those of real runs of each alone.

    SWA's average from the shared run (EMA on, ASWA and the recorders
    beside it) must equal a run with only `SWA(restore=True)` and no EMA,
    on both scoring paths: fit's validation (digits) and score_fn (UMLS);
    and step-level ASWA's (evaluating mid-epoch) a run with it alone.
    """
    result, _ = smoke
    checked = {
        k: e["verification"]
        for k, e in result["configs"].items()
        if "verification" in e
    }
    assert set(checked) == {"digits/mlp", "umls/distmult", "fashion_mnist/mlp"}
    step = step_method(SMOKE_STEP_FREQS[0])
    for key, methods in checked.items():
        assert set(methods) == ({step} if key == "fashion_mnist/mlp" else {"swa"})
        for v in methods.values():
            assert v["max_abs_weight_diff"] <= 1e-6, (key, v)
            assert v["real_run"] == pytest.approx(v["read_off"], abs=1e-6), (key, v)


def test_plain_versus_aswa_timing_recorded(smoke):
    result, _ = smoke
    timing = result["configs"]["umls/distmult"]["timing"]
    assert set(timing["median"]) == {"plain", "aswa"}
    assert all(t > 0 for t in timing["median"].values())
    assert timing["aswa_over_plain"] == pytest.approx(
        timing["median"]["aswa"] / timing["median"]["plain"]
    )


def test_report_mode_merges_smoke_runs(smoke, tmp_path):
    result, out = smoke
    full = dict(result, smoke=False)
    (tmp_path / "quality.json").write_text(json.dumps(full))
    merged = main(
        [
            "--report",
            "--out",
            str(tmp_path),
            "--include-smoke",
            str(out / "quality.json"),
        ]
    )
    backend = keras.backend.backend()
    assert set(merged["smoke_runs"]) == {backend}
    md = (tmp_path / "quality.md").read_text()
    assert "## Smoke runs on every backend" in md
    assert f"| {backend} | umls/distmult (mrr) |" in md


def _records(aswa, other):
    return [
        {
            "metrics": {
                m: {"accuracy": (a if m == "aswa" else o), "val": 0.5} for m in METHODS
            }
        }
        for a, o in zip(aswa, other, strict=True)
    ]


def test_summarize_paired_counts_and_wilcoxon():
    aswa = [0.90, 0.91, 0.92, 0.93, 0.94, 0.95]
    other = [0.89, 0.91, 0.90, 0.94, 0.90, 0.91]
    s = summarize(_records(aswa, other), ("accuracy", "val"))
    assert s["n_seeds"] == 6
    last = s["methods"]["last"]["accuracy"]
    assert (last["wins"], last["ties"], last["losses"]) == (4, 1, 1)
    diff = np.array(aswa) - np.array(other)
    assert last["wilcoxon_p"] == pytest.approx(wilcoxon(diff).pvalue)
    assert last["mean_diff"] == pytest.approx(diff.mean())
    assert s["methods"]["aswa"]["accuracy"]["mean"] == pytest.approx(np.mean(aswa))
    assert s["methods"]["aswa"]["accuracy"]["std"] == pytest.approx(
        np.std(aswa, ddof=1)
    )
    assert "wins" not in s["methods"]["aswa"]["accuracy"]
    # All differences zero: no evidence either way.
    same = summarize(_records(aswa, aswa), ("accuracy",))
    assert same["methods"]["swa"]["accuracy"]["wilcoxon_p"] == 1.0
    assert same["methods"]["swa"]["accuracy"]["ties"] == 6
    # With 5 seeds all won, the exact two-sided p is 2 / 2**5.
    five = summarize(
        _records(aswa[:5], [a - 0.01 * (i + 1) for i, a in enumerate(aswa[:5])]),
        ("accuracy",),
    )
    assert five["methods"]["ema"]["accuracy"]["wilcoxon_p"] == pytest.approx(0.0625)


def test_summarize_compares_step_level_methods_with_ema():
    methods = (*METHODS, "aswa_n50")
    records = [
        {
            "metrics": {
                m: {"accuracy": 0.9 + 0.01 * i * (m == "aswa_n50"), "val": 0.5}
                for m in methods
            }
        }
        for i in range(4)
    ]
    s = summarize(records, ("accuracy",), methods)
    assert set(s["methods"]) == set(methods)
    assert set(s["vs_ema"]) == {"aswa", "aswa_n50"}
    h = s["vs_ema"]["aswa_n50"]["accuracy"]
    assert (h["wins"], h["ties"], h["losses"]) == (3, 1, 0)
    assert h["mean_diff"] == pytest.approx(0.015)
    assert "vs_ema" not in summarize(records, ("accuracy",))


def test_parse_seeds():
    assert parse_seeds("1-3,7") == [1, 2, 3, 7]
    assert parse_seeds("5") == [5]


def test_backend_must_match_the_loaded_one():
    other = next(
        b for b in ("tensorflow", "jax", "torch") if b != keras.backend.backend()
    )
    with pytest.raises(SystemExit):
        main(["--smoke", "--backend", other])
