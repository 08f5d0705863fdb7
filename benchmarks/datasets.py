"""Data sets for the quality benchmark, read from local files only.

- Fashion-MNIST from idx ``.gz`` files in Keras' cache or Debian's
  ``dataset-fashion-mnist`` package (never downloaded here, so that the
  benchmark runs offline and reproducibly).
- scikit-learn's 8x8 digits.
- The UMLS and Nations knowledge graphs, vendored under ``benchmarks/data``
  (see ``benchmarks/data/README.md`` for their source and licence).

Only numpy (and scikit-learn for the digits) is needed; Keras is not
imported, so loading data does not pick a backend.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
"""Where the vendored knowledge graphs live."""

KG_NAMES = ("umls", "nations")
KG_SPLITS = ("train", "valid", "test")

# The names Keras' `fashion_mnist.load_data` caches under, which the Debian
# package uses too.
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# idx type codes -> big-endian numpy dtypes (idx files are big-endian).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------
# idx files and Fashion-MNIST
# --------------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not.

    The header is two zero bytes, a type code, the number of dimensions,
    then one big-endian uint32 per dimension; the data follows, big-endian.

    Args:
        path: The file. Gzip is detected from its magic bytes, not its name.

    Returns:
        The array, in native byte order (uint8 for MNIST-style files).

    Raises:
        ValueError: If the header is malformed or the data size does not
            match the header.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown idx type code 0x{type_code:02x}")
    dtype = _IDX_DTYPES[type_code]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: idx header says shape {shape} ({expected} bytes of "
            f"data) but the file holds {len(raw) - header} bytes"
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def fashion_mnist_dirs() -> list[Path]:
    """Where `load_fashion_mnist` looks, in order.

    Keras' cache first (``$KERAS_HOME``, else ``~/.keras``, else ``/tmp/.keras``
    which Keras falls back to when the home directory is not writable), then
    Debian's ``dataset-fashion-mnist`` package.

    Returns:
        Candidate directories (not necessarily existing).
    """
    dirs = []
    if os.environ.get("KERAS_HOME"):
        dirs.append(Path(os.environ["KERAS_HOME"]).expanduser())
    dirs.append(Path("~/.keras").expanduser())
    dirs.append(Path("/tmp/.keras"))
    dirs = [d / "datasets" / "fashion-mnist" for d in dirs]
    dirs.append(DEBIAN_FASHION_MNIST_DIR)
    return dirs


def _find_fashion_mnist(data_dir: str | os.PathLike | None) -> Path:
    candidates = [Path(data_dir)] if data_dir is not None else fashion_mnist_dirs()
    for d in candidates:
        if all((d / name).is_file() for name in FASHION_MNIST_FILES.values()):
            return d
    looked = "\n  ".join(str(d) for d in candidates)
    raise FileNotFoundError(
        "Fashion-MNIST not found. Looked for "
        f"{', '.join(FASHION_MNIST_FILES.values())} in:\n  {looked}\n"
        "Install it with `apt-get install dataset-fashion-mnist` (Debian/"
        "Ubuntu), or let Keras cache it once with "
        "`keras.datasets.fashion_mnist.load_data()`."
    )


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load Fashion-MNIST from local idx files (no download).

    Args:
        data_dir: A directory holding the four idx ``.gz`` files under the
            names Keras uses. Default: search `fashion_mnist_dirs()`.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: images uint8 of shape
        (60000, 28, 28) and (10000, 28, 28), labels int64 in 0..9.

    Raises:
        FileNotFoundError: If no directory holds all four files; the message
            says how to install them.
    """
    d = _find_fashion_mnist(data_dir)
    arrays = {key: read_idx(d / name) for key, name in FASHION_MNIST_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{d}: inconsistent {split} files: images {x.shape}, labels {y.shape}"
            )
    return (
        (arrays["x_train"], arrays["y_train"].astype(np.int64)),
        (arrays["x_test"], arrays["y_test"].astype(np.int64)),
    )


# --------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------


