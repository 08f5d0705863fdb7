"""The ASWA decision rule, as pure functions of scores.

Nothing here touches a model: the callbacks feed scores in and act on the
decision that comes out, so the rule can be tested on its own.
"""

from __future__ import annotations

import math
from typing import Literal

from keras_aswa import internals

Decision = Literal["init", "hard", "soft", "reject", "skip"]
Mode = Literal["min", "max"]


def resolve_mode(monitor: str, mode: str, model=None) -> Mode:
    """Resolves `mode="auto"` to `"min"` or `"max"` the way Keras does.

    A monitor whose name ends in `loss` is minimised; otherwise the direction
    of a compiled metric of that name is used (Keras metrics such as accuracy
    carry it); otherwise the direction is unknown and an error asks for it.

    Args:
        monitor: Name of the monitored quantity, e.g. `"val_loss"`.
        mode: One of `"auto"`, `"min"`, `"max"`.
        model: Optional compiled Keras model whose metrics are searched for
            the direction of `monitor` under `"auto"`.

    Returns:
        `"min"` or `"max"`.

    Raises:
        ValueError: If `mode` is unknown, or `"auto"` cannot tell.
    """
    if mode not in ("auto", "min", "max"):
        raise ValueError(
            f"mode={mode!r} is not one of 'auto', 'min', 'max'. Pass mode='min' "
            "for losses and errors, mode='max' for accuracies and MRR."
        )
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    if name.endswith("loss"):
        return "min"
    for metric in _compiled_metrics(model):
        direction = internals.metric_direction(metric)
        if metric.name == name and direction is not None:
            return "max" if direction == "up" else "min"
    raise ValueError(
        f"mode='auto' cannot tell whether monitor={monitor!r} should be "
        "minimised or maximised. Pass mode='max' (e.g. for an accuracy or MRR) "
        "or mode='min' (e.g. for an error)."
    )


def _compiled_metrics(model):
    # Keras groups compiled metrics in containers; look inside them.
    for metric in getattr(model, "metrics", None) or []:
        yield metric
        yield from getattr(metric, "metrics", None) or []


def is_better(a, b, mode: Mode, min_delta: float = 0.0) -> bool:
    """Whether score `a` is better than score `b`, Keras-style.

    `a` must beat `b` strictly by more than `min_delta` (ties are not
    improvements, as in `keras.callbacks.EarlyStopping`). NaN and infinite
    scores are the worst possible value: a non-finite `a` never wins, and any
    finite `a` beats a non-finite `b`. `None` counts as non-finite.

    Args:
        a: Candidate score.
        b: Reference score.
        mode: `"min"` or `"max"`.
        min_delta: Margin `a` must beat `b` by; its sign is ignored.

    Returns:
        True when `a` is an improvement over `b`.
    """
    if not _finite(a):
        return False
    if not _finite(b):
        return True
    delta = abs(min_delta)
    if mode == "min":
        return a + delta < b
    return a - delta > b


def decide(
    running,
    provisional,
    best,
    mode: Mode,
    min_delta: float = 0.0,
    initialised: bool = True,
) -> Decision:
    """The ASWA decision for one epoch.

    Args:
        running: `r`, the running model's score this epoch (None if the epoch
            has no score).
        provisional: `p`, the score of the provisional ensemble
            `E + (θ - E) / (n + 1)`; ignored before initialisation.
        best: `s`, the ensemble's current score.
        mode: `"min"` or `"max"`.
        min_delta: Improvement margin, as in `EarlyStopping`.
        initialised: Whether the ensemble exists yet.

    Returns:
        `"skip"` when there is no finite score to start from, `"init"` on the
        first scored epoch, else `"hard"` (restart the ensemble from the
        running model), `"soft"` (accept the provisional ensemble) or
        `"reject"` (keep the ensemble as it is).

    Example:

    >>> decide(0.5, 0.6, 0.7, "min")
    'hard'
    >>> decide(0.8, 0.6, 0.7, "min")
    'soft'
    """
    if running is None:
        return "skip"
    if not initialised:
        return "init" if _finite(running) else "skip"
    if is_better(running, provisional, mode, min_delta) and is_better(
        running, best, mode, min_delta
    ):
        return "hard"
    if is_better(provisional, best, mode, min_delta):
        return "soft"
    return "reject"


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)
