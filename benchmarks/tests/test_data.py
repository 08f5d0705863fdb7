"""Quick checks of the quality benchmark's data and ranking layer."""

from __future__ import annotations

import gzip
import itertools

import numpy as np
import pytest

from benchmarks import datasets
from benchmarks.datasets import (
    FASHION_MNIST_FILES,
    index_triples,
    load_fashion_mnist,
    load_kg,
    read_idx,
    read_triples,
    split_validation,
)

# --------------------------------------------------------------------------
# knowledge graphs
# --------------------------------------------------------------------------

EXPECTED = {
    # name: (entities, relations, train, valid, test), as pykeen documents
    "umls": (135, 46, 5216, 652, 661),
    "nations": (14, 55, 1592, 199, 201),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kg_counts_match_files_and_docs(name):
    kg = load_kg(name)
    raw = {
        s: read_triples(datasets.DATA_DIR / name / f"{s}.txt.gz")
        for s in datasets.KG_SPLITS
    }
    all_raw = [t for s in raw.values() for t in s]
    entities = {e for h, _, t in all_raw for e in (h, t)}
    relations = {r for _, r, _ in all_raw}
    n_ent, n_rel, n_train, n_valid, n_test = EXPECTED[name]
    assert (len(entities), len(relations)) == (n_ent, n_rel)
    assert (kg.num_entities, kg.num_relations) == (n_ent, n_rel)
    assert [len(kg.split(s)) for s in datasets.KG_SPLITS] == [n_train, n_valid, n_test]
    for s in datasets.KG_SPLITS:
        arr = kg.split(s)
        assert arr.dtype == np.int32 and arr.shape == (len(raw[s]), 3)
        # Ids map back to the file's names, in file order.
        back = [(kg.entities[h], kg.relations[r], kg.entities[t]) for h, r, t in arr]
        assert back == raw[s]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kg_ids_are_sorted_and_deterministic(name):
    kg, again = load_kg(name), load_kg(name)
    assert list(kg.entities) == sorted(kg.entities)
    assert list(kg.relations) == sorted(kg.relations)
    assert kg.entity_to_id == {e: i for i, e in enumerate(kg.entities)}
    assert kg.relation_to_id == {r: i for i, r in enumerate(kg.relations)}
    for s in datasets.KG_SPLITS:
        np.testing.assert_array_equal(kg.split(s), again.split(s))


def test_load_kg_from_directory(tmp_path):
    for s, lines in {
        "train": "b\tr\ta\na\tq\tc\n",
        "valid": "c\tr\tb\n",
        "test": "a\tr\tb\n",
    }.items():
        (tmp_path / f"{s}.txt").write_text(lines)
    kg = load_kg("toy", data_dir=tmp_path)
    assert kg.entities == ("a", "b", "c") and kg.relations == ("q", "r")
    np.testing.assert_array_equal(kg.train, [[1, 1, 0], [0, 0, 2]])
    np.testing.assert_array_equal(kg.test, [[0, 1, 1]])


# --------------------------------------------------------------------------
# KvsAll targets and filtered ranking
# --------------------------------------------------------------------------

TOY = {
    "train": [
        ("a", "likes", "b"),
        ("a", "likes", "c"),
        ("b", "likes", "c"),
        ("c", "knows", "a"),
        ("d", "knows", "a"),
        ("e", "likes", "a"),
    ],
    "valid": [("b", "knows", "d"), ("a", "likes", "d")],
    "test": [("a", "likes", "e"), ("d", "knows", "b"), ("c", "likes", "b")],
}


def toy_kg():
    return index_triples("toy", TOY)


class TableModel:
    """Stub model: fixed scores per (head, relation) pair, via `predict`."""

    def __init__(self, table):
        self.table = table  # (num_entities, 2R, num_entities)

    def predict(self, x, batch_size=None, verbose=0):
        x = np.asarray(x)
        return self.table[x[:, 0], x[:, 1]]


def brute_force_ranks(kg, split, score, tie_policy):
    """Pure-python filtered ranks, both directions, from `score(h, r, e)`."""
    R = kg.num_relations
    known = set()
    for s in ("train", "valid", "test"):
        for h, r, t in kg.split(s).tolist():
            known.add((h, r, t))
            known.add((t, r + R, h))
    ranks = []
    for h, r, t in kg.split(split).tolist():
        for qh, qr, target in ((h, r, t), (t, r + R, h)):
            s_t = score(qh, qr, target)
            higher = ties = 0
            for e in range(kg.num_entities):
                if e == target or (qh, qr, e) in known:
                    continue
                s_e = score(qh, qr, e)
                higher += s_e > s_t
                ties += s_e == s_t
            extra = {"optimistic": 0, "pessimistic": ties, "realistic": ties / 2}
            ranks.append(1 + higher + extra[tie_policy])
    return ranks


def metrics_of(ranks):
    ranks = np.asarray(ranks, float)
    return {
        "mrr": np.mean(1 / ranks),
        "hits@1": np.mean(ranks <= 1),
        "hits@3": np.mean(ranks <= 3),
        "hits@10": np.mean(ranks <= 10),
    }


def test_kvsall_targets_are_train_plus_inverse():
    from benchmarks.kg import KvsAllDataset, kvsall_data

    kg = toy_kg()
    x, y = kvsall_data(kg)
    R = kg.num_relations
    expected = {}
    for h, r, t in kg.train.tolist():
        expected.setdefault((h, r), set()).add(t)
        expected.setdefault((t, r + R), set()).add(h)
    got = {
        (h, r): set(np.flatnonzero(row).tolist())
        for (h, r), row in zip(x.tolist(), y, strict=True)
    }
    assert got == expected
    ds = KvsAllDataset(kg, batch_size=3, seed=0)
    from_ds = {}
    for i in range(len(ds)):
        pairs, targets = ds[i]
        for (h, r), row in zip(pairs.tolist(), targets, strict=True):
            from_ds[(h, r)] = set(np.flatnonzero(row).tolist())
    assert from_ds == expected


@pytest.mark.parametrize("tie_policy", ["realistic", "optimistic", "pessimistic"])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_filtered_metrics_match_brute_force(split, tie_policy):
    from benchmarks.kg import link_prediction_metrics, make_score_fn

    kg = toy_kg()
    rng = np.random.default_rng(0)
    # Few distinct values, so ties happen and the tie policy matters.
    table = rng.integers(0, 3, (kg.num_entities, 2 * kg.num_relations, kg.num_entities))
    table = table.astype(np.float32)
    model = TableModel(table)
    expected = metrics_of(
        brute_force_ranks(kg, split, lambda h, r, e: table[h, r, e], tie_policy)
    )
    got = link_prediction_metrics(model, kg, split, batch_size=4, tie_policy=tie_policy)
    assert got == pytest.approx(expected)
    score_fn = make_score_fn(kg, split, batch_size=2, tie_policy=tie_policy)
    assert score_fn(model) == pytest.approx(expected["mrr"])


def test_filtered_metrics_with_keras_model():
    from benchmarks.kg import build_kge_model, link_prediction_metrics

    kg = toy_kg()
    for name in ("distmult", "complex"):
        model = build_kge_model(name, kg, embedding_dim=4, seed=1)
        pairs = np.array(
            list(
                itertools.product(range(kg.num_entities), range(2 * kg.num_relations))
            ),
            np.int32,
        )
        out = model.predict(pairs, verbose=0)
        assert out.shape == (len(pairs), kg.num_entities)
        table = out.reshape(kg.num_entities, 2 * kg.num_relations, kg.num_entities)
        expected = metrics_of(
            brute_force_ranks(
                kg, "test", lambda h, r, e, table=table: table[h, r, e], "realistic"
            )
        )
        got = link_prediction_metrics(model, kg, "test", batch_size=3)
        assert got == pytest.approx(expected, abs=1e-6)


def test_degenerate_scores_are_not_rewarded():
    from benchmarks.kg import link_prediction_metrics

    kg = toy_kg()
    shape = (kg.num_entities, 2 * kg.num_relations, kg.num_entities)
    constant = TableModel(np.zeros(shape, np.float32))
    optimistic = link_prediction_metrics(constant, kg, "test", tie_policy="optimistic")
    assert optimistic["mrr"] == 1.0
    assert link_prediction_metrics(constant, kg, "test")["mrr"] < 1.0
    nan = TableModel(np.full(shape, np.nan, np.float32))
    worst = metrics_of(
        brute_force_ranks(kg, "test", lambda h, r, e: 0.0, "pessimistic")
    )
    got = link_prediction_metrics(nan, kg, "test")
    assert got["mrr"] == pytest.approx(worst["mrr"])


# --------------------------------------------------------------------------
# idx files, Fashion-MNIST lookup, digits, validation split
# --------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    header = bytes([0, 0, type_code, array.ndim])
    header += np.array(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_read_idx_gzip_and_plain(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "img.gz").write_bytes(gzip.compress(idx_bytes(images, 0x08)))
    (tmp_path / "img").write_bytes(idx_bytes(images, 0x08))
    for name in ("img.gz", "img"):
        got = read_idx(tmp_path / name)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, images)
    floats = np.array([[1.5, -2.0]], np.float32)
    (tmp_path / "f").write_bytes(idx_bytes(floats, 0x0D))
    np.testing.assert_array_equal(read_idx(tmp_path / "f"), floats)
    (tmp_path / "short").write_bytes(idx_bytes(images, 0x08)[:-1])
    with pytest.raises(ValueError, match="bytes"):
        read_idx(tmp_path / "short")


def test_load_fashion_mnist_from_directory(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (5, 28, 28)).astype(np.uint8),
        "y_train": rng.integers(0, 10, 5).astype(np.uint8),
        "x_test": rng.integers(0, 256, (3, 28, 28)).astype(np.uint8),
        "y_test": rng.integers(0, 10, 3).astype(np.uint8),
    }
    for key, name in FASHION_MNIST_FILES.items():
        (tmp_path / name).write_bytes(gzip.compress(idx_bytes(arrays[key], 0x08)))
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(tmp_path)
    np.testing.assert_array_equal(x_train, arrays["x_train"])
    np.testing.assert_array_equal(y_train, arrays["y_train"])
    np.testing.assert_array_equal(x_test, arrays["x_test"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])
    assert x_train.dtype == np.uint8 and np.issubdtype(y_train.dtype, np.integer)