def load_digits(
    images: bool = False, scale: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Load scikit-learn's 8x8 handwritten digits (1797 samples, 10 classes).

    The data ships inside scikit-learn, so nothing is downloaded.

    Args:
        images: Return (n, 8, 8) images instead of (n, 64) vectors.
        scale: Divide the pixel values (0..16) by 16 so they lie in [0, 1].

    Returns:
        ``(x, y)``: x float32, y int64 labels in 0..9. There is no official
        test split; carve one with `split_validation`.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = (bunch.images if images else bunch.data).astype(np.float32)
    if scale:
        x /= 16.0
    return x, bunch.target.astype(np.int64)


# --------------------------------------------------------------------------
# validation split
# --------------------------------------------------------------------------


def split_validation(
    x: np.ndarray,
    y: np.ndarray,
    fraction: float = 0.1,
    seed: int = 0,
    stratify: bool = False,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Carve a random validation split out of training data.

    ASWA's decisions are made on held-out data (the paper holds out 5-10 %
    of the training set); the test set must stay untouched for reporting.

    Args:
        x: Inputs, first axis indexes samples.
        y: Targets, same length as ``x``.
        fraction: Share of samples to hold out, in (0, 1).
        seed: Seed of the permutation, so that runs are repeatable.
        stratify: Hold out ``fraction`` of each class (``y`` must be class
            labels), keeping class shares in both parts.

    Returns:
        ``((x_train, y_train), (x_val, y_val))``, each part keeping the
        original sample order.

    Raises:
        ValueError: On a fraction outside (0, 1), mismatched lengths, or a
            split that would leave either part empty.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x and y differ in length: {n} vs {len(y)}")
    rng = np.random.default_rng(seed)
    k = int(round(fraction * n))
    if stratify:
        labels, y_idx = np.unique(np.asarray(y), return_inverse=True)
        sizes = np.bincount(y_idx.ravel(), minlength=len(labels))
        # Largest-remainder allocation: per-class counts sum to exactly k.
        exact = fraction * sizes
        per_class = np.floor(exact).astype(np.int64)
        extra = np.argsort(-(exact - per_class), kind="stable")[: k - per_class.sum()]
        per_class[extra] += 1
        val_idx = np.concatenate(
            [
                rng.permutation(np.flatnonzero(y_idx.ravel() == c))[: per_class[c]]
                for c in range(len(labels))
            ]
        )
    else:
        val_idx = rng.permutation(n)[:k]
    if len(val_idx) == 0 or len(val_idx) == n:
        raise ValueError(f"fraction={fraction} of {n} samples leaves an empty split")
    is_val = np.zeros(n, dtype=bool)
    is_val[val_idx] = True
    # Sorted indices keep the original order, so a split is a pure function
    # of (n, fraction, seed).
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


# --------------------------------------------------------------------------
# knowledge graphs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class KnowledgeGraph:
    """An integer-indexed knowledge graph with train/valid/test splits.

    Attributes:
        name: The data set's name.
        train, valid, test: int32 arrays of shape (n, 3): (head, relation,
            tail). No inverse triples; `benchmarks.kg` adds them.
        entities: Entity names; ``entities[i]`` has id ``i`` (sorted).
        relations: Relation names; ``relations[j]`` has id ``j`` (sorted).
    """

    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    entities: tuple[str, ...]
    relations: tuple[str, ...]
    entity_to_id: dict[str, int] = field(repr=False)
    relation_to_id: dict[str, int] = field(repr=False)

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_relations(self) -> int:
        """Relations in the data, without inverses."""
        return len(self.relations)

    def split(self, name: str) -> np.ndarray:
        """The triples of split ``name`` ("train", "valid" or "test")."""
        if name not in KG_SPLITS:
            raise ValueError(f"split must be one of {KG_SPLITS}, got {name!r}")
        return getattr(self, name)


def read_triples(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Read tab-separated (head, relation, tail) lines, gzipped or not.

    Args:
        path: The file; gzip is detected from its magic bytes.

    Returns:
        The triples as strings, in file order.

    Raises:
        ValueError: If a non-empty line does not have three fields.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    triples = []
    for lineno, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"{path}:{lineno}: expected 3 tab-separated fields")
        triples.append((parts[0], parts[1], parts[2]))
    return triples


def _split_file(directory: Path, split: str) -> Path:
    for name in (f"{split}.txt.gz", f"{split}.txt"):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no {split}.txt.gz or {split}.txt in {directory}")


def index_triples(
    name: str, splits: dict[str, Sequence[tuple[str, str, str]]]
) -> KnowledgeGraph:
    """Give string triples integer ids.

    Ids come from the sorted names over all splits, so they do not depend on
    file order and every entity of valid/test has an embedding.

    Args:
        name: The graph's name.
        splits: "train", "valid" and "test" string triples.

    Returns:
        The indexed `KnowledgeGraph`.
    """
    entities = sorted({e for s in splits.values() for h, _, t in s for e in (h, t)})
    relations = sorted({r for s in splits.values() for _, r, _ in s})
    e2id = {e: i for i, e in enumerate(entities)}
    r2id = {r: i for i, r in enumerate(relations)}

    def index(triples):
        arr = np.array([(e2id[h], r2id[r], e2id[t]) for h, r, t in triples], np.int32)
        return arr.reshape(-1, 3)

    return KnowledgeGraph(
        name=name,
        train=index(splits["train"]),
        valid=index(splits["valid"]),
        test=index(splits["test"]),
        entities=tuple(entities),
        relations=tuple(relations),
        entity_to_id=e2id,
        relation_to_id=r2id,
    )


def load_kg(name: str, data_dir: str | os.PathLike | None = None) -> KnowledgeGraph:
    """Load a vendored knowledge graph ("umls" or "nations"), or one on disk.

    Args:
        name: "umls" or "nations" for the vendored graphs; with ``data_dir``,
            any label.
        data_dir: A directory with ``train``, ``valid`` and ``test`` triple
            files (``.txt.gz`` or ``.txt``, tab-separated). Default:
            ``benchmarks/data/<name>``.

    Returns:
        A `KnowledgeGraph` with int32 (n, 3) splits and sorted-name id maps.
        UMLS: 135 entities, 46 relations, 5216/652/661 triples.
        Nations: 14 entities, 55 relations, 1592/199/201 triples.
    """
    if data_dir is None:
        if name not in KG_NAMES:
            raise ValueError(f"unknown knowledge graph {name!r}; have {KG_NAMES}")
        directory = DATA_DIR / name
    else:
        directory = Path(data_dir)
    splits = {s: read_triples(_split_file(directory, s)) for s in KG_SPLITS}
    return index_triples(name, splits)
