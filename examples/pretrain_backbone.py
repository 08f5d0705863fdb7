"""Pretrains the small BERT backbone that examples/finetune_lora.py fine-tunes.

A masked-language-model pretraining, in about ten minutes of CPU, of a two-layer
`keras_hub.models.BertBackbone` on the fine-tuning *training* paragraphs only
(the validation and test paragraphs are never seen, so the fine-tuning test
score is not inflated by the pretraining): each epoch, 15% of each
paragraph's words (at most `MAX_SELECTIONS`) are chosen afresh, 80% of them
replaced by `[MASK]`, 10% by a random word and 10% left as they are, and
`keras_hub.models.BertMaskedLM(backbone, preprocessor=None)` learns to
predict them.

The backbone is saved with `backbone.save_to_preset(folder)` (its
`config.json` and `model.weights.h5`, here in float16 to halve the file),
beside `vocabulary.txt`, the word-level vocabulary its token ids index, one
word a line. That is how `examples/data/austen_bert/` was made:

    KERAS_BACKEND=jax python examples/pretrain_backbone.py   # ~10 min, 2 busy CPU cores
    python examples/pretrain_backbone.py --smoke    # seconds, to a temporary folder

The numbers differ slightly between backends and machines; the committed
folder came from the command above (see its README).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_lora import (  # noqa: E402
    BACKBONE,
    CLS,
    MASK,
    PAD,
    SEP,
    austen_split,
    build_vocabulary,
    tokenize,
)

MAX_SELECTIONS = 20  # masked words per paragraph at most: 15% of 128
CONFIG = {  # the committed backbone's
    "vocabulary_size": 2048,
    "num_layers": 2,
    "num_heads": 4,
    "hidden_dim": 128,
    "intermediate_dim": 256,
    "max_sequence_length": 128,
}
SMOKE_CONFIG = {
    "vocabulary_size": 512,
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": 32,
    "intermediate_dim": 64,
    "max_sequence_length": 32,
}


def mask_words(token_ids: np.ndarray, vocabulary_size: int, rng, rate: float = 0.15):
    """BERT's masking of `token_ids` (a batch of `[CLS] ... [SEP] [PAD]...`).

    Returns the inputs `BertMaskedLM(preprocessor=None)` takes, the ids it is
    to predict and their weights (0 for the padding of `mask_positions`).
    """
    n, length = token_ids.shape
    selections = min(MAX_SELECTIONS, length)
    masked = token_ids.copy()
    positions = np.zeros((n, selections), "int32")
    targets = np.zeros((n, selections), "int32")
    weights = np.zeros((n, selections), "float32")
    special = (token_ids == PAD) | (token_ids == CLS) | (token_ids == SEP)
    for row in range(n):
        candidates = np.flatnonzero(~special[row])
        k = min(selections, max(1, round(rate * len(candidates))))
        chosen = np.sort(rng.choice(candidates, k, replace=False))
        positions[row, :k] = chosen
        targets[row, :k] = token_ids[row, chosen]
        weights[row, :k] = 1.0
        draw = rng.random(k)
        masked[row, chosen[draw < 0.8]] = MASK
        randoms = chosen[(draw >= 0.8) & (draw < 0.9)]
        masked[row, randoms] = rng.integers(MASK + 1, vocabulary_size, len(randoms))
    x = {
        "token_ids": masked,
        "segment_ids": np.zeros_like(masked),
        "padding_mask": token_ids != PAD,
        "mask_positions": positions,
    }
    return x, targets, weights


class MaskedBatches(keras.utils.PyDataset):
    """An epoch of masked batches, drawn afresh (order and masks) each epoch.

    Paragraphs of similar length are batched together (sorted within windows
    of 8 batches), and each batch is cut to its longest paragraph rounded up
    to a multiple of 32 (a few shapes to compile), which halves the work
    against padding all of them to 128.
    """

    def __init__(self, token_ids, vocabulary_size: int, batch_size: int, seed: int):
        super().__init__()
        self.token_ids, self.vocabulary_size = token_ids, vocabulary_size
        self.batch_size, self.rng = batch_size, np.random.default_rng(seed)
        self.lengths = (token_ids != PAD).sum(axis=1)
        self.on_epoch_end()

    def __len__(self):
        return -(-len(self.token_ids) // self.batch_size)

    def on_epoch_end(self):
        order = self.rng.permutation(len(self.token_ids))
        window = 8 * self.batch_size
        order = np.concatenate(
            [
                chunk[np.argsort(self.lengths[chunk], kind="stable")]
                for chunk in np.split(order, range(window, len(order), window))
            ]
        )
        batches = np.split(order, range(self.batch_size, len(order), self.batch_size))
        self.batches = []
        for i in self.rng.permutation(len(batches)):
            rows = batches[i]
            width = min(
                -(-self.lengths[rows].max() // 32) * 32, self.token_ids.shape[1]
            )
            self.batches.append(
                mask_words(self.token_ids[rows, :width], self.vocabulary_size, self.rng)
            )

    def __getitem__(self, index):
        return self.batches[index]


class Progress(keras.callbacks.Callback):
    def __init__(self, epochs: int, start: float):
        super().__init__()
        self.epochs, self.start = epochs, start

    def on_epoch_end(self, epoch, logs=None):
        if epoch % 5 == 4 or epoch == self.epochs - 1:
            print(
                f"epoch {epoch + 1}/{self.epochs}: loss {logs['loss']:.3f}, "
                f"masked-word accuracy {logs['sparse_categorical_accuracy']:.3f} "
                f"({time.perf_counter() - self.start:.0f} s)",
                flush=True,
            )


def pretrain(
    out: Path,
    epochs: int = 40,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
    smoke: bool = False,
) -> dict:
    """Pretrains, saves the backbone and its vocabulary to `out`."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    config = SMOKE_CONFIG if smoke else CONFIG
    if smoke:
        epochs = 1
    (train_texts, _), _, _ = austen_split(smoke=smoke)
    vocabulary = build_vocabulary(train_texts, config["vocabulary_size"])
    length = config["max_sequence_length"]
    token_ids = tokenize(train_texts, vocabulary, length)["token_ids"]
    backbone = keras_hub.models.BertBackbone(**config)
    masked_lm = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    steps = epochs * -(-len(token_ids) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=steps - steps // 10,
        warmup_target=learning_rate,
        warmup_steps=steps // 10,
    )
    masked_lm.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["sparse_categorical_accuracy"],
    )
    batches = MaskedBatches(token_ids, len(vocabulary), batch_size, seed)
    start = time.perf_counter()
    # keras.Model's own fit: keras-hub's takes arrays, not a PyDataset (it
    # would run the preprocessor, and there is none here).
    keras.Model.fit(
        masked_lm,
        batches,
        epochs=epochs,
        verbose=0,
        callbacks=[Progress(epochs, start)],
    )
    seconds = time.perf_counter() - start
    save(backbone, vocabulary, out)
    return {"backbone": backbone, "vocabulary": vocabulary, "seconds": seconds}


def save(backbone, vocabulary: list[str], out: Path) -> None:
    """The backbone as a keras-hub preset in float16, and its vocabulary."""
    import keras_hub

    out.mkdir(parents=True, exist_ok=True)
    config = backbone.get_config()
    config["dtype"] = "float16"
    half = keras_hub.models.BertBackbone.from_config(config)
    half.set_weights([w.astype("float16") for w in backbone.get_weights()])
    half.save_to_preset(str(out))
    (out / "vocabulary.txt").write_text("\n".join(vocabulary) + "\n", "utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="the folder to save to (default: examples/data/austen_bert; "
        "with --smoke, a temporary one)",
    )
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke", action="store_true", help="one epoch of a tiny model: checks it runs"
    )
    args = parser.parse_args()
    if args.out is None:  # a smoke run never overwrites the committed backbone
        args.out = Path(tempfile.mkdtemp()) if args.smoke else BACKBONE
    result = pretrain(
        args.out,
        args.epochs,
        args.batch_size,
        args.learning_rate,
        args.seed,
        args.smoke,
    )
    print(f"pretrained in {result['seconds']:.0f} s, saved to {args.out}")