def test_load_fashion_mnist_missing_says_how_to_install(tmp_path):
    hint = "apt-get install dataset-fashion-mnist"
    with pytest.raises(FileNotFoundError, match=hint):
        load_fashion_mnist(tmp_path)


def test_load_digits():
    x, y = datasets.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.shape == (1797,) and set(np.unique(y)) == set(range(10))
    images, _ = datasets.load_digits(images=True, scale=False)
    assert images.shape == (1797, 8, 8) and images.max() == 16


@pytest.mark.parametrize("stratify", [False, True])
def test_split_validation(stratify):
    x = np.arange(200).reshape(100, 2)
    y = np.repeat(np.arange(4), 25)
    (xt, yt), (xv, yv) = split_validation(x, y, 0.1, seed=3, stratify=stratify)
    assert len(xv) == 10 and len(xt) == 90
    assert set(xt[:, 0]).isdisjoint(xv[:, 0])
    assert set(xt[:, 0]) | set(xv[:, 0]) == set(x[:, 0])
    np.testing.assert_array_equal(y[xv[:, 0] // 2], yv)
    if stratify:
        assert set(np.bincount(yv, minlength=4).tolist()) <= {2, 3}
    (xt2, _), (xv2, _) = split_validation(x, y, 0.1, seed=3, stratify=stratify)
    np.testing.assert_array_equal(xv, xv2)
    with pytest.raises(ValueError):
        split_validation(x, y, 1.0)
