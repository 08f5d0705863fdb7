"""The quality benchmark's smoke run, in-process on the current backend.

Structure and sanity only (every data set, model and method present, scores
in range, the report written, methods read off one run equal to real runs);
no quality thresholds: 3 epochs on tiny data say nothing about quality.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import keras
import numpy as np
import pytest
from scipy.stats import wilcoxon

from benchmarks.datasets import load_fashion_mnist
from benchmarks.quality.__main__ import main
from benchmarks.quality.config import (
    EXTRA_BASELINES,
    FINETUNE_LRS,
    FINETUNE_TRAIN,
    FINETUNE_VARIANTS,
    KG_METRICS,
    LORA_RANK,
    METHODS,
    REGIMES,
    SMALL_EPOCHS,
    SMOKE_STEP_FREQS,
    SMOKE_TEXT,
    STEP_VARIANTS,
    Config,
    configs,
    parse_seeds,
    parse_step_freq,
    regime_configs,
    step_method,
)
from benchmarks.quality.regimes import finetune_indices, regime_arrays, small_indices
from benchmarks.quality.regimes_report import render_regimes_markdown
from benchmarks.quality.stats import summarize
from benchmarks.quality.steps_report import render_steps_markdown
from benchmarks.quality.training import (
    BestStepSnapshot,
    LastWeights,
    MultiEMA,
    build_model,
    cnn_body,
    finetune_lora_example,
    finetune_model,
    text_data,
)
from keras_aswa import ASWA

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
    beside it) must equal a run with only `SWA(restore_best=True)` and no EMA,
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


def test_summarize_compares_each_variant_with_auto():
    variants = ("aswa_auto-recent", "aswa_auto-accuracy")
    methods = (*METHODS, "aswa_auto", *variants)
    acc = {
        "aswa_auto": [0.90, 0.91, 0.92, 0.93],
        "aswa_auto-recent": [0.91, 0.91, 0.90, 0.95],
    }
    records = [
        {
            "metrics": {
                m: {"accuracy": acc.get(m, [0.9] * 4)[i], "val": 0.5} for m in methods
            }
        }
        for i in range(4)
    ]
    s = summarize(records, ("accuracy",), methods, baselines=True)
    assert set(s["vs_auto"]) == set(variants)
    h = s["vs_auto"]["aswa_auto-recent"]["accuracy"]
    diff = np.array(acc["aswa_auto-recent"]) - np.array(acc["aswa_auto"])
    assert (h["wins"], h["ties"], h["losses"]) == (2, 1, 1)
    assert h["mean_diff"] == pytest.approx(diff.mean())
    assert h["wilcoxon_p"] == pytest.approx(wilcoxon(diff).pvalue)
    # No variant run, or no "auto" to compare it with: no comparison.
    plain = (*METHODS, "aswa_auto")
    assert "vs_auto" not in summarize(records, ("accuracy",), plain, baselines=True)
    alone = (*METHODS, *variants)
    assert "vs_auto" not in summarize(records, ("accuracy",), alone, baselines=True)


def test_parse_seeds():
    assert parse_seeds("1-3,7") == [1, 2, 3, 7]
    assert parse_seeds("5") == [5]


def test_backend_must_match_the_loaded_one():
    other = next(
        b for b in ("tensorflow", "jax", "torch") if b != keras.backend.backend()
    )
    with pytest.raises(SystemExit):
        main(["--smoke", "--backend", other])


# --------------------------------------------------------------------------
# the regimes study (quality-regimes.json, written by the same smoke run)
# --------------------------------------------------------------------------


def test_smoke_covers_every_regime(smoke):
    _, out = smoke
    result = json.loads((out / "quality-regimes.json").read_text())
    assert result["smoke"] is True and result["study"] == "regimes"
    assert result["regimes"] == list(REGIMES)
    assert set(result["configs"]) == {c.key for c in regime_configs(REGIMES, True)}
    regimes = {e["config"]["regime"] for e in result["configs"].values()}
    assert regimes == set(REGIMES)
    variants = {e["config"]["finetune"] for e in result["configs"].values()}
    assert variants >= set(FINETUNE_VARIANTS)
    for key, entry in result["configs"].items():
        cfg = Config(**entry["config"])
        (record,) = entry["records"]
        assert set(record["metrics"]) == set(cfg.methods)
        assert {"best_step", "ema_tuned", "aswa_auto"} <= set(cfg.methods)
        for metrics in record["metrics"].values():
            assert 0.0 <= metrics["accuracy"] <= 1.0
            assert math.isfinite(metrics["val_loss"])
        # The 0.99 shadow tracked beside the optimizer's is the optimizer's.
        assert record["ema_099_vs_optimizer_max_abs_diff"] <= 1e-5, key
        assert record["metrics"]["ema"]["accuracy"] == pytest.approx(
            record["ema_momenta"]["0.99"]["accuracy"], abs=2 / 256
        )
        # ema_tuned is the shadow with the best validation score.
        chosen = record["ema_tuned_momentum"]
        shadows = record["ema_momenta"]
        if cfg.monitor == "val_loss":
            assert shadows[f"{chosen:g}"]["val_loss"] == min(
                s["val_loss"] for s in shadows.values()
            )
        else:
            assert shadows[f"{chosen:g}"]["val"] == max(
                s["val"] for s in shadows.values()
            )
        # best_step: the best running score among aswa_auto's checks.
        best = record["best_step"]
        step = record["step_aswa"]["aswa_auto"]
        assert best["follows"] == "aswa_auto"
        assert best["checks"] == step["checks"] and 0 <= best["check"] < best["checks"]
        vs = entry["summary"]["vs_baselines"]
        assert set(vs) == set(cfg.aswa_variants)
        for variant, row in vs.items():
            assert set(row) == set(cfg.baseline_methods)
            h = row["ema_tuned"]["accuracy"]
            m = record["metrics"]
            assert h["mean_diff"] == pytest.approx(
                m[variant]["accuracy"] - m["ema_tuned"]["accuracy"]
            )
    sizes = {k: e["data_sizes"] for k, e in result["configs"].items()}
    assert sizes["fmnist_small/mlp-val_loss"] == {"train": 128, "val": 64, "test": 256}
    # The text example's smoke slices: a tenth of its 1,000 training
    # paragraphs, 32 of the validation and of the test ones.
    assert sizes["austen/bert-lora"] == {"train": 100, "val": 32, "test": 32}
    md = (out / "quality-regimes.md").read_text()
    assert "SMOKE run" in md
    titles = ("Fine-tuning a pretrained CNN", "Small data", "Data-rich")
    for title in (*titles, "Fine-tuning a pretrained BERT with LoRA"):
        assert f"### {title}" in md
    assert "- Text: `examples/finetune_lora.py`'s task" in md
    assert "epochs, batch 16, AdamW 0.01, monitor `val_accuracy`" in md
    assert "| fmnist_small/mlp-val_loss | aswa_auto |" in md
    assert "vs ema_tuned" in md


def test_regimes_report_rerenders_and_merges(smoke, tmp_path):
    _, out = smoke
    (tmp_path / "quality-regimes.json").write_text(
        (out / "quality-regimes.json").read_text()
    )
    main(["--report", "--regime", "all", "--out", str(tmp_path)])
    assert (tmp_path / "quality-regimes.md").read_text() == (
        out / "quality-regimes.md"
    ).read_text()
    # Summaries are recomputed from the records (a run from before a
    # comparison was added gets it).
    older = json.loads((out / "quality-regimes.json").read_text())
    for entry in older["configs"].values():
        del entry["summary"]["vs_baselines"]
    (tmp_path / "quality-regimes.json").write_text(json.dumps(older))
    main(["--report", "--regime", "all", "--out", str(tmp_path)])
    assert (tmp_path / "quality-regimes.md").read_text() == (
        out / "quality-regimes.md"
    ).read_text()
    other = json.loads((out / "quality-regimes.json").read_text())
    other["smoke"] = False
    other["environment"]["backend"] = "other"
    (tmp_path / "other.json").write_text(json.dumps(other))
    main(
        [
            "--report",
            "--regime",
            "all",
            "--out",
            str(tmp_path),
            "--include",
            str(tmp_path / "other.json"),
        ]
    )
    md = (tmp_path / "quality-regimes.md").read_text()
    assert md.count("### Fine-tuning a pretrained CNN") == 2
    assert "\n## other\n" in md
    # A run on a backend already in the report joins its configurations.
    apart = json.loads((out / "quality-regimes.json").read_text())
    apart["smoke"] = False
    apart["configs"] = {
        "x/mlp-apart": next(iter(apart["configs"].values())),
    }
    apart["command"] = "python -m benchmarks.quality --regime rich --only x"
    (tmp_path / "apart.json").write_text(json.dumps(apart))
    args = ["--report", "--regime", "all", "--out", str(tmp_path)]
    merged = main([*args, "--include", str(tmp_path / "apart.json")])
    assert "x/mlp-apart" in merged["configs"]
    md = (tmp_path / "quality-regimes.md").read_text()
    assert "x/mlp-apart: from a separate run, `python -m benchmarks.quality" in md
    # Run again (e.g. after a rule changed): its results replace the earlier.
    apart["configs"]["x/mlp-apart"]["records"][0]["seed"] = 99
    apart["command"] += " --again"
    (tmp_path / "again.json").write_text(json.dumps(apart))
    merged = main([*args, "--include", str(tmp_path / "again.json")])
    assert merged["configs"]["x/mlp-apart"]["records"][0]["seed"] == 99
    md = (tmp_path / "quality-regimes.md").read_text()
    assert md.count("x/mlp-apart: from a separate run") == 1
    assert "x/mlp-apart: from a separate run (run again: these results" in md
    assert "--only x --again`" in md


def test_regimes_report_tables_each_variant_against_auto(smoke, tmp_path):
    _, out = smoke
    result = json.loads((out / "quality-regimes.json").read_text())
    key, entry = next(iter(result["configs"].items()))
    # Two configurations of one regime with a variant's comparison each.
    h = {"wins": 2, "ties": 1, "losses": 1, "mean_diff": 0.0025, "wilcoxon_p": 0.5}
    entry["summary"]["vs_auto"] = {"aswa_auto-recent": {"accuracy": h}}
    twin = json.loads(json.dumps(entry))
    twin["summary"]["vs_auto"]["aswa_auto-recent"]["accuracy"]["wins"] = 3
    result["configs"] = {key: entry, key + "-twin": twin}
    md = render_regimes_markdown(result, tmp_path)
    assert "| configuration | aswa_auto-recent vs aswa_auto |" in md
    assert f"| {key} | 2/1/1 +0.25 (0.5) |" in md
    assert f"| {key}-twin | 3/1/1 +0.25 (0.5) |" in md
    assert "| all seeds above | **5/2/2** |" in md
    # Without a variant, no such table.
    assert "vs aswa_auto" not in (out / "quality-regimes.md").read_text()


def test_unknown_regime_is_an_error():
    with pytest.raises(SystemExit):
        main(["--smoke", "--regime", "huge"])


def test_regime_grid():
    keys = [c.key for c in regime_configs(REGIMES, smoke=False)]
    assert keys[:6] == [
        f"fmnist_finetune/cnn-{ft}-lr{lr:g}"
        for ft in FINETUNE_VARIANTS
        for lr in FINETUNE_LRS[ft]
    ]
    assert keys[6:] == [
        "fmnist_small/mlp-val_loss",
        "fmnist_small/mlp-val_accuracy",
        "fashion_mnist/mlp",
        "fashion_mnist/cnn",
        "austen/bert-lora",
        "fmnist_finetune/cnn-short-full-lr0.001",
    ]
    grid = {c.key: c for c in regime_configs(REGIMES, smoke=False)}
    small = grid["fmnist_small/mlp-val_accuracy"]
    assert (small.monitor, small.mode, small.step_watch) == (
        "val_accuracy",
        "max",
        ("val_accuracy", "max"),
    )
    assert small.epochs == SMALL_EPOCHS
    # The data-rich ones are the classic grid's, the baselines added.
    classic = {c.key: c for c in configs(["fashion_mnist"], smoke=False)}
    for key in ("fashion_mnist/mlp", "fashion_mnist/cnn"):
        rich = grid[key]
        assert rich.regime == "rich" and rich.baselines == EXTRA_BASELINES
        assert replace(rich, regime="", baselines=()) == classic[key]
    assert classic["fashion_mnist/mlp"].methods == (
        *METHODS,
        *(step_method(n) for n in classic["fashion_mnist/mlp"].step_freqs),
    )
    assert grid["fashion_mnist/cnn"].baseline_methods == (
        *(m for m in METHODS if m != "aswa"),
        *EXTRA_BASELINES,
    )
    for c in regime_configs(REGIMES, smoke=True):
        assert c.step_freqs and c.baselines == EXTRA_BASELINES
        epochs = SMOKE_TEXT["epochs"] if c.regime == "text" else 3
        assert c.epochs == epochs, c.key
    short = grid["fmnist_finetune/cnn-short-full-lr0.001"]
    # At most 100 optimizer steps: 3 epochs of 1,000 images in batches of 32.
    assert short.epochs * -(-FINETUNE_TRAIN // short.batch_size) <= 100
    assert short.step_freqs == (4, 8, "auto") and short.finetune == "full"
    text = grid["austen/bert-lora"]
    assert (text.monitor, text.mode, text.step_freqs) == (
        "val_accuracy",
        "max",
        ("auto",),
    )
    assert (text.optimizer, grid["fashion_mnist/cnn"].optimizer) == ("AdamW", "Adam")
    (smoke,) = regime_configs(["text"], smoke=True)
    assert (smoke.epochs, smoke.batch_size) == (2, 16)


def test_finetune_splits():
    (x, y), (xt, yt) = load_fashion_mnist()
    idx = finetune_indices(y, yt)
    assert (len(idx["train"]), len(idx["val"])) == (1000, 500)
    assert len(idx["test"]) == 5000
    assert set(y[idx["pretrain"]]) == {0, 1, 2, 3, 4}
    assert len(idx["pretrain"]) == 30000
    for name, per_class in (("train", 200), ("val", 100)):
        labels, counts = np.unique(y[idx[name]], return_counts=True)
        assert list(labels) == [5, 6, 7, 8, 9] and set(counts) == {per_class}
    assert set(yt[idx["test"]]) == {5, 6, 7, 8, 9}
    # Training-file splits are disjoint (test comes from the test file).
    for a, b in (("train", "val"), ("train", "pretrain"), ("val", "pretrain")):
        assert not set(idx[a]) & set(idx[b]), (a, b)
    data = regime_arrays("fmnist_finetune", False, ((x, y), (xt, yt)))
    assert set(data["y_train"]) == set(data["y_test"]) == {0, 1, 2, 3, 4}
    assert data["x_train"].shape == (1000, 28, 28, 1)
    assert data["x_train"].dtype == np.float32 and data["x_train"].max() <= 1.0
    np.testing.assert_array_equal(data["x_val"][0, ..., 0] * 255, x[idx["val"][0]])
    # No training image is a validation one, pixel for pixel either.
    train = {img.tobytes() for img in x[idx["train"]]}
    assert not any(img.tobytes() in train for img in x[idx["val"]])
    smoke = regime_arrays("fmnist_finetune", True, ((x, y), (xt, yt)))
    assert [len(smoke[f"y_{s}"]) for s in ("pretrain", "train", "val", "test")] == [
        512,
        128,
        64,
        256,
    ]
    assert set(smoke["y_train"]) == set(smoke["y_val"]) == {0, 1, 2, 3, 4}
    assert not set(smoke["indices"]["train"]) & set(smoke["indices"]["val"])


def test_small_data_splits():
    (x, y), (xt, yt) = load_fashion_mnist()
    idx = small_indices(y, yt)
    assert (len(idx["train"]), len(idx["val"]), len(idx["test"])) == (2000, 500, 10000)
    labels, counts = np.unique(y[idx["train"]], return_counts=True)
    assert list(labels) == list(range(10)) and set(counts) == {200}
    assert not set(idx["train"]) & set(idx["val"])
    # Fixed: the same images on every call (seeds vary only the training).
    again = small_indices(y, yt)
    assert all(np.array_equal(idx[k], again[k]) for k in idx)
    data = regime_arrays("fmnist_small", False, ((x, y), (xt, yt)))
    np.testing.assert_array_equal(data["y_test"], yt)
    np.testing.assert_array_equal(data["y_train"], y[idx["train"]])


def _tiny_classifier(seed: int, ema: bool) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2, use_ema=ema),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _tiny_data(n: int = 96, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64") + (x[:, 2] > 1)
    return x, y


def test_multi_ema_equals_the_optimizers_ema():
    """Its 0.99 shadow is Keras' `use_ema=True` EMA after fit (which `fit`
    writes into the trainable weights), the others differ from it."""
    x, y = _tiny_data()
    model = _tiny_classifier(3, ema=True)
    emas = MultiEMA()
    last = LastWeights()
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[last, emas])
    optimizer_ema = model.get_weights()
    ours = emas.weights_for(0.99, last.weights)
    trainable = {id(v) for v in model.trainable_variables}
    for v, a, b, w in zip(
        model.weights, ours, optimizer_ema, last.weights, strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        if id(v) in trainable:
            assert not np.allclose(a, w, atol=1e-4)  # not the running weights
        else:  # BatchNorm statistics: the running model's
            np.testing.assert_array_equal(a, w)
    fast = emas.weights_for(0.9, last.weights)
    gaps = [float(np.max(np.abs(a - b))) for a, b in zip(fast, ours, strict=True)]
    assert max(gaps) > 1e-3


def test_best_step_snapshot_keeps_the_best_checks_weights():
    """The snapshot is the running model of the best-scoring check: its
    weights equal those recorded at that check, and scoring them on the
    check's validation batches gives that check's score."""
    x, y = _tiny_data(128)
    xv, yv = _tiny_data(64, seed=1)
    model = _tiny_classifier(5, ema=False)
    step = ASWA(
        monitor="val_loss",
        mode="min",
        validation_data=(xv, yv),
        validation_steps=1,
        update_freq=3,
        restore_best=False,
    )
    at_checks = []

    class Recorder(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            while len(at_checks) < len(step.history):
                at_checks.append(self.model.get_weights())

    best = BestStepSnapshot(step, "min")
    model.fit(
        x, y, batch_size=16, epochs=4, verbose=0, callbacks=[step, Recorder(), best]
    )
    running = [h["running"] for h in step.history]
    assert len(running) == len(at_checks) == (4 * 8) // 3
    expected = int(np.argmin(running))
    assert best.best_check == expected and best.best == running[expected]
    for a, b in zip(best.best_weights, at_checks[expected], strict=True):
        np.testing.assert_array_equal(a, b)
    model.set_weights(best.best_weights)
    score = model.evaluate(xv[:32], yv[:32], batch_size=32, verbose=0)[0]
    assert score == pytest.approx(running[expected], rel=1e-5)
    # Not trivially the last check's weights.
    if expected != len(running) - 1:
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(best.best_weights, at_checks[-1], strict=True)
        )


def test_finetune_variants_train_what_they_say(tmp_path):
    cfg0 = regime_configs(["finetune"], smoke=False)[0]
    keras.utils.set_random_seed(0)
    body = keras.Sequential([keras.Input((28, 28, 1)), *cnn_body()])
    pretrained = [layer.get_weights() for layer in body.layers]
    data = {"x_train": np.zeros((1, 28, 28, 1), "float32"), "pretrained": pretrained}
    counts = {}
    for ft in FINETUNE_VARIANTS:
        model = finetune_model(replace(cfg0, finetune=ft), data)
        for layer, weights in zip(model.layers[:-1], pretrained, strict=True):
            # LoRA's layer holds its adapters after the pretrained weights.
            for a, b in zip(layer.get_weights(), weights, strict=False):
                np.testing.assert_array_equal(a, b)
        names = sorted(v.path.split("/")[-1] for v in model.trainable_variables)
        counts[ft] = names
    assert counts["frozen"] == ["bias", "kernel"]  # the head only
    assert counts["lora"] == [
        "bias",
        "bias",
        "kernel",
        "lora_kernel_a",
        "lora_kernel_b",
    ]
    assert len(counts["full"]) == 2 + 2 * 2 + 2 + 2  # convs, BN gamma/beta, dense


def _steps_run(step_freqs, auto_accuracy, last_accuracy=0.8):
    """A step-level run's JSON as the benchmark writes it (two seeds)."""
    config = {
        "dataset": "fashion_mnist",
        "model": "mlp",
        "epochs": 2,
        "batch_size": 128,
        "learning_rate": 1e-3,
        "monitor": "val_accuracy",
        "mode": "max",
        "step_freqs": step_freqs,
        "validation_steps": 20,
        "variant": "2ep",
    }
    methods = Config(**config).methods
    records = [
        {
            "seed": seed,
            "metrics": {
                m: {
                    "accuracy": auto_accuracy if m == "aswa_auto" else last_accuracy,
                    "val": 0.5,
                }
                for m in methods
            },
            "step_aswa": {
                m: {"checks": seed} for m in methods if m.startswith("aswa_")
            },
        }
        for seed in (1, 2)
    ]
    timing = {
        part: {m: auto_accuracy for m in ("plain", "aswa_n50", "aswa_auto")}
        for part in ("seconds", "median", "over_plain")
    }
    entry = {"config": config, "records": records, "step_timing": timing, "seconds": 1}
    return {
        "command": "x",
        "date": "d",
        "runtime_seconds": 1,
        "seeds": [1, 2],
        "configs": {"fashion_mnist/mlp-2ep": entry},
        "environment": {"load_average_at_start": [0, 0, 0]},
    }


