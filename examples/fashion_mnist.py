"""ASWA on Fashion-MNIST: a small CNN with BatchNormalization.

Trains the CNN with a constant, fairly high SGD learning rate (the regime
where weight averaging pays), with `keras_aswa.ASWA` watching `val_loss` on
the last 5,000 training images, then prints the test accuracy of the last
running model and of the ASWA ensemble.

BatchNormalization's moving statistics are averaged with the other weights
by default; `--batchnorm recompute` instead recomputes them for each
ensemble with `keras_aswa.update_batchnorm` over 5,000 training images, as
the ASWA paper's image experiments did (one extra pass per epoch).

The data: the four idx files `train-images-idx3-ubyte.gz`,
`train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`,
`t10k-labels-idx1-ubyte.gz`. With `--data-dir DIR` they are read from DIR.
Without it they are looked for where Keras caches them
(`$KERAS_HOME/datasets/fashion-mnist`, `~/.keras/datasets/fashion-mnist`)
and where Debian's and Ubuntu's `dataset-fashion-mnist` package installs
them (`/usr/share/datasets/fashion-mnist`); if they are in neither place,
`keras.datasets.fashion_mnist.load_data()` downloads them (about 30 MB) into
Keras' cache.

    python examples/fashion_mnist.py                     # 30 epochs
    KERAS_BACKEND=torch python examples/fashion_mnist.py --epochs 10
    python examples/fashion_mnist.py --data-dir ~/data/fashion-mnist --plot aswa.png
    python examples/fashion_mnist.py --smoke             # seconds: a small slice

On a CPU an epoch takes 30-60 s; on a GPU a few seconds.
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_aswa import ASWA, plot_history  # noqa: E402

FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
CLASSES = (
    "T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, "
    "Ankle boot"
).split(", ")


def search_dirs() -> list[Path]:
    """Where the idx files are looked for when no --data-dir is given."""
    homes = [os.environ.get("KERAS_HOME"), "~/.keras", "/tmp/.keras"]
    dirs = [Path(h).expanduser() / "datasets" / "fashion-mnist" for h in homes if h]
    return [*dirs, Path("/usr/share/datasets/fashion-mnist")]


def find_data(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first directory holding all four idx files, or None."""
    candidates = [Path(data_dir).expanduser()] if data_dir else search_dirs()
    for d in candidates:
        if all((d / name).is_file() for name in FILES.values()):
            return d
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format): a 4-byte magic, the shape, uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(data_dir: str | None = None):
    """((x_train, y_train), (x_test, y_test)), images uint8 (n, 28, 28)."""
    found = find_data(data_dir)
    if found is not None:
        arrays = {key: read_idx(found / name) for key, name in FILES.items()}
        print(f"Fashion-MNIST from {found}")
        return (arrays["x_train"], arrays["y_train"]), (
            arrays["x_test"],
            arrays["y_test"],
        )
    if data_dir:
        raise SystemExit(
            f"--data-dir {data_dir}: expected the files {', '.join(FILES.values())}"
        )
    print("Fashion-MNIST not found locally: downloading it with Keras")
    return keras.datasets.fashion_mnist.load_data()


def make_model(width: int = 32) -> keras.Model:
    def block(filters):
        return [
            keras.layers.Conv2D(filters, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
        ]

    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            *block(width),
            *block(width),
            keras.layers.MaxPooling2D(),
            *block(2 * width),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def main(
    epochs: int = 30,
    batch_size: int = 128,
    data_dir: str | None = None,
    batchnorm: str = "average",
    seed: int = 0,
    smoke: bool = False,
    plot: str | None = None,
) -> dict:
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load(data_dir)
    n_val = 5000
    if smoke:
        # A slice and a narrow model, so that the example runs in seconds; the
        # numbers mean nothing.
        epochs, n_val, batch_size = min(epochs, 2), 64, 64
        x_train, y_train = x_train[: 256 + n_val], y_train[: 256 + n_val]
        x_test, y_test = x_test[:64], y_test[:64]
    x_train = (x_train[..., None] / 255.0).astype("float32")
    x_test = (x_test[..., None] / 255.0).astype("float32")
    x_val, y_val = x_train[-n_val:], y_train[-n_val:]
    x_train, y_train = x_train[:-n_val], y_train[:-n_val]

    model = make_model(width=8 if smoke else 32)
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # restore_best=False keeps the last running model, to compare against.
    aswa = ASWA(
        restore_best=False,
        batchnorm=batchnorm,
        batchnorm_data=x_train[:n_val] if batchnorm == "recompute" else None,
        verbose=1,
    )
    model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=batch_size,
        verbose=2,
        callbacks=[aswa],
    )
    _, running = model.evaluate(x_test, y_test, verbose=0)
    aswa.apply_ensemble()  # with batchnorm="recompute", recomputes the statistics
    _, ensemble = model.evaluate(x_test, y_test, verbose=0)
    print(f"\nbackend: {keras.backend.backend()}, epochs: {epochs}")
    print(f"final ensemble size {aswa.ensemble_size}")
    print(f"test accuracy, last running model: {running:.4f}")
    print(f"test accuracy, ASWA ensemble:      {ensemble:.4f}")
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
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--data-dir", help="directory holding the four idx .gz files (see below)"
    )
    parser.add_argument(
        "--batchnorm", choices=("average", "recompute"), default="average"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="FILE", help="save plot_history's figure")
    parser.add_argument(
        "--smoke", action="store_true", help="2 epochs on a slice: checks it runs"
    )
    args = parser.parse_args()
    main(
        args.epochs,
        args.batch_size,
        args.data_dir,
        args.batchnorm,
        args.seed,
        args.smoke,
        args.plot,
    )
