"""The cost benchmark's smoke run, in this process, on the current backend.

Checks structure and correctness only (no timing thresholds): every variant
ran, ratios are positive, the naive reimplementation takes ASWA's decisions.
"""

import dataclasses
import math

import keras
import pytest

from benchmarks.overhead import __main__ as cli
from benchmarks.overhead.by_count import decisions_by_count
from benchmarks.overhead.config import DECISIONS, RSS_VARIANTS, SMOKE, VARIANTS
from benchmarks.overhead.report import by_count_markdown, header, markdown
from benchmarks.overhead.run import run_backend

# Keras' get_weights (the naive variant) warns under numpy 2; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning"
)


@pytest.fixture(scope="module")
def result():
    # Peak RSS measured in this process: exercises the path a fresh process runs.
    return run_backend(SMOKE, rss="inprocess")


def test_every_variant_timed(result):
    epochs, reps = SMOKE.epochs, SMOKE.reps
    assert result["backend"] == keras.backend.backend()
    for v in VARIANTS:
        t = result["timings"][v]
        assert len(t["fit_s"]) == reps and all(s > 0 for s in t["fit_s"])
        assert len(t["fit_cpu_s"]) == reps and all(s > 0 for s in t["fit_cpu_s"])
        assert len(t["epoch_end_ms"]) == reps * (epochs - 1)
        row = result["summary"]["rows"][v]
        assert row["epoch_end_ms"] >= 0 and math.isfinite(row["excess_callback_pct"])
        for clock in ("wall", "cpu"):
            assert row[clock]["ratio"] > 0 and row[clock]["ideal_ratio"] > 1
            assert all(math.isfinite(x) for x in row[clock].values())
    for clock in ("wall", "cpu"):
        assert result["summary"]["rows"]["plain"][clock]["ratio"] == 1
    assert all(s > 0 for s in result["timings"]["evaluate_s"])
    assert result["summary"]["cached_evaluate_ms"] > 0


def test_naive_takes_aswa_decisions(result):
    check = result["check"]
    assert check["aswa"] == check["naive"], check
    assert len(check["aswa"]) == SMOKE.epochs
    assert check["aswa"][0] == "init"
    assert check["ensemble_max_abs_diff"] < 1e-5
    assert check["running_score_max_abs_diff"] < 1e-5
    # The timed fits start from the same state: each run decides something.
    for v in ("aswa", "naive"):
        for decisions in result["timings"][v]["decisions"]:
            assert decisions[0] == "init" and len(decisions) == SMOKE.epochs


def test_bookkeeping_and_memory(result):
    b = result["bookkeeping"]
    assert (
        b["bookkeeping_ms"] > 0 and b["ms"]["memcpy"] > 0 and b["ratio_to_memcpy"] > 0
    )
    assert all(ms > 0 for ms in b["ms"].values())
    # The ensemble is one float32 copy; the kept running weights make two.
    assert b["ensemble_bytes"] == b["weight_bytes"]
    assert b["provisional_bytes"] == 2 * b["weight_bytes"]
    assert set(result["memory"]) == set(RSS_VARIANTS)
    for m in result["memory"].values():
        assert math.isfinite(m["peak_delta_mib"]) and m["rss_mib"] > 0


def test_markdown(result, tmp_path):
    text = header([result], "--smoke") + markdown([result])
    for v in VARIANTS:
        assert f"| {result['backend']} | {v} |" in text
    assert "decisions agree" in text and "| yes:" in text


def test_cli_writes_tables(tmp_path, monkeypatch):
    # The CLI on this process's backend runs in-process; the smallest run.
    out = tmp_path / "overhead.md"
    tiny = dataclasses.replace(SMOKE, reps=1, bookkeeping_reps=1)
    monkeypatch.setattr(cli, "SMOKE", tiny)
    cli.main(["--smoke", "--rss", "off", "--out", str(out)])
    assert f"| {keras.backend.backend()} | aswa |" in out.read_text()


def test_decisions_by_count_measures_both_stacks():
    result = decisions_by_count(reps=1)
    stacks = result["stacks"]
    assert stacks["few"]["variables"] == 6 and stacks["many"]["variables"] == 300
    # The same bytes within 1 %: the stacks differ in the number of variables.
    assert abs(stacks["many"]["bytes"] / stacks["few"]["bytes"] - 1) < 0.01
    for s in stacks.values():
        assert s["bytes"] == 4 * s["params"]
        assert set(s["ms"]) == {*DECISIONS, "copy"}
        assert all(len(ms) == 1 and ms[0] > 0 for ms in s["ms"].values())


def test_by_count_markdown_ratios():
    def stack(variables, ms):
        return {"variables": variables, "params": 10, "bytes": 40, "ms": ms}

    run = {
        "stacks": {
            "few": stack(
                6, {"restart": [1, 3, 2], "soft": [4], "reject": [2], "copy": [2]}
            ),
            "many": stack(
                300, {"restart": [3], "soft": [6], "reject": [9], "copy": [2]}
            ),
        },
        "versions": {"keras": "x"},
        "load_avg": 1.0,
    }
    report = {
        "runs": {"jax": {"this": run}},
        "commit": "abc",
        "date": "today",
        "machine": {"nproc": 2, "cpu": "cpu", "python": "3"},
    }
    text = by_count_markdown(report, "--by-count")
    # few: restart median 2, worst max(2, 4, 2) = 4, copy 2; many: worst 9.
    assert "| jax | this | 6 | 2.00 | 4.00 | 2.00 | 4.00 | 2.00 | 2.0x |" in text
    assert "| jax | this | 300 | 3.00 | 6.00 | 9.00 | 9.00 | 2.00 | 4.5x |" in text
    assert "| jax | this | 1.5x | 1.5x | 4.5x | 2.2x |" in text