def test_a_rerun_of_some_step_variants_replaces_only_theirs(tmp_path):
    from benchmarks.quality.rerender import _merge_steps

    result = _steps_run([50, "auto"], auto_accuracy=0.1)
    (tmp_path / "rerun.json").write_text(json.dumps(_steps_run(["auto"], 0.9)))
    _merge_steps(result, str(tmp_path / "rerun.json"))
    entry = result["configs"]["fashion_mnist/mlp-2ep"]
    assert entry["config"]["step_freqs"] == [50, "auto"]
    for record in entry["records"]:
        assert record["metrics"]["aswa_auto"]["accuracy"] == 0.9
        assert record["metrics"]["aswa_n50"]["accuracy"] == 0.8
    assert entry["summary"]["methods"]["aswa_auto"]["accuracy"]["mean"] == 0.9
    over_plain = entry["step_timing"]["over_plain"]
    assert (over_plain["plain"], over_plain["aswa_n50"], over_plain["aswa_auto"]) == (
        0.1,
        0.1,
        0.9,
    )
    # Another trajectory (its last model differs): refused.
    (tmp_path / "other.json").write_text(
        json.dumps(_steps_run(["auto"], 0.9, last_accuracy=0.7))
    )
    with pytest.raises(ValueError, match="trained otherwise"):
        _merge_steps(result, str(tmp_path / "other.json"))


