"""plot_history: the drawn data are the callback's history, decision by decision."""

import math
import subprocess
import sys

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scenarios import aswa_run  # noqa: E402

from keras_aswa import ASWA, SWA, plot_history  # noqa: E402
from keras_aswa.plotting import DECISION_STYLES  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def trained_aswa():
    aswa = ASWA()
    aswa_run([aswa])
    return aswa


def lines_by_gid(fig):
    found = {}
    for axes in fig.axes:
        for line in axes.get_lines():
            if line.get_gid():
                assert line.get_gid() not in found, line.get_gid()
                found[line.get_gid()] = line
    return found


def as_float(values):
    # What plot_history draws: None and non-finite scores as gaps (NaN).
    values = np.array([math.nan if v is None else float(v) for v in values])
    return np.where(np.isfinite(values), values, math.nan)


def assert_line(line, xs, ys):
    np.testing.assert_array_equal(np.asarray(line.get_xdata(), float), xs)
    np.testing.assert_array_equal(np.asarray(line.get_ydata(), float), as_float(ys))


def check_aswa_figure(fig, history):
    lines = lines_by_gid(fig)
    epochs = [h["epoch"] for h in history]
    assert_line(lines["running"], epochs, [h["running"] for h in history])
    assert_line(lines["ensemble"], epochs, [h["ensemble_score"] for h in history])
    assert lines["ensemble"].get_drawstyle() == "steps-post"
    assert_line(lines["ensemble_size"], epochs, [h["ensemble_size"] for h in history])
    assert lines["ensemble_size"].get_drawstyle() == "steps-post"
    decisions = {h["decision"] for h in history}
    for decision in DECISION_STYLES:
        gid = f"decision:{decision}"
        if decision not in decisions:
            assert gid not in lines
            continue
        at = [h for h in history if h["decision"] == decision]
        line = lines[gid]
        assert line.get_marker() == DECISION_STYLES[decision]["marker"]
        assert line.get_linestyle() == "None"
        if decision == "skip":
            want = [0.0] * len(at)  # the bottom edge, in axes coordinates
        elif decision in ("soft", "reject"):
            want = [h["provisional"] for h in at]
        else:
            want = [h["running"] for h in at]
        assert_line(line, [h["epoch"] for h in at], want)
    # Every decision present has its own entry in the legend, with its count.
    legend = fig.axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    for decision in decisions:
        count = sum(h["decision"] == decision for h in history)
        assert f"{decision} ({count})" in labels
    return lines


def test_aswa_real_run(trained_aswa):
    history = trained_aswa.history
    # The scenario is built so that the run takes every kind of decision.
    assert {"init", "hard", "soft", "reject"} <= {h["decision"] for h in history}
    fig = plot_history(trained_aswa)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    lines = check_aswa_figure(fig, history)
    scores, sizes = fig.axes
    assert lines["running"].axes is scores and lines["ensemble_size"].axes is sizes
    assert scores.get_ylabel() == "val_loss"
    assert sizes.get_ylabel() == "ensemble size"
    assert str(trained_aswa.ensemble_size) in scores.get_title()
    # The ensemble's score is the one logged; its line ends on best_score.
    assert lines["ensemble"].get_ydata()[-1] == trained_aswa.best_score


def test_aswa_provisional_scores(trained_aswa):
    fig = plot_history(trained_aswa)
    line = lines_by_gid(fig)["provisional"]
    history = trained_aswa.history
    assert history[0]["provisional"] is None  # init builds none
    assert_line(
        line, [h["epoch"] for h in history], [h["provisional"] for h in history]
    )


def test_one_axes_puts_size_on_a_twin(trained_aswa):
    fig, ax = plt.subplots()
    assert plot_history(trained_aswa, ax=ax, title="mine") is fig
    lines = check_aswa_figure(fig, trained_aswa.history)
    assert lines["running"].axes is ax
    twin = lines["ensemble_size"].axes
    assert twin is not ax and twin.get_shared_x_axes().joined(ax, twin)
    assert ax.get_title() == "mine"
    assert "ensemble size" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_two_axes(trained_aswa):
    fig, (a, b) = plt.subplots(1, 2)
    assert plot_history(trained_aswa, ax=(a, b)) is fig
    lines = check_aswa_figure(fig, trained_aswa.history)
    assert lines["running"].axes is a and lines["ensemble_size"].axes is b
    with pytest.raises(ValueError, match="pair"):
        plot_history(trained_aswa, ax=[a])


