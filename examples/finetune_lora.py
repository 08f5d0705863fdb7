"""ASWA for a LoRA fine-tune of a keras-hub text classifier, in bfloat16.

Fine-tuning a pretrained model is short: one to three epochs, often with LoRA
(`backbone.enable_lora(rank=4)` freezes the backbone and trains two small
matrices beside each attention query and value kernel) and in bfloat16. An
epoch-level ASWA would decide only once or twice; `ASWA(update_freq=N)` takes,
scores and decides on a snapshot every N training batches instead, on the
callback's own validation data (its first `validation_steps` batches). The
ensemble holds only what training changes: with LoRA, about 1% of the weights.

The task: which of Jane Austen's six novels a paragraph comes from (6
classes; 1,500 paragraphs, 250 per novel, shipped in `examples/data/austen`,
taken from the Debian package r-cran-janeaustenr: see the README there).

Two ways to get the model:

- `--preset NAME` (where the weights can be had, e.g. on Kaggle):
  `keras_hub.models.TextClassifier.from_preset(NAME, num_classes=6)`, with the
  preset's own preprocessor, fed the raw paragraphs. E.g. `--preset
  bert_base_en_uncased`, or the path of a preset saved with `save_to_preset`.
- Otherwise (no download possible): a small `BertBackbone` built from its
  constructor, with random weights, under `BertTextClassifier(...,
  preprocessor=None)`, fed token ids from a word-level tokenizer written here
  in numpy over a vocabulary of the training paragraphs' commonest words.
  Without pretrained weights the frozen backbone knows nothing about English:
  this path shows the mechanics, and stays near chance (1/6) in two epochs.

    python examples/finetune_lora.py                          # ~7 min, 2 CPU cores
    python examples/finetune_lora.py --preset bert_base_en_uncased
    KERAS_BACKEND=torch python examples/finetune_lora.py --smoke   # seconds
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_aswa import ASWA  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "austen" / "paragraphs.tsv.gz"
# The ids BERT's vocabularies give their special tokens' rows, in this order.
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP = 0, 1, 2, 3


# ---------------------------------------------------------------- the data


def load_paragraphs(path: Path = DATA) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The paragraphs, their labels (0-5) and the novels' titles."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    titles = sorted({title for title, _ in rows})
    texts = np.array([text for _, text in rows])
    labels = np.array([titles.index(title) for title, _ in rows], "int32")
    return texts, labels, titles


def split(texts, labels, n_val: int, n_test: int, seed: int):
    """A shuffled train / validation / test split, the same for every backend."""
    order = np.random.default_rng(seed).permutation(len(texts))
    parts = np.split(order, [n_val, n_val + n_test])
    val, test, train = ((texts[i], labels[i]) for i in parts)
    return train, val, test


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|[^\sa-z]", text.lower())


def build_vocabulary(texts, size: int) -> list[str]:
    """BERT's special tokens, then the commonest words of `texts`."""
    counts = Counter(w for text in texts for w in words(text))
    return SPECIAL + [w for w, _ in counts.most_common(size - len(SPECIAL))]


def tokenize(texts, vocabulary: list[str], sequence_length: int) -> dict:
    """The inputs `BertTextClassifier(preprocessor=None)` takes, in numpy.

    `[CLS] words... [SEP]`, cut to `sequence_length` and padded with `[PAD]`,
    unknown words as `[UNK]`: what `BertTextClassifierPreprocessor` makes,
    without its tokenizer.
    """
    index = {w: i for i, w in enumerate(vocabulary)}
    token_ids = np.full((len(texts), sequence_length), PAD, "int32")
    for row, text in enumerate(texts):
        ids = [index.get(w, UNK) for w in words(text)][: sequence_length - 2]
        ids = [CLS, *ids, SEP]
        token_ids[row, : len(ids)] = ids
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": token_ids != PAD,
    }


# ---------------------------------------------------------------- the model


def build_classifier(
    num_classes: int,
    preset: str | None = None,
    vocabulary_size: int = 4096,
    sequence_length: int = 128,
    dtype: str = "mixed_bfloat16",
    smoke: bool = False,
):
    """A keras-hub text classifier: from a preset, or built from constructors."""
    import keras_hub

    if preset is not None:
        classifier = keras_hub.models.TextClassifier.from_preset(
            preset, num_classes=num_classes, dtype=dtype
        )
        classifier.preprocessor.sequence_length = sequence_length
        return classifier
    width = 32 if smoke else 128
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=1 if smoke else 2,
        num_heads=2 if smoke else 4,
        hidden_dim=width,
        intermediate_dim=2 * width,
        max_sequence_length=sequence_length,
        dtype=dtype,
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=num_classes, preprocessor=None
    )