def test_text_regime_runs_the_examples_settings():
    """The text regime's data, model and optimizer are examples/finetune_lora.py's
    `prepare` at its defaults (smoke: at its smoke settings), seeds apart."""
    prepare = finetune_lora_example()["prepare"]
    for smoke in (False, True):
        (cfg,) = regime_configs(["text"], smoke)
        data = text_data(smoke)
        job = prepare(smoke=smoke)
        # The smoke runs 2 epochs where the example's runs 1 (config.py).
        epochs = SMOKE_TEXT["epochs"] if smoke else job["epochs"]
        assert (cfg.batch_size, cfg.epochs) == (job["batch_size"], epochs)
        splits = (job["train"], job["aswa"].validation_data, job["test"])
        for name, (x, y) in zip(("train", "val", "test"), splits, strict=True):
            assert set(data[f"x_{name}"]) == set(x)
            for key in x:
                np.testing.assert_array_equal(data[f"x_{name}"][key], x[key])
            np.testing.assert_array_equal(data[f"y_{name}"], y)
    # The compiled model: the example's, up to the seeded new weights.
    model, theirs = build_model(cfg, data, seed=1, ema=True), job["model"]
    assert type(model) is type(theirs)
    assert model.dtype_policy.name == theirs.dtype_policy.name == "mixed_bfloat16"
    assert type(model.optimizer) is type(theirs.optimizer)
    mine, their = model.optimizer.get_config(), theirs.optimizer.get_config()
    for config in (mine, their):
        config.pop("name")
    assert mine == their and mine["use_ema"] is True
    assert [v.path for v in model.trainable_variables] == [
        v.path for v in theirs.trainable_variables
    ]
    ranks = {
        v.shape[-1] for v in model.trainable_variables if "lora_kernel_a" in v.path
    }
    assert ranks == {LORA_RANK}
    # The pretrained backbone's frozen weights are the example's.
    frozen = {v.path: v for v in theirs.non_trainable_variables}
    for v in model.non_trainable_variables:
        if "float" in str(v.dtype):  # not the dropout's seed state
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(v),
                keras.ops.convert_to_numpy(frozen[v.path]),
            )


