"""ASWA for link prediction: DistMult on UMLS, scored by filtered MRR.

Knowledge-graph embeddings are judged by ranking metrics that `model.evaluate`
cannot compute: the filtered mean reciprocal rank (MRR). `ASWA(score_fn=...)`
takes any `score_fn(model) -> float`; here it is the filtered MRR on the
validation triples, and `mode="max"` says that higher is better.

The model is DistMult (score of a triple: the sum of `h * r * t` over the
embedding dimensions) trained "KvsAll": for each (head, relation) pair of the
training graph, one logit per entity with binary cross-entropy against the
set of true tails. Each triple (h, r, t) also enters as (t, r⁻¹, h), so head
and tail prediction are both tail prediction. With a high learning rate the
validation MRR peaks early and then falls as the model overfits: ASWA keeps
the best-validated average.

The data: UMLS (135 entities, 46 relations; 5,216 / 652 / 661 triples),
vendored in this repository under `benchmarks/data/umls`. `--data-dir DIR`
reads another graph: `train`, `valid` and `test` files (`.txt` or `.txt.gz`)
of tab-separated `head relation tail` lines.

    python examples/link_prediction.py                   # 100 epochs, ~1 min on a CPU
    KERAS_BACKEND=jax python examples/link_prediction.py --plot aswa_umls.png
    python examples/link_prediction.py --smoke           # seconds

The repository's benchmarks (`benchmarks/kg.py`) hold a vectorised version of
the same ranking, with ComplEx and large-graph batching.
"""

from __future__ import annotations

import argparse
import gzip
import os
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_aswa import ASWA, plot_history  # noqa: E402

UMLS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "umls"


# ---------------------------------------------------------------- the data


def read_split(data_dir: Path, split: str) -> list[tuple[str, str, str]]:
    for path in (data_dir / f"{split}.txt.gz", data_dir / f"{split}.txt"):
        if path.is_file():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as f:
                return [
                    tuple(line.rstrip("\n").split("\t")) for line in f if line.strip()
                ]
    raise SystemExit(f"{data_dir}: no {split}.txt or {split}.txt.gz")


def load_graph(data_dir: Path):
    """Triples as int arrays (n, 3) per split, and the entity/relation counts."""
    splits = {s: read_split(data_dir, s) for s in ("train", "valid", "test")}
    triples = [t for rows in splits.values() for t in rows]
    entities = {
        e: i
        for i, e in enumerate(sorted({t[0] for t in triples} | {t[2] for t in triples}))
    }
    relations = {r: i for i, r in enumerate(sorted({t[1] for t in triples}))}
    arrays = {
        s: np.array(
            [(entities[h], relations[r], entities[t]) for h, r, t in rows], np.int32
        )
        for s, rows in splits.items()
    }
    return arrays, len(entities), len(relations)


def with_inverses(triples: np.ndarray, num_relations: int) -> np.ndarray:
    """Adds (t, r + R, h) for every (h, r, t): relation r + R is r's inverse."""
    inverse = np.stack([triples[:, 2], triples[:, 1] + num_relations, triples[:, 0]], 1)
    return np.concatenate([triples, inverse])


def kvsall(train: np.ndarray, num_entities: int):
    """x: the unique (head, relation) pairs; y: multi-hot true tails per pair."""
    pairs, row = np.unique(train[:, :2], axis=0, return_inverse=True)
    y = np.zeros((len(pairs), num_entities), np.float32)
    y[row.ravel(), train[:, 2]] = 1.0
    return pairs.astype(np.int32), y


# ---------------------------------------------------------------- the model


class DistMult(keras.layers.Layer):
    """Logits of every entity as the tail of each (head, relation) pair."""

    def __init__(
        self, num_entities: int, num_relations: int, dim: int, seed=None, **kw
    ):
        super().__init__(**kw)
        init = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
        self.entities = self.add_weight(shape=(num_entities, dim), initializer=init)
        self.relations = self.add_weight(shape=(num_relations, dim), initializer=init)

    def call(self, pairs):
        h = ops.take(self.entities, pairs[:, 0], axis=0)
        r = ops.take(self.relations, pairs[:, 1], axis=0)
        return ops.matmul(h * r, ops.transpose(self.entities))


