"""Pictures of an averaging run: scores, decisions and ensemble size per epoch.

Needs matplotlib, which keras-aswa does not install by default:
`pip install "keras-aswa[plot]"`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DECISION_STYLES", "plot_history"]

DECISION_STYLES: dict[str, dict[str, Any]] = {
    "init": {"marker": "D", "color": "tab:purple", "markersize": 7},
    "hard": {"marker": "^", "color": "tab:red", "markersize": 9},
    "soft": {"marker": "o", "color": "tab:green", "markersize": 7},
    "reject": {"marker": "x", "color": "tab:gray", "markersize": 7},
    "skip": {"marker": "|", "color": "tab:brown", "markersize": 10},
}
"""Marker and colour of each ASWA decision in `plot_history`."""

_RUNNING_COLOR = "tab:blue"
_ENSEMBLE_COLOR = "black"
_PROVISIONAL_COLOR = "0.6"
_SIZE_COLOR = "tab:orange"


def plot_history(
    callback: Any,
    ax: Axes | Sequence[Axes] | None = None,
    *,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Plot what an `ASWA` or `SWA` callback did, epoch by epoch.

    For `ASWA`, the upper panel shows the validation score of the running
    model and of the ensemble (a step line: the ensemble's score holds until
    the next decision changes it), the provisional ensembles' scores as grey
    dots, and one marker per decision:

    | decision | marker | placed at |
    |---|---|---|
    | `init` | purple diamond | the running score (the first ensemble) |
    | `hard` | red triangle | the running score (the new ensemble) |
    | `soft` | green circle | the provisional score (the new ensemble) |
    | `reject` | grey cross | the provisional score that was turned down |
    | `skip` | brown tick | the bottom edge (the epoch had no usable score) |

    The lower panel is the ensemble size as a step plot: it grows by one on a
    soft update and falls back to 1 on a hard one. For `SWA` there is only the
    size panel. The x axis is the epoch as `callback.history` records it:
    0-based, as Keras passes it to callbacks (Keras' progress bar prints it
    plus one); for a step-level callback (`update_freq=N`) it is the
    optimizer step of each check.

    Every line carries a `gid` so that it can be found again:
    `"running"`, `"ensemble"`, `"provisional"`, `"decision:<name>"` and
    `"ensemble_size"`.

    Args:
        callback: A trained `keras_aswa.ASWA` or `keras_aswa.SWA`, or any
            object with a `history` list of records in their format.
        ax: Where to draw. None: a new figure, with two panels for ASWA
            (scores above, size below, sharing the x axis) and one for SWA.
            One `Axes`: ASWA's scores go on it and the size on a twin axis
            at its right. Two `Axes`: scores on the first, size on the
            second.
        title: The title above the plot. Default: the method, the monitored
            quantity and the final ensemble size.
        figsize: Figure size in inches, when a new figure is made.

    Returns:
        The matplotlib `Figure` drawn on.

    Raises:
        ImportError: If matplotlib is not installed.
        RuntimeError: If the callback has not recorded any epoch yet (it has
            not been trained, or no epoch reached `start_from_epoch`).
        TypeError: If `callback` has no `history` of averaging records.

    Example:

    ```python
    from keras_aswa import ASWA, plot_history

    aswa = ASWA()
    model.fit(x, y, validation_split=0.1, epochs=30, callbacks=[aswa])
    fig = plot_history(aswa)
    fig.savefig("aswa.png")
    ```
    """
    records = _records(callback)
    plt = _pyplot()
    if "decision" in records[0]:
        return _plot_aswa(plt, callback, records, ax, title, figsize)
    return _plot_swa(plt, callback, records, ax, title, figsize)


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "plot_history needs matplotlib, which keras-aswa does not install "
            "by default. Install it with: pip install matplotlib (or with the "
            '"plot" extra: pip install ".[plot]" in a checkout, or '
            'pip install "keras-aswa[plot]" once keras-aswa is on PyPI).'
        ) from error
    return plt


def _records(callback: Any) -> list[dict]:
    name = type(callback).__name__
    history = getattr(callback, "history", None)
    if not isinstance(history, list):
        raise TypeError(
            "plot_history takes a keras_aswa.ASWA or keras_aswa.SWA callback "
            f"(an object with a `history` list); got {name} with "
            f"history={history!r}."
        )
    if not history:
        raise RuntimeError(
            f"This {name} callback has recorded no epoch yet, so there is "
            "nothing to plot. Train with it first, e.g. "
            "model.fit(..., callbacks=[callback]), and check that training "
            "ran past its start_from_epoch."
        )
    for record in history:
        if not isinstance(record, dict) or not {"epoch", "ensemble_size"} <= set(
            record
        ):
            raise TypeError(
                "plot_history expects history records with at least the keys "
                f"'epoch' and 'ensemble_size'; {name}.history holds {record!r}."
            )
    return history


def _value(x: Any) -> float:
    """A plottable float: None and non-finite scores become NaN (a gap)."""
    if x is None:
        return math.nan
    x = float(x)
    return x if math.isfinite(x) else math.nan