def test_text_split():
    """The example's split: fixed, disjoint, every novel in each part; the
    smoke run's slices are cut from it (the token ids: see the test above)."""
    example = finetune_lora_example()
    texts, labels, titles = example["load_paragraphs"]()
    assert len(titles) == 6 and len(texts) == 1500
    # The split of the paragraphs' indices, as austen_split splits them.
    parts = example["split"](
        np.arange(len(texts)),
        labels,
        example["N_VAL"],
        example["N_TEST"],
        example["SPLIT_SEED"],
    )
    (train, _), (val, _), (test, _) = parts
    assert (len(train), len(val), len(test)) == (1000, 200, 300)
    assert len(set(train) | set(val) | set(test)) == len(texts)
    full = example["austen_split"]()
    for (ix, _), (x, y) in zip(parts, full, strict=True):
        np.testing.assert_array_equal(x, texts[ix])
        np.testing.assert_array_equal(y, labels[ix])
        assert set(y) == set(range(6))
    again = example["austen_split"]()
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(full, again, strict=True))
    smoke = example["austen_split"](smoke=True)
    np.testing.assert_array_equal(smoke[0][0], full[0][0][::10])
    for (x, _), (whole, _) in zip(smoke[1:], full[1:], strict=True):
        np.testing.assert_array_equal(x, whole[:32])
    assert set(smoke[0][1]) == set(range(6))


