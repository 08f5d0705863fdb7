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

- By default (offline): the small `BertBackbone` in `examples/data/austen_bert`
  (2 layers, hidden size 128, 0.56M parameters), pretrained by
  `examples/pretrain_backbone.py` with a masked-language-model objective on the
  training paragraphs only (the split is fixed: no validation or test paragraph
  was seen), loaded with `BertBackbone.from_preset(folder)` under
  `BertTextClassifier(..., preprocessor=None)`, fed token ids from a word-level
  tokenizer written here in numpy over the vocabulary saved beside it.
  `--random-backbone` builds the same architecture with random weights instead,
  to compare; `--backbone FOLDER` takes another pretrain_backbone.py output.
- `--preset NAME` (where the weights can be had, e.g. on Kaggle):
  `keras_hub.models.TextClassifier.from_preset(NAME, num_classes=6)`, with the
  preset's own preprocessor, fed the raw paragraphs. E.g. `--preset
  bert_base_en_uncased`, or the path of a preset saved with `save_to_preset`.

One run, four answers: the optimizer keeps an EMA of the weights
(`use_ema=True`), ASWA (`restore_best=False`) its ensemble, and two small
callbacks the last running weights and the best checkpoint (the running model
at the ASWA check with the lowest validation loss); none of them changes the
training. At the end each is written into the model and scored on the test
split (300 paragraphs; chance is 1/6).

    python examples/finetune_lora.py          # 3-6 min on 2 CPU cores (JAX, TensorFlow)
    python examples/finetune_lora.py --random-backbone  # the same, unpretrained
    python examples/finetune_lora.py --preset bert_base_en_uncased
    KERAS_BACKEND=torch python examples/finetune_lora.py --smoke   # seconds
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_aswa import ASWA  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "austen" / "paragraphs.tsv.gz"
# The backbone examples/pretrain_backbone.py pretrained, and its vocabulary.
BACKBONE = HERE / "data" / "austen_bert"
# The ids BERT's vocabularies give their special tokens' rows, in this order.
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
# The split: fixed, whatever --seed is, since the pretrained backbone has seen
# the training paragraphs (and only those).
N_VAL, N_TEST, SPLIT_SEED = 200, 300, 0


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


def austen_split(smoke: bool = False):
    """The fixed train / validation / test split of the novels' paragraphs.

    With `smoke`, a tenth of the training paragraphs and 32 of the validation
    and test ones each: slices of the same split.
    """
    texts, labels, _ = load_paragraphs()
    train, val, test = split(texts, labels, N_VAL, N_TEST, SPLIT_SEED)
    if smoke:
        train = (train[0][::10], train[1][::10])
        val, test = ((x[:32], y[:32]) for x, y in (val, test))
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


def load_vocabulary(folder: Path = BACKBONE) -> list[str]:
    """The word-level vocabulary the pretrained backbone's token ids index."""
    return (Path(folder) / "vocabulary.txt").read_text("utf-8").splitlines()


def build_classifier(
    num_classes: int,
    preset: str | None = None,
    backbone: Path = BACKBONE,
    dtype: str = "mixed_bfloat16",
    pretrained: bool = True,
):
    """A keras-hub text classifier: from a preset, or on the pretrained backbone.

    Without `preset`: `BertBackbone.from_preset(backbone)`, the small backbone
    examples/pretrain_backbone.py pretrained (with `pretrained=False`, the same
    architecture with random weights, for comparison), under
    `BertTextClassifier(..., preprocessor=None)`.
    """
    import keras_hub

    if preset is not None:
        return keras_hub.models.TextClassifier.from_preset(
            preset, num_classes=num_classes, dtype=dtype
        )
    if pretrained:
        encoder = keras_hub.models.BertBackbone.from_preset(str(backbone), dtype=dtype)
    else:
        config = json.loads((Path(backbone) / "config.json").read_text())["config"]
        encoder = keras_hub.models.BertBackbone.from_config({**config, "dtype": dtype})
    return keras_hub.models.BertTextClassifier(
        encoder, num_classes=num_classes, preprocessor=None
    )


# ------------------------------------------------------- reading the methods off


class LastWeights(keras.callbacks.Callback):
    """The running weights at the end of the last epoch.

    Kept at every epoch end, because `fit` writes the optimizer's EMA into
    the model (`optimizer.finalize_variable_values`) before `on_train_end`.
    """

    def on_epoch_end(self, epoch, logs=None):
        self.weights = self.model.get_weights()


class BestCheck(keras.callbacks.Callback):
    """The best checkpoint: the running weights at the ASWA check where they
    scored best on the validation data (ASWA's own evaluation of them, read
    from its history; placed after it among `fit`'s callbacks)."""

    def __init__(self, aswa: ASWA):
        super().__init__()
        self.aswa, self.seen = aswa, 0
        self.score, self.step, self.weights = float("inf"), None, None

    def on_train_batch_end(self, batch, logs=None):
        history = self.aswa.history
        if len(history) > self.seen:
            self.seen = len(history)
            entry = history[-1]
            # val_loss: lower is better; the first of equal scores is kept.
            if entry["running"] is not None and entry["running"] < self.score:
                self.score, self.step = entry["running"], entry["step"]
                self.weights = self.model.get_weights()


# ---------------------------------------------------------------- the run


def prepare(
    preset: str | None = None,
    epochs: int = 6,
    batch_size: int = 32,
    update_freq: int = 8,
    validation_steps: int | None = 4,
    sequence_length: int = 128,
    learning_rate: float = 1e-2,
    lora_rank: int = 4,
    dtype: str = "mixed_bfloat16",
    seed: int = 0,
    smoke: bool = False,
    backbone: Path = BACKBONE,
    pretrained: bool = True,
) -> dict:
    """The data, the compiled LoRA classifier and its callbacks, unfitted."""
    keras.utils.set_random_seed(seed)
    _, _, titles = load_paragraphs()
    if smoke:
        # Slices of the split, one epoch; the numbers mean nothing.
        epochs, batch_size, update_freq, validation_steps = 1, 16, 2, 1
        sequence_length = min(sequence_length, 32)
    # keras-hub's fit does not shuffle arrays: the split is shuffled once.
    train, val, test = austen_split(smoke)
    classifier = build_classifier(len(titles), preset, backbone, dtype, pretrained)
    if preset is None:
        vocabulary = load_vocabulary(backbone)
        train, val, test = (
            (tokenize(x, vocabulary, sequence_length), y) for x, y in (train, val, test)
        )
    else:
        classifier.preprocessor.sequence_length = sequence_length
    # Freezes the backbone; trains rank-`lora_rank` factors beside the
    # attention's query and value kernels (and the classification head, and
    # the query and value biases, which enable_lora leaves trainable).
    classifier.backbone.enable_lora(rank=lora_rank)
    classifier.compile(
        # use_ema: the optimizer keeps an exponential moving average of the
        # trainable weights (momentum 0.99 a step), which fit writes into the
        # model when it ends. It does not change the training.
        optimizer=keras.optimizers.AdamW(learning_rate, use_ema=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    aswa = ASWA(
        monitor="val_loss",
        update_freq=update_freq,
        validation_data=val,
        validation_steps=validation_steps,
        restore_best=False,  # keeps the EMA weights fit writes, to compare
        verbose=1,
    )
    return {
        "model": classifier,
        "aswa": aswa,
        "best": BestCheck(aswa),
        "last": LastWeights(),
        "train": train,
        "test": test,
        "epochs": epochs,
        "batch_size": batch_size,
        "update_freq": update_freq,
        "name": preset
        or f"{'pretrained' if pretrained else 'random'} BertBackbone ({backbone.name})",
        "dtype": dtype,
    }


METHODS = {
    "last": "last running model",
    "best": "best checkpoint",
    "ema": "optimizer EMA (use_ema=True)",
    "aswa": "ASWA ensemble",
}


def run(job: dict) -> dict:
    """Fits once, then scores each method's weights on the test split.

    None of the methods changes the training: the last running weights, the
    best checkpoint, the optimizer's EMA and ASWA's ensemble are all read off
    the one run, then written into the model in turn and evaluated.
    """
    model, aswa, batch_size = job["model"], job["aswa"], job["batch_size"]
    (x_train, y_train), (x_test, y_test) = job["train"], job["test"]
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        epochs=job["epochs"],
        batch_size=batch_size,
        callbacks=[aswa, job["best"], job["last"]],  # BestCheck after ASWA
        verbose=2,
    )
    seconds = time.perf_counter() - start
    weights = {
        "last": job["last"].weights,
        "best": job["best"].weights,
        # After fit the model holds the EMA of the trainable weights (and
        # the frozen ones), as Keras leaves it.
        "ema": model.get_weights(),
        "aswa": aswa.ensemble_weights(),
    }
    scores = {}
    for method, values in weights.items():
        model.set_weights(values)
        _, scores[method] = model.evaluate(
            x_test, y_test, batch_size=batch_size, verbose=0
        )
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    total = sum(int(np.prod(v.shape)) for v in model.weights)
    print(
        f"\nbackend: {keras.backend.backend()}, dtype policy: {job['dtype']}, "
        f"model: {job['name']}"
    )
    print(f"trainable parameters: {trainable:,} of {total:,}")
    print(f"fit: {job['epochs']} epochs in {seconds:.0f} s")
    print(f"ASWA decisions: {len(aswa.history)}, every {job['update_freq']} batches")
    print(f"final ensemble size {aswa.ensemble_size}")
    print(f"best checkpoint: the running model at step {job['best'].step}")
    print(f"test accuracy ({len(y_test)} paragraphs, 6 novels, chance 1/6):")
    for method, label in METHODS.items():
        print(f"  {label + ':':30s} {scores[method]:.4f}")
    return {**job, "scores": scores, "weights": weights, "fit_seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument(
        "--preset", help="a keras-hub preset (name or folder) to fine-tune"
    )
    parser.add_argument(
        "--backbone",
        type=Path,
        default=BACKBONE,
        help="without --preset: the folder of a backbone pretrain_backbone.py saved",
    )
    parser.add_argument(
        "--random-backbone",
        action="store_true",
        help="the backbone's architecture with random weights, for comparison",
    )
    parser.add_argument("--epochs", type=int, default=6)
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
    parser.add_argument("--learning-rate", type=float, default=1e-2)
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
        args.backbone,
        not args.random_backbone,
    )
    run(prepared)
