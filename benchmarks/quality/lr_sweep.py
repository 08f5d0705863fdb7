"""The sweep that chose the fine-tuning regime's two learning rates.

For each fine-tuning variant and Adam learning rate, one plain run (seed 1,
`FINETUNE_EPOCHS` epochs, no averaging) of the regime's model and data; the
validation accuracy and loss of every epoch go to a JSON, and a table says
where the best validation epoch fell and how far the last epochs still moved::

    python -m benchmarks.quality.lr_sweep --backend tensorflow \\
        --out benchmarks/out/regimes-tensorflow

A learning rate "still improving" has its best validation loss in the last
epochs; one that "converged" has its best well before the end, the last
epochs flat or worse.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

LRS = (1e-4, 3e-4, 1e-3, 3e-3)  # and 1e-2, 3e-2 for the frozen backbone


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.lr_sweep")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/lr-sweep"))
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--variants", default="full,frozen,lora")
    args = parser.parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from dataclasses import replace

    import keras

    from benchmarks.quality.config import FINETUNE_VARIANTS, regime_configs
    from benchmarks.quality.training import build_model, fit, load_data

    base = regime_configs(["finetune"], smoke=False)
    data = load_data("fmnist_finetune", False, args.out / "pretrained")
    runs = {}
    for ft in args.variants.split(","):
        if ft not in FINETUNE_VARIANTS:
            parser.error(f"unknown variant {ft!r}; have {FINETUNE_VARIANTS}")
        cfg0 = next(c for c in base if c.finetune == ft)
        for lr in (float(x) for x in args.lrs.split(",")):
            cfg = replace(cfg0, learning_rate=lr, epochs=args.epochs or cfg0.epochs)
            model = build_model(cfg, data, 1, ema=False)
            hist = keras.callbacks.History()
            seconds = fit(cfg, data, model, [hist])
            h = hist.history
            runs[f"{ft}-lr{lr:g}"] = {
                "val_accuracy": [round(v, 5) for v in h["val_accuracy"]],
                "val_loss": [round(v, 5) for v in h["val_loss"]],
                "seconds": round(seconds, 1),
            }
            print(_row(f"{ft}-lr{lr:g}", runs[f"{ft}-lr{lr:g}"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"backend": keras.backend.backend(), "runs": runs}
    path = args.out / "lr_sweep.json"
    if path.exists():  # runs of other variants or rates kept
        result["runs"] = {**json.loads(path.read_text())["runs"], **runs}
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _row(name: str, run: dict) -> str:
    acc, loss = run["val_accuracy"], run["val_loss"]
    best_loss = min(range(len(loss)), key=loss.__getitem__)
    best_acc = max(range(len(acc)), key=acc.__getitem__)
    return (
        f"{name}: val acc best {max(acc):.4f} at epoch {best_acc}, last "
        f"{acc[-1]:.4f}; val loss best {min(loss):.4f} at epoch {best_loss}, "
        f"last {loss[-1]:.4f}; acc over the last 5 epochs {acc[-5:]} "
        f"({run['seconds']:.0f} s)"
    )


if __name__ == "__main__":
    main()