class Recorded:
    """A callback stand-in with a hand-written history."""

    monitor = "val_mrr"

    def __init__(self, history):
        self.history = history


def record(epoch, running, provisional, decision, size, score):
    return {
        "epoch": epoch,
        "running": running,
        "provisional": provisional,
        "decision": decision,
        "ensemble_size": size,
        "ensemble_score": score,
    }


def test_every_decision_including_skips():
    history = [
        record(2, None, None, "skip", 0, None),
        record(3, math.nan, None, "skip", 0, None),
        record(4, 0.5, None, "init", 1, 0.5),
        record(5, 0.55, 0.52, "soft", 2, 0.52),
        record(6, 0.4, 0.5, "reject", 2, 0.52),
        record(7, None, None, "skip", 2, 0.52),
        record(8, 0.6, 0.58, "hard", 1, 0.6),
        record(9, math.inf, 0.59, "reject", 1, 0.6),
    ]
    fig = plot_history(Recorded(history))
    lines = check_aswa_figure(fig, history)
    scores = fig.axes[0]
    assert scores.get_ylabel() == "val_mrr"
    # Skips sit on the bottom edge whatever the scores' scale.
    assert lines["decision:skip"].get_transform() == scores.get_xaxis_transform()
    # Non-finite scores leave gaps rather than stretching the axis.
    assert np.isnan(lines["running"].get_ydata()[[0, 1, 5, 7]]).all()
    lo, hi = scores.get_ylim()
    assert lo > 0.3 and hi < 0.7


def test_swa_real_run():
    swa = SWA(start_from_epoch=3, frequency=2)
    aswa_run([swa], epochs=9)
    fig = plot_history(swa)
    assert len(fig.axes) == 1
    lines = lines_by_gid(fig)
    assert set(lines) == {"ensemble_size"}
    assert_line(lines["ensemble_size"], [3, 5, 7], [1, 2, 3])
    assert "3 snapshots" in fig.axes[0].get_title()


def test_swa_on_given_axes():
    fig, ax = plt.subplots()
    swa = Recorded([{"epoch": e, "ensemble_size": e + 1} for e in range(4)])
    assert plot_history(swa, ax=ax) is fig
    assert_line(lines_by_gid(fig)["ensemble_size"], range(4), [1, 2, 3, 4])


@pytest.mark.parametrize("callback", [ASWA(), SWA()], ids=["ASWA", "SWA"])
def test_untrained_callback(callback):
    with pytest.raises(RuntimeError, match="no epoch yet.*model.fit"):
        plot_history(callback)


@pytest.mark.parametrize(
    "thing", [object(), Recorded(None), Recorded([{"epoch": 0}])], ids=str
)
def test_not_a_callback(thing):
    with pytest.raises(TypeError, match="plot_history"):
        plot_history(thing)


def test_missing_matplotlib(monkeypatch, trained_aswa):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install \"keras-aswa\[plot\]\""):
        plot_history(trained_aswa)


def test_package_imports_without_matplotlib():
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        "import keras_aswa; assert callable(keras_aswa.plot_history)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_step_level_history_is_plotted_by_step():
    aswa = ASWA(update_freq=5, validation_data=(np.zeros((2, 1)), np.zeros((2, 1))))
    aswa.monitor = "val_loss"
    aswa.history = [
        {
            "epoch": 0,
            "step": 5,
            "running": 1.0,
            "provisional": None,
            "decision": "init",
            "ensemble_size": 1,
            "ensemble_score": 1.0,
        },
        {
            "epoch": 0,
            "step": 10,
            "running": 0.9,
            "provisional": 0.8,
            "decision": "soft",
            "ensemble_size": 2,
            "ensemble_score": 0.8,
        },
    ]
    fig = plot_history(aswa)
    bottom = fig.axes[1]
    assert bottom.get_xlabel() == "training step"
    line = [ln for ln in bottom.get_lines() if ln.get_gid() == "ensemble_size"][0]
    assert list(line.get_xdata()) == [5, 10]