def make_model(
    num_entities: int, num_relations: int, dim: int, seed: int
) -> keras.Model:
    pairs = keras.Input((2,), dtype="int32")
    scores = DistMult(num_entities, 2 * num_relations, dim, seed=seed)(pairs)
    model = keras.Model(pairs, scores)
    model.compile(
        keras.optimizers.Adam(0.1), keras.losses.BinaryCrossentropy(from_logits=True)
    )
    return model


# ---------------------------------------------------------------- the score


def filtered_mrr_fn(queries: np.ndarray, known: np.ndarray, num_entities: int):
    """A `score_fn(model) -> float`: the filtered MRR on `queries`.

    Each query (h, r, t) asks the model to rank t among all entities as the
    tail of (h, r). "Filtered": the other true tails of (h, r), anywhere in
    the graph (`known`), are left out of the ranking, so that the model is not
    penalised for ranking a correct answer first. Ties count half.

    Args:
        queries: int (n, 3) triples to rank, inverse triples included.
        known: int (m, 3) every true triple, inverse triples included.
        num_entities: Number of entities.
    """
    tails = defaultdict(list)
    for h, r, t in known:
        tails[h, r].append(t)
    # Built once: the mask of the filtered candidates of each query.
    filtered = np.zeros((len(queries), num_entities), bool)
    for i, (h, r, t) in enumerate(queries):
        filtered[i, tails[h, r]] = True
        filtered[i, t] = False
    pairs, targets = queries[:, :2], queries[:, 2]
    rows = np.arange(len(queries))

    candidates = ~filtered

    def filtered_mrr(model) -> float:
        scores = ops.convert_to_numpy(model.predict_on_batch(pairs))
        scores = np.where(np.isnan(scores), -np.inf, scores)  # NaN ranks last
        target = scores[rows, targets][:, None]
        higher = ((scores > target) & candidates).sum(1)
        ties = ((scores == target) & candidates).sum(1) - 1  # the target itself
        ranks = 1 + higher + ties / 2
        return float(np.mean(1 / ranks))

    return filtered_mrr


# ---------------------------------------------------------------- the run


def main(
    epochs: int = 100,
    dim: int = 32,
    batch_size: int = 1024,
    data_dir: str | None = None,
    seed: int = 1,
    smoke: bool = False,
    plot: str | None = None,
) -> dict:
    keras.utils.set_random_seed(seed)
    data, num_entities, num_relations = load_graph(Path(data_dir or UMLS))
    if smoke:
        epochs = min(epochs, 3)
    known = with_inverses(np.concatenate(list(data.values())), num_relations)
    x, y = kvsall(with_inverses(data["train"], num_relations), num_entities)
    valid_mrr = filtered_mrr_fn(
        with_inverses(data["valid"], num_relations), known, num_entities
    )
    test_mrr = filtered_mrr_fn(
        with_inverses(data["test"], num_relations), known, num_entities
    )

    model = make_model(num_entities, num_relations, dim, seed)
    # The score is logged as "val_mrr"; restore_best=False keeps the last
    # running model, to compare against.
    aswa = ASWA(
        score_fn=valid_mrr, monitor="val_mrr", mode="max", restore_best=False, verbose=1
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[aswa])
    running = test_mrr(model)
    aswa.apply_ensemble()
    ensemble = test_mrr(model)
    print(f"\nbackend: {keras.backend.backend()}, epochs: {epochs}")
    print(f"ensemble: {aswa.ensemble_size} snapshots, valid MRR {aswa.best_score:.4f}")
    print(f"test filtered MRR, last running model: {running:.4f}")
    print(f"test filtered MRR, ASWA ensemble:      {ensemble:.4f}")
    if plot:
        plot_history(aswa).savefig(plot, dpi=120)
        print(f"plot: {plot}")
    return {"running": running, "ensemble": ensemble, "history": aswa.history}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--dim", type=int, default=32, help="embedding size")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--data-dir", help=f"the graph's directory (default {UMLS})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", metavar="FILE", help="save plot_history's figure")
    parser.add_argument("--smoke", action="store_true", help="3 epochs: checks it runs")
    args = parser.parse_args()
    main(
        args.epochs,
        args.dim,
        args.batch_size,
        args.data_dir,
        args.seed,
        args.smoke,
        args.plot,
    )
