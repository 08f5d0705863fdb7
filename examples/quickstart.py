"""Quickstart: ASWA on scikit-learn's handwritten digits.

Trains a small MLP with `keras_aswa.ASWA`, prints ASWA's decision at every
epoch, then the test accuracy of the last running model against the ASWA
ensemble. Any backend: `KERAS_BACKEND=jax python examples/quickstart.py`.

Options: `--epochs N`, `--seed N`, `--plot FILE` (save `plot_history`'s
figure; needs matplotlib), `--smoke` (3 epochs: checks that it runs).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from keras_aswa import ASWA, plot_history  # noqa: E402


def main(epochs: int = 40, seed: int = 0, plot: str | None = None) -> dict:
    keras.utils.set_random_seed(seed)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=seed, stratify=y
    )
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    # A high constant learning rate: the running model keeps bouncing, which
    # is where averaging pays.
    model.compile(
        keras.optimizers.SGD(0.2, momentum=0.9),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # restore_best=False keeps the last running model to compare against.
    aswa = ASWA(restore_best=False, verbose=1)
    model.fit(
        x_train,
        y_train,
        validation_split=0.1,
        epochs=epochs,
        batch_size=32,
        verbose=0,
        callbacks=[aswa],
    )
    _, running = model.evaluate(x_test, y_test, verbose=0)
    aswa.apply_ensemble()
    _, ensemble = model.evaluate(x_test, y_test, verbose=0)
    counts = {
        d: sum(h["decision"] == d for h in aswa.history)
        for d in ("init", "hard", "soft", "reject", "skip")
    }
    print(f"\nbackend: {keras.backend.backend()}, epochs: {epochs}")
    print(f"decisions: {counts}; final ensemble size {aswa.ensemble_size}")
    print(f"test accuracy, last running model: {running:.4f}")
    print(f"test accuracy, ASWA ensemble:      {ensemble:.4f}")
    if plot:
        plot_history(aswa).savefig(plot, dpi=120)
        print(f"plot: {plot}")
    return {"running": running, "ensemble": ensemble}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="FILE", help="save plot_history's figure")
    parser.add_argument("--smoke", action="store_true", help="3 epochs, to test")
    args = parser.parse_args()
    main(3 if args.smoke else args.epochs, args.seed, args.plot)