def test_the_recent_variant_weighs_a_new_member_at_least_one_over_h():
    from benchmarks.quality.training import _Forgetting
    from keras_aswa.averaging import WeightAverage

    v = keras.Variable(np.zeros((2, 3), "float32"))
    average = WeightAverage([v])
    average.store = _Forgetting(average.store, 3)
    expected = None
    for n, value in enumerate([1.0, 2.0, 4.0, 8.0, 16.0]):
        v.assign(np.full((2, 3), value, "float32"))
        if expected is None:
            average.restart()
            expected = value
        else:  # E + (θ - E) / min(n + 1, H), n members before this one
            average.update()
            expected += (value - expected) / min(n + 1, 3)
    v.assign(np.full((2, 3), 32.0, "float32"))
    average.show_provisional()  # a check's candidate, then accepted
    provisional = expected + (32.0 - expected) / 3
    np.testing.assert_allclose(keras.ops.convert_to_numpy(v), provisional, rtol=1e-6)
    average.hide()
    average.commit()
    average.apply()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(v), provisional, rtol=1e-6)


def test_regime_smoke_reads_off_the_step_variants(tmp_path):
    freqs = "auto," + ",".join(STEP_VARIANTS)
    key = "fmnist_small/mlp-val_loss"
    result = main(
        ["--smoke", "--regime", "small", "--only", key, "--step-freqs", freqs]
        + ["--out", str(tmp_path)]
    )
    (record,) = result["configs"][key]["records"]
    for variant in STEP_VARIANTS:
        metrics = record["metrics"][f"aswa_{variant}"]
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert record["step_aswa"][f"aswa_{variant}"]["checks"] > 0
    md = (tmp_path / "quality-regimes.md").read_text()
    assert STEP_VARIANTS["auto-recent"] in md
    with pytest.raises(ValueError, match="an int, 'auto' or one of"):
        parse_step_freq("sometimes")