# ---------------------------------------------------------------- the run


def prepare(
    preset: str | None = None,
    epochs: int = 2,
    batch_size: int = 32,
    update_freq: int = 8,
    validation_steps: int | None = 4,
    sequence_length: int = 128,
    learning_rate: float = 2e-3,
    lora_rank: int = 4,
    dtype: str = "mixed_bfloat16",
    seed: int = 0,
    smoke: bool = False,
) -> dict:
    """The data, the compiled LoRA classifier and its ASWA callback, unfitted."""
    keras.utils.set_random_seed(seed)
    texts, labels, titles = load_paragraphs()
    n_val, n_test = 200, 300
    if smoke:
        # A slice and a tiny model, so that it runs in seconds; the numbers
        # mean nothing.
        epochs, batch_size, update_freq, validation_steps = 1, 16, 2, 1
        sequence_length = min(sequence_length, 32)
        texts, labels = texts[::10], labels[::10]
        n_val, n_test = 32, 32
    # keras-hub's fit does not shuffle arrays: the split is shuffled once.
    train, val, test = split(texts, labels, n_val, n_test, seed)
    classifier = build_classifier(
        len(titles),
        preset,
        vocabulary_size=512 if smoke else 4096,
        sequence_length=sequence_length,
        dtype=dtype,
        smoke=smoke,
    )
    if preset is None:
        vocabulary = build_vocabulary(train[0], classifier.backbone.vocabulary_size)
        train, val, test = (
            (tokenize(x, vocabulary, sequence_length), y) for x, y in (train, val, test)
        )
    # Freezes the backbone; trains rank-`lora_rank` factors beside the
    # attention's query and value kernels (and the classification head).
    classifier.backbone.enable_lora(rank=lora_rank)
    classifier.compile(
        optimizer=keras.optimizers.AdamW(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    aswa = ASWA(
        monitor="val_loss",
        update_freq=update_freq,
        validation_data=val,
        validation_steps=validation_steps,
        restore_best=False,  # keeps the last running model, to compare against
        verbose=1,
    )
    return {
        "model": classifier,
        "aswa": aswa,
        "train": train,
        "test": test,
        "epochs": epochs,
        "batch_size": batch_size,
        "update_freq": update_freq,
        "name": preset or "BertBackbone from its constructor",
        "dtype": dtype,
    }


def run(job: dict) -> dict:
    """Fits, then compares the last running model and the ensemble on test."""
    model, aswa, batch_size = job["model"], job["aswa"], job["batch_size"]
    (x_train, y_train), (x_test, y_test) = job["train"], job["test"]
    model.fit(
        x_train,
        y_train,
        epochs=job["epochs"],
        batch_size=batch_size,
        callbacks=[aswa],
        verbose=2,
    )
    _, running = model.evaluate(x_test, y_test, batch_size=batch_size, verbose=0)
    aswa.apply_ensemble()
    _, ensemble = model.evaluate(x_test, y_test, batch_size=batch_size, verbose=0)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    total = sum(int(np.prod(v.shape)) for v in model.weights)
    print(
        f"\nbackend: {keras.backend.backend()}, dtype policy: {job['dtype']}, "
        f"model: {job['name']}"
    )
    print(f"trainable parameters: {trainable:,} of {total:,}")
    print(f"ASWA decisions: {len(aswa.history)}, every {job['update_freq']} batches")
    print(f"final ensemble size {aswa.ensemble_size}")
    print(f"test accuracy, last running model: {running:.4f}")
    print(f"test accuracy, ASWA ensemble:      {ensemble:.4f}")
    return {**job, "running": running, "ensemble": ensemble}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument(
        "--preset", help="a keras-hub preset (name or folder) to fine-tune"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--update-freq", type=int, default=8, help="batches between ASWA decisions"
    )
    parser.add_argument(
        "--validation-steps",
        type=int,
        default=4,
        help="validation batches each decision scores on (0: all)",
    )
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument(
        "--dtype", default="mixed_bfloat16", help="Keras dtype policy of the model"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke", action="store_true", help="one epoch on a slice: checks it runs"
    )
    args = parser.parse_args()
    prepared = prepare(
        args.preset,
        args.epochs,
        args.batch_size,
        args.update_freq,
        args.validation_steps or None,
        args.sequence_length,
        args.learning_rate,
        args.lora_rank,
        args.dtype,
        args.seed,
        args.smoke,
    )
    run(prepared)
