"""Quickstart: ASWA on scikit-learn's handwritten digits.

Trains a small MLP with `keras_aswa.ASWA`, prints a table of ASWA's decision
at every epoch (from `aswa.history`, with a legend), then the test accuracy of
the last running model against the ASWA ensemble. Any backend:
`KERAS_BACKEND=jax python examples/quickstart.py`.

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

LEGEND = """\
At each epoch end ASWA compares three validation losses (lower is better):
  r  the running model's, the one being trained;
  p  the provisional ensemble's: the ensemble with this epoch's weights added;
  e  the ensemble's, as it was before this epoch.
  init    the first epoch starts the ensemble (size 1);
  hard    r is lower than both p and e: the ensemble restarts from this epoch;
  soft    otherwise, p is lower than e (p - e < 0): this epoch joins the ensemble;
  reject  otherwise (p - e >= 0; 0 is a tie): the ensemble stays as it was.
Epochs count from 0, as in aswa.history, plot_history and ASWA(verbose=1)
(Keras' progress bar prints epoch + 1)."""


def print_decisions(aswa, epochs):
    """One row per epoch of `aswa.history`, enough digits to see a tie."""
    print(LEGEND)
    print(
        f"\n{'epoch':>5}  {'r running':>11}  {'p provisional':>13}  "
        f"{'e before':>11}  {'p - e':>9}  {'decision':<8}  {'size':>4}"
    )
    before = None
    for record in aswa.history:
        r, p = record["running"], record["provisional"]
        diff = "-" if p is None or before is None else f"{p - before:+.2e}"
        print(
            f"{record['epoch']:>5}  {_num(r):>11}  {_num(p):>13}  "
            f"{_num(before):>11}  {diff:>9}  {record['decision']:<8}  "
            f"{record['ensemble_size']:>4}"
        )
        before = record["ensemble_score"]
    print(f"final ensemble: size {aswa.ensemble_size}, val_loss {_num(before)}")


def _num(value):
    return "-" if value is None else f"{value:.8f}"


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
    aswa = ASWA(restore_best=False)
    model.fit(
        x_train,
        y_train,
        validation_split=0.1,
        epochs=epochs,
        batch_size=32,
        verbose=0,
        callbacks=[aswa],
    )
    print_decisions(aswa, epochs)
    _, running = model.evaluate(x_test, y_test, verbose=0)
    aswa.apply_ensemble()
    _, ensemble = model.evaluate(x_test, y_test, verbose=0)
    counts = {
        d: sum(h["decision"] == d for h in aswa.history)
        for d in ("init", "hard", "soft", "reject", "skip")
    }
    print(f"\nbackend: {keras.backend.backend()}, epochs: 0 to {epochs - 1}")
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
