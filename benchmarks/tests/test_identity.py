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
    assert lines[-1] == "IDENTICAL: 3 decisions, 2 final weight sets compared"


def test_compare_finds_a_changed_decision_or_weight_or_run():
    for change in ("decisions", "weights", "runs"):
        after = copy.deepcopy(_digest())
        if change == "decisions":
            after["runs"][0]["decisions"][1] = "hard"
        elif change == "weights":
            after["runs"][0]["weights"]["swa"] = "s2"
        else:
            after["runs"].append(after["runs"][0])
        same, lines = identity.compare(_digest(), after)
        assert not same, change
        assert lines[-1].startswith("DIFFERENT")
