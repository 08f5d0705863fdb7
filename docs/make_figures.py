"""Draws the documentation's figures from real training runs.

    python docs/make_figures.py            # all figures, into docs/img/
    python docs/make_figures.py digits     # one of them

Each figure is `keras_aswa.plot_history` of one seeded run. The backend is
TensorFlow unless KERAS_BACKEND says otherwise; other backends give slightly
different curves (float rounding), not different pictures.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from keras_aswa import ASWA, plot_history  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"


def digits() -> None:
    """The quickstart's run: an MLP on scikit-learn's digits, 40 epochs."""
    keras.utils.set_random_seed(0)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, _, y_train, _ = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=y
    )
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.2, momentum=0.9), "sparse_categorical_crossentropy"
    )
    aswa = ASWA()
    model.fit(
        x_train,
        y_train,
        validation_split=0.1,
        epochs=40,
        batch_size=32,
        verbose=0,
        callbacks=[aswa],
    )
    fig = plot_history(
        aswa, title="ASWA on digits: an MLP, SGD at a high constant rate"
    )
    save(fig, "aswa_digits.png")


def umls() -> None:
    """examples/link_prediction.py: DistMult on UMLS, filtered MRR, 100 epochs."""
    sys.path.insert(0, str(ROOT / "examples"))
    import link_prediction

    run = link_prediction.main(epochs=100)
    fig = plot_history(
        Run(run["history"], "val_mrr"),
        title="ASWA on UMLS: DistMult, validation filtered MRR (higher is better)",
    )
    save(fig, "aswa_umls.png")


class Run:
    """What plot_history reads off a callback: its history and monitor."""

    def __init__(self, history, monitor):
        self.history, self.monitor = history, monitor


def save(fig, name: str) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / name, dpi=100)
    print(f"wrote {IMG / name} ({keras.backend.backend()})")


FIGURES = {"digits": digits, "umls": umls}

if __name__ == "__main__":
    for name in sys.argv[1:] or FIGURES:
        FIGURES[name]()
