"""`benchmarks.identity`: the digest and the comparison of two smoke runs."""

from __future__ import annotations

import copy

import numpy as np

from benchmarks import identity


def _digest():
    run = {
        "config": "digits/mlp",
        "seed": 1,
        "decisions": ["init", "soft", "reject"],
        "weights": {"aswa": "a1", "swa": "s1"},
    }
    return {"engine": "x", "runs": [run]}


def test_weights_digest_sees_values_shapes_and_dtypes():
    a = [np.zeros((2, 3), "float32"), np.ones(4, "float32")]
    digest = identity.weights_digest(a)
    assert identity.weights_digest([x.copy() for x in a]) == digest
    b = [a[0].copy(), a[1].copy()]
    b[1][2] = np.nextafter(np.float32(1), np.float32(2))  # one ulp
    assert identity.weights_digest(b) != digest
    assert identity.weights_digest([a[0].reshape(3, 2), a[1]]) != digest
    assert identity.weights_digest([a[0].astype("float64"), a[1]]) != digest


def test_compare_identical_and_methods_only_one_side_has():
    after = _digest()
    after["runs"][0]["weights"]["aswa_n5"] = "n5"  # a newer benchmark's method
    same, lines = identity.compare(_digest(), after)
    assert same, lines
    assert "not compared: aswa_n5" in lines[0]
    assert lines[-1] == ("IDENTICAL: 1 runs, 3 decisions, 2 final weight sets compared")


def test_compare_finds_a_changed_decision_or_weight():
    for change in ("decisions", "weights"):
        after = copy.deepcopy(_digest())
        if change == "decisions":
            after["runs"][0]["decisions"][1] = "hard"
        else:
            after["runs"][0]["weights"]["swa"] = "s2"
        same, lines = identity.compare(_digest(), after)
        assert not same, change
        assert lines[-1].startswith("DIFFERENT")


def _run(config, seed, weight="a1"):
    return {
        "config": config,
        "seed": seed,
        "decisions": ["init"],
        "weights": {"aswa": weight},
    }


def test_compare_pairs_runs_by_configuration_and_seed_not_position():
    # The baseline's smoke ran fewer configurations, in another order.
    before = {"runs": [_run("b/cnn", 1), _run("a/mlp", 1), _run("old/mlp", 1)]}
    after = {
        "runs": [_run("new/cnn", 1), _run("a/mlp", 1), _run("b/cnn", 1)],
    }
    same, lines = identity.compare(before, after)
    assert same, lines
    assert lines[:2] == [
        "a/mlp seed 1: decisions same, weights of aswa identical",
        "b/cnn seed 1: decisions same, weights of aswa identical",
    ]
    assert "not compared, only in baseline: old/mlp seed 1" in lines
    assert "not compared, only in this checkout: new/cnn seed 1" in lines
    assert lines[-1] == ("IDENTICAL: 2 runs, 2 decisions, 2 final weight sets compared")
    after["runs"][2]["weights"]["aswa"] = "other"
    same, lines = identity.compare(before, after)
    assert (
        not same
        and "b/cnn seed 1: decisions same, weights of aswa DIFFER" in (lines[1])
    )


def test_compare_is_not_identical_when_nothing_was_compared():
    same, lines = identity.compare(
        {"runs": [_run("a/mlp", 1)]}, {"runs": [_run("a/mlp", 2)]}
    )
    assert not same
    assert lines[-1] == (
        "DIFFERENT: 0 runs, 0 decisions, 0 final weight sets compared "
        "(no run in common)"
    )
    assert not identity.compare({"runs": []}, {"runs": []})[0]


def test_compare_pairs_repeated_runs_of_a_configuration_in_order():
    before = {"runs": [_run("a/mlp", 1, "x"), _run("a/mlp", 1, "y")]}
    after = {"runs": [_run("a/mlp", 1, "x"), _run("a/mlp", 1, "y")]}
    same, lines = identity.compare(before, after)
    assert same, lines
    assert lines[1].startswith("a/mlp seed 1 (run 2):")