def _axes(plt, ax, two_panels: bool, figsize):
    """(score_axes, size_axes, figure) for the layout `ax` asks for."""
    if ax is None:
        if two_panels:
            fig, (top, bottom) = plt.subplots(
                2,
                1,
                sharex=True,
                figsize=figsize or (7.5, 5.0),
                gridspec_kw={"height_ratios": [3, 1]},
                layout="constrained",
            )
            return top, bottom, fig
        fig, only = plt.subplots(figsize=figsize or (7.5, 3.0), layout="constrained")
        return None, only, fig
    if isinstance(ax, Sequence):
        if len(ax) != 2:
            raise ValueError(
                f"ax must be one Axes or a pair (scores, size); got {len(ax)} axes."
            )
        top, bottom = ax
        return top, bottom, top.figure
    if two_panels:
        return ax, ax.twinx(), ax.figure
    return None, ax, ax.figure


def _x_axis(records) -> tuple[list, str]:
    # Step-level callbacks (update_freq=N) record the optimizer step.
    if all("step" in r for r in records):
        return [r["step"] for r in records], "training step"
    return [r["epoch"] for r in records], "epoch"


def _plot_aswa(plt, callback, records, ax, title, figsize):
    top, bottom, fig = _axes(plt, ax, True, figsize)
    twin = ax is not None and not isinstance(ax, Sequence)
    epochs, xlabel = _x_axis(records)
    running = [_value(r.get("running")) for r in records]
    provisional = [_value(r.get("provisional")) for r in records]
    ensemble = [_value(r.get("ensemble_score")) for r in records]
    sizes = [r["ensemble_size"] for r in records]
    monitor = getattr(callback, "monitor", None) or "score"

    top.plot(
        epochs,
        running,
        color=_RUNNING_COLOR,
        linewidth=1.2,
        alpha=0.8,
        label="running model",
        gid="running",
    )
    top.plot(
        epochs,
        ensemble,
        drawstyle="steps-post",
        color=_ENSEMBLE_COLOR,
        linewidth=1.8,
        label="ensemble",
        gid="ensemble",
    )
    if any(not math.isnan(p) for p in provisional):
        top.plot(
            epochs,
            provisional,
            linestyle="none",
            marker=".",
            color=_PROVISIONAL_COLOR,
            label="provisional ensemble",
            gid="provisional",
        )
    # Smaller markers on long runs, so that they do not cover the lines.
    shrink = 1.0 if len(records) <= 40 else max(0.5, math.sqrt(40 / len(records)))
    for decision, style in DECISION_STYLES.items():
        at = [i for i, r in enumerate(records) if r["decision"] == decision]
        if not at:
            continue
        style = {**style, "markersize": style["markersize"] * shrink}
        xs = [epochs[i] for i in at]
        kwargs: dict[str, Any] = {}
        if decision == "skip":
            # No usable score: mark the epoch on the bottom edge.
            ys = [0.0] * len(at)
            kwargs["transform"] = top.get_xaxis_transform()
            kwargs["clip_on"] = False
        elif decision in ("soft", "reject"):
            ys = [provisional[i] for i in at]
        else:  # init, hard: the running model becomes the ensemble
            ys = [running[i] for i in at]
        top.plot(
            xs,
            ys,
            linestyle="none",
            markerfacecolor="none" if decision == "soft" else style["color"],
            markeredgewidth=1.6,
            label=f"{decision} ({len(at)})",
            gid=f"decision:{decision}",
            **style,
            **kwargs,
        )
    top.set_ylabel(monitor)
    top.grid(True, alpha=0.3)
    handles, labels = top.get_legend_handles_labels()

    size_line = bottom.plot(
        epochs,
        sizes,
        drawstyle="steps-post",
        color=_SIZE_COLOR,
        linewidth=1.5,
        label="ensemble size",
        gid="ensemble_size",
    )
    bottom.set_ylabel("ensemble size")
    bottom.set_ylim(0, max(sizes) + 1)
    _integer_ticks(bottom)
    if twin:
        # Size shares the panel: one legend for both axes.
        handles += size_line
        labels.append("ensemble size")
        top.set_xlabel(xlabel)
    else:
        bottom.set_xlabel(xlabel)
        bottom.grid(True, alpha=0.3)
    top.legend(handles, labels, fontsize="small", ncols=2, loc="best")
    if title is None:
        title = f"ASWA on {monitor}: final ensemble of {sizes[-1]}"
    top.set_title(title)
    _integer_ticks(bottom, axis="x")
    return fig


def _plot_swa(plt, callback, records, ax, title, figsize):
    _, axes, fig = _axes(plt, ax, False, figsize)
    epochs, xlabel = _x_axis(records)
    sizes = [r["ensemble_size"] for r in records]
    axes.plot(
        epochs,
        sizes,
        drawstyle="steps-post",
        marker="o",
        markersize=4,
        color=_SIZE_COLOR,
        label="average size",
        gid="ensemble_size",
    )
    axes.set_xlabel(xlabel)
    axes.set_ylabel("snapshots averaged")
    axes.set_ylim(0, max(sizes) + 1)
    axes.grid(True, alpha=0.3)
    _integer_ticks(axes)
    _integer_ticks(axes, axis="x")
    if title is None:
        title = (
            f"{type(callback).__name__}: average of {sizes[-1]} snapshots "
            f"(epochs {epochs[0]}-{epochs[-1]})"
        )
    axes.set_title(title)
    return fig


def _integer_ticks(axes, axis: str = "y") -> None:
    from matplotlib.ticker import MaxNLocator

    target = axes.yaxis if axis == "y" else axes.xaxis
    target.set_major_locator(MaxNLocator(integer=True))
