"""The decision rule against the contract (shared/ASWA.md), as pure functions."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keras_aswa.decision import decide, is_better, resolve_mode

scores = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
modes = st.sampled_from(["min", "max"])
deltas = st.floats(min_value=0, max_value=10, allow_nan=False)


def badness(x, mode):
    """The contract's order as one number: lower is better, non-finite worst."""
    if x is None or not math.isfinite(x):
        return math.inf
    return x if mode == "min" else -x


def reference_decide(r, p, s, mode, delta):
    """The contract's step 3 written out independently of the module."""

    def better(a, b):
        ka, kb = badness(a, mode), badness(b, mode)
        if ka == math.inf:
            return False
        return kb == math.inf or ka + delta < kb

    if better(r, p) and better(r, s):
        return "hard"
    if better(p, s):
        return "soft"
    return "reject"


@given(scores, scores, scores, modes, deltas)
def test_decide_matches_contract(r, p, s, mode, delta):
    assert decide(r, p, s, mode, delta) == reference_decide(r, p, s, mode, delta)


@given(scores, modes, deltas)
def test_ties_are_not_improvements(x, mode, delta):
    assert not is_better(x, x, mode, delta)
    assert decide(x, x, x, mode, delta) == "reject"


@given(scores, modes, deltas)
def test_non_finite_never_wins(x, mode, delta):
    for bad in (math.nan, math.inf, -math.inf):
        assert not is_better(bad, x, mode, delta)
        if math.isfinite(x):
            assert is_better(x, bad, mode, delta)


@given(scores, scores, scores, deltas)
def test_max_mode_mirrors_min_mode(r, p, s, delta):
    assert decide(r, p, s, "min", delta) == decide(-r, -p, -s, "max", delta)


@given(st.integers(-800, 800), st.integers(0, 40), modes)
def test_min_delta_is_a_strict_margin(b8, delta8, mode):
    # Multiples of 1/8 keep the sums exact, so the boundary is tested exactly.
    b, delta = b8 / 8, delta8 / 8
    sign = 1 if mode == "max" else -1
    assert not is_better(b + sign * delta, b, mode, delta)
    assert is_better(b + sign * (delta + 0.125), b, mode, delta)


@pytest.mark.parametrize("r", [math.nan, math.inf, -math.inf, None])
def test_non_finite_running_score_never_initialises(r):
    assert decide(r, None, None, "min", initialised=False) == "skip"


def test_first_finite_score_initialises():
    assert decide(0.3, None, None, "max", initialised=False) == "init"


def test_missing_score_is_skipped_once_initialised():
    assert decide(None, 0.1, 0.2, "min") == "skip"


def test_negative_min_delta_counts_as_its_magnitude():
    assert not is_better(0.95, 1.0, "min", -0.1)
    assert is_better(0.85, 1.0, "min", -0.1)


def test_resolve_mode():
    assert resolve_mode("val_loss", "auto") == "min"
    assert resolve_mode("val_custom_loss", "auto") == "min"
    assert resolve_mode("val_mrr", "max") == "max"
    with pytest.raises(ValueError, match="mode='max'"):
        resolve_mode("val_mrr", "auto")
    with pytest.raises(ValueError, match="not one of"):
        resolve_mode("val_loss", "minimum")
