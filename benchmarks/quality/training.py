"""Training for the quality benchmark: data, models, fit, scores, callbacks.

Everything here needs Keras (the backend is fixed at its first import).
"""

from __future__ import annotations

import functools
import runpy
import time
from pathlib import Path

import keras
import numpy as np

from benchmarks import kg as kglib
from benchmarks.datasets import (
    load_digits,
    load_fashion_mnist,
    load_kg,
    split_validation,
)
from benchmarks.machine import REPO
from benchmarks.quality.config import (
    EMA_MOMENTA,
    KG_DATASETS,
    LORA_RANK,
    PRETRAIN_EPOCHS,
    RECENT_HORIZON,
    SMOKE_TEXT_SEQUENCE_LENGTH,
    TEXT_DATASET,
    TEXT_SEQUENCE_LENGTH,
    Config,
    is_auto,
)
from benchmarks.quality.regimes import FINETUNE_CLASSES, regime_arrays
from keras_aswa import ASWA

REGIME_DATASETS = ("fmnist_finetune", "fmnist_small")


def load_data(dataset: str, smoke: bool, cache_dir: Path | None = None) -> dict:
    """Train/validation/test data; validation is carved from training data.

    Splits are fixed (seed 0), so seeds vary only initialisation and batch
    order, and every method of a seed sees exactly the same data. The
    fine-tuning regime's data also holds the pretrained backbone's weights
    (`pretrained_backbone`, cached in `cache_dir`); the text regime's is
    `text_data`.
    """
    if dataset == TEXT_DATASET:
        return text_data(smoke)
    if dataset in REGIME_DATASETS:
        data = regime_arrays(dataset, smoke, load_fashion_mnist())
        if dataset == "fmnist_finetune":
            data["pretrained"] = pretrained_backbone(
                data, smoke, cache_dir or Path("benchmarks/out/pretrained")
            )
        return data
    if dataset in KG_DATASETS:
        graph = load_kg(dataset)
        x, y = kglib.kvsall_data(graph)
        # The graphs' own validation split (held out from training triples).
        return {
            "kg": graph,
            "x": x,
            "y": y,
            "valid_score": kglib.make_score_fn(graph, "valid"),
            "test_queries": kglib.RankingQueries(graph, "test"),
        }
    if dataset == "fashion_mnist":
        (x, y), (x_test, y_test) = load_fashion_mnist()
        x = (x[..., None] / 255.0).astype("float32")
        x_test = (x_test[..., None] / 255.0).astype("float32")
        (x_train, y_train), (x_val, y_val) = split_validation(
            x, y, 0.1, seed=0, stratify=True
        )
    elif dataset == "digits":
        x, y = load_digits(images=True)
        x = x[..., None]
        # digits has no test split: hold out 20 %, then 10 % of the rest.
        (x, y), (x_test, y_test) = split_validation(x, y, 0.2, seed=0, stratify=True)
        (x_train, y_train), (x_val, y_val) = split_validation(
            x, y, 0.1, seed=0, stratify=True
        )
    else:
        raise ValueError(f"unknown data set {dataset!r}")
    if smoke:
        x_train, y_train = x_train[:512], y_train[:512]
        x_val, y_val = x_val[:128], y_val[:128]
        x_test, y_test = x_test[:256], y_test[:256]
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_val": x_val,
        "y_val": y_val,
        "x_test": x_test,
        "y_test": y_test,
    }


@functools.cache
def finetune_lora_example() -> dict:
    """examples/finetune_lora.py's globals: its data, tokenizer and model
    functions, reused as they are (a script, not a module: run once)."""
    return runpy.run_path(str(REPO / "examples" / "finetune_lora.py"))


def text_data(smoke: bool) -> dict:
    """The example's fixed split of the paragraphs (smoke: its slices of it),
    as the token ids its classifier takes (`TEXT_SEQUENCE_LENGTH`, smoke
    `SMOKE_TEXT_SEQUENCE_LENGTH`), and the number of novels."""
    example = finetune_lora_example()
    vocabulary = example["load_vocabulary"]()
    length = SMOKE_TEXT_SEQUENCE_LENGTH if smoke else TEXT_SEQUENCE_LENGTH
    data = {"classes": len(example["load_paragraphs"]()[2])}
    for name, (texts, labels) in zip(
        ("train", "val", "test"), example["austen_split"](smoke), strict=True
    ):
        data[f"x_{name}"] = example["tokenize"](texts, vocabulary, length)
        data[f"y_{name}"] = labels
    return data


def data_sizes(cfg: Config, data: dict) -> dict:
    """The size of each split, as the report shows it."""
    if cfg.is_kg:
        g = data["kg"]
        return {"train": len(g.train), "valid": len(g.valid), "test": len(g.test)}
    return {s: len(data[f"y_{s}"]) for s in ("train", "val", "test")}


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------


def cnn_body() -> list:
    """The CNN's layers up to its head."""
    layers = keras.layers
    # Small on purpose: one epoch of 54k images must stay ~15 s on 2 CPU
    # cores. BatchNorm makes its statistics part of the average.
    body = []
    for width in (16, 32):
        body += [
            layers.Conv2D(width, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(),
        ]
    return body + [layers.Flatten(), layers.Dense(64, activation="relu")]


def pretrained_backbone(data: dict, smoke: bool, cache_dir: Path) -> list:
    """The CNN body's weights after pretraining on classes 0-4, per layer.

    Pretrained once per backend (seed 0, Adam 1e-3, batch 128,
    `PRETRAIN_EPOCHS` epochs on every training image of classes 0-4; smoke:
    512 images, 1 epoch) and cached in `cache_dir` as .npz, so that every
    seed and configuration starts from the same backbone.
    """
    tag = "smoke" if smoke else f"{PRETRAIN_EPOCHS}ep"
    path = cache_dir / f"cnn-classes0-4-{keras.backend.backend()}-{tag}.npz"
    if not path.exists():
        keras.utils.set_random_seed(0)
        body = cnn_body()
        model = keras.Sequential(
            [keras.Input(data["x_pretrain"].shape[1:]), *body, keras.layers.Dense(5)]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(
            data["x_pretrain"],
            data["y_pretrain"],
            batch_size=128,
            epochs=1 if smoke else PRETRAIN_EPOCHS,
            verbose=0,
        )
        arrays = {
            f"{i}_{j}": w
            for i, layer in enumerate(body)
            for j, w in enumerate(layer.get_weights())
        }
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    with np.load(path) as z:
        per_layer = {}
        for key in z.files:
            i, j = map(int, key.split("_"))
            per_layer.setdefault(i, {})[j] = z[key]
    n = len(cnn_body())
    return [
        [per_layer.get(i, {})[j] for j in sorted(per_layer.get(i, {}))]
        for i in range(n)
    ]


def finetune_model(cfg: Config, data: dict) -> keras.Model:
    """The pretrained CNN body under a new 5-way head, set up for `cfg.finetune`:
    "full" trains everything; "frozen" only the head; "lora" the head and a
    rank-`LORA_RANK` LoRA on the body's Dense layer, its convolutions (and
    BatchNorm) frozen: Keras has LoRA for Dense and EinsumDense only."""
    body = cnn_body()
    model = keras.Sequential(
        [
            keras.Input(data["x_train"].shape[1:]),
            *body,
            keras.layers.Dense(len(FINETUNE_CLASSES), name="head"),
        ],
        name=f"cnn_{cfg.finetune}",
    )
    for layer, weights in zip(body, data["pretrained"], strict=True):
        layer.set_weights(weights)
    for layer in body:
        if cfg.finetune == "frozen":
            layer.trainable = False
        elif cfg.finetune == "lora":
            if isinstance(layer, keras.layers.Dense):
                layer.enable_lora(LORA_RANK)
            else:
                layer.trainable = False
        elif cfg.finetune != "full":
            raise ValueError(f"unknown fine-tuning variant {cfg.finetune!r}")
    return model


def text_model(data: dict) -> keras.Model:
    """The example's classifier: its pretrained BERT backbone (mixed_bfloat16)
    under a new head, LoRA of rank `LORA_RANK` on the backbone, which
    `enable_lora` freezes (the head, and the attention's query and value
    biases, train in full), as the example's `prepare` sets it up."""
    model = finetune_lora_example()["build_classifier"](data["classes"])
    model.backbone.enable_lora(rank=LORA_RANK)
    return model


def build_model(cfg: Config, data: dict, seed: int, ema: bool) -> keras.Model:
    """A compiled model; the same seed gives the same initial weights."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    # Classifiers: logits of every class; the graphs' models score triples.
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = ["accuracy"]
    if cfg.dataset == "fmnist_finetune":
        model = finetune_model(cfg, data)
    elif cfg.dataset == TEXT_DATASET:
        model = text_model(data)
    elif cfg.is_kg:
        model = kglib.build_kge_model(
            cfg.model, data["kg"], embedding_dim=32, seed=seed, compile=False
        )
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        metrics = []
    else:
        shape = data["x_train"].shape[1:]
        if cfg.model == "mlp":
            body = [
                layers.Flatten(),
                layers.Dense(256, activation="relu"),
                layers.Dense(128, activation="relu"),
            ]
        elif cfg.model == "cnn":
            body = cnn_body()
        else:
            raise ValueError(f"unknown image model {cfg.model!r}")
        model = keras.Sequential(
            [keras.Input(shape), *body, layers.Dense(10)], name=cfg.model
        )
    if cfg.optimizer == "AdamW":  # the text example's, Keras' defaults
        optimizer = keras.optimizers.AdamW(cfg.learning_rate, use_ema=ema)
    else:  # epsilon 1e-8 as torch's Adam (the reference library's optimizer)
        optimizer = keras.optimizers.Adam(cfg.learning_rate, epsilon=1e-8, use_ema=ema)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


def fit(cfg: Config, data: dict, model: keras.Model, callbacks: list) -> float:
    """Trains; returns the wall time in seconds."""
    start = time.perf_counter()
    if cfg.is_kg:
        model.fit(
            data["x"],
            data["y"],
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            callbacks=callbacks,
            verbose=0,
        )
    else:
        # Keras' own fit, which shuffles the batches every epoch: keras-hub's
        # (the text regime's model) batches arrays into a dataset it never
        # shuffles, so seeds would not vary the batch order (and the model
        # has no preprocessor for it to apply). The same fit for the rest.
        keras.Model.fit(
            model,
            data["x_train"],
            data["y_train"],
            validation_data=(data["x_val"], data["y_val"]),
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            callbacks=callbacks,
            verbose=0,
        )
    return time.perf_counter() - start


def evaluate(cfg: Config, data: dict, model: keras.Model) -> dict:
    """Test metrics, plus the validation score the methods select on."""
    if cfg.is_kg:
        test = kglib.link_prediction_metrics(model, queries=data["test_queries"])
        return {**test, "val": data["valid_score"](model)}
    # Keras' own evaluate, as `fit` trains: keras-hub's would only batch the
    # arrays into a dataset first.
    test, val = (
        keras.Model.evaluate(model, x, y, batch_size=1024, verbose=0, return_dict=True)
        for x, y in ((data["x_test"], data["y_test"]), (data["x_val"], data["y_val"]))
    )
    out = {"accuracy": float(test["accuracy"]), "val": float(val["accuracy"])}
    if cfg.regime:
        out["val_loss"] = float(val["loss"])
    return out


def validation_score(cfg: Config, metrics: dict) -> tuple[float, bool]:
    """The validation score `cfg.monitor` selects on, from `evaluate`'s
    metrics, and whether higher is better."""
    if cfg.monitor == "val_loss":
        return metrics["val_loss"], False
    return metrics["val"], True


# --------------------------------------------------------------------------
# callbacks that read methods off one run
# --------------------------------------------------------------------------


class LastWeights(keras.callbacks.Callback):
    """Keeps the running weights of the last epoch.

    Captured at every epoch end because `fit` writes the EMA weights into
    the model (`optimizer.finalize_variable_values`) before `on_train_end`.
    """

    def on_epoch_end(self, epoch, logs=None):
        self.weights = self.model.get_weights()


class BestSnapshot(keras.callbacks.EarlyStopping):
    """`EarlyStopping(restore_best_weights=True)` with unlimited patience.

    Keras' own rule picks the best epoch (first strictly best); the
    snapshot is kept in `best_weights` instead of written at the end, so
    that it can be read off beside the other methods.
    """

    def __init__(self, monitor: str, mode: str):
        super().__init__(
            monitor=monitor, mode=mode, patience=10**9, restore_best_weights=True
        )

    def on_train_end(self, logs=None):
        pass


class ValidationMRR(keras.callbacks.Callback):
    """Logs `val_mrr` for callbacks after it (for a real EarlyStopping run)."""

    def __init__(self, score_fn):
        super().__init__()
        self.score_fn = score_fn

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["val_mrr"] = self.score_fn(self.model)


def make_aswa(cfg: Config, data: dict, restore: bool) -> ASWA:
    """Epoch-level ASWA, on the configuration's monitor (or validation MRR)."""
    if cfg.is_kg:
        # Link prediction: decisions on validation filtered MRR.
        return ASWA(
            monitor="val_mrr",
            mode="max",
            score_fn=data["valid_score"],
            restore_best=restore,
        )
    return ASWA(monitor=cfg.monitor, mode=cfg.mode, restore_best=restore)


class TimedASWA(ASWA):
    """ASWA that adds up the wall time of its decisions (`_act`: scoring,
    bookkeeping, the step counter's check), for the per-check cost."""

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.check_seconds = []

    def _act(self, epoch, step, logs):
        start = time.perf_counter()
        super()._act(epoch, step, logs)
        self.check_seconds.append(time.perf_counter() - start)


class _Forgetting:
    """A `Store` whose new member weighs at least `1 / horizon`: the divisor
    (`1 / w`) it is given is capped at `horizon` (`E + (θ - E) / min(n + 1,
    H)`). The "auto-recent" variant, built on the public averaging layer."""

    def __init__(self, store, horizon: int):
        self._store, self._cap = store, float(horizon)

    def __getattr__(self, name):
        return getattr(self._store, name)

    def update(self, divisor):
        self._store.update(min(divisor, self._cap))

    def show_provisional(self, divisor):
        self._store.show_provisional(min(divisor, self._cap))

    def adopt(self, divisor):
        self._store.adopt(min(divisor, self._cap))


class RecentASWA(TimedASWA):
    """Step-level ASWA whose ensemble forgets (`_Forgetting`)."""

    def _engine(self):
        average = super()._engine()
        if not isinstance(average.store, _Forgetting):
            average.store = _Forgetting(average.store, RECENT_HORIZON)
        return average


def make_step_aswa(cfg: Config, data: dict, n: int | str, restore: bool) -> ASWA:
    """ASWA every `n` training batches on the validation split's first
    `cfg.validation_steps` batches (of 32); with `n="auto"`, N and the
    batches as `update_freq="auto"` chooses them; `n` one of
    `STEP_VARIANTS`: that variant of "auto"."""
    monitor, mode = cfg.step_watch
    if n == "auto-accuracy":
        monitor, mode = "val_accuracy", "max"
    auto = is_auto(n)
    return (RecentASWA if n == "auto-recent" else TimedASWA)(
        monitor=monitor,
        mode=mode,
        validation_data=(data["x_val"], data["y_val"]),
        validation_steps=None if auto else cfg.validation_steps,
        update_freq="auto" if auto else n,
        restore_best=restore,
    )


def eval_seconds(cb: ASWA, model, repeats: int = 5) -> float:
    """Median wall time of one evaluation as step-level `cb`'s checks run it
    (its K batches; after one warm-up call)."""
    cb._scorer.current(model)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        cb._scorer.current(model)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class BestStepSnapshot(keras.callbacks.Callback):
    """The best running model among a step-level ASWA's checks.

    Early stopping at step granularity, as a user would write it: at every
    check of `source` (placed before this callback), the running model's
    score on the check's validation batches, which `source` has just
    computed (`history[-1]["running"]`), is compared with the best so far
    (strictly better, as Keras' rule: the first of equal scores is kept);
    where better, the running weights are kept. So it checks at the same
    steps, on the same batches and monitor as step-level ASWA, at no extra
    evaluation. Non-finite scores never win.
    """

    def __init__(self, source: ASWA, mode: str):
        super().__init__()
        self.source = source
        self.mode = mode

    def on_train_begin(self, logs=None):
        self.best = None
        self.best_weights = None
        self.best_check = None  # index into source.history
        self._seen = 0

    def _better(self, score: float) -> bool:
        if score is None or not np.isfinite(score):
            return False
        if self.best is None:
            return True
        return score < self.best if self.mode == "min" else score > self.best

    def _poll(self):
        history = self.source.history
        while self._seen < len(history):
            record = history[self._seen]
            if self._better(record["running"]):
                self.best = float(record["running"])
                self.best_weights = self.model.get_weights()
                self.best_check = self._seen
            self._seen += 1

    def on_train_batch_end(self, batch, logs=None):
        self._poll()

    def on_epoch_end(self, epoch, logs=None):
        self._poll()


class MultiEMA(keras.callbacks.Callback):
    """Exponential moving averages of the trainable weights at several
    momenta, in one run.

    After every optimizer step (`on_train_batch_end`; `fit` without
    `steps_per_execution` or gradient accumulation) each shadow becomes
    ``m * shadow + (1 - m) * w`` in float32, as Keras' optimizer updates its
    own (`use_ema=True`); on the first step it is ``w``, as Keras' is.
    """

    def __init__(self, momenta=EMA_MOMENTA):
        super().__init__()
        self.momenta = tuple(momenta)

    def on_train_begin(self, logs=None):
        self.variables = list(self.model.trainable_variables)
        self.shadows = None

    def on_train_batch_end(self, batch, logs=None):
        _ = self.model  # on JAX, reading it writes fit's state into the variables
        w = [keras.ops.convert_to_numpy(v.value) for v in self.variables]
        if self.shadows is None:
            self.shadows = {
                m: [np.array(x, copy=True) for x in w] for m in self.momenta
            }
            return
        for m, shadow in self.shadows.items():
            keep = np.float32(m)
            take = np.float32(1) - keep
            for s, x in zip(shadow, w, strict=True):
                s *= keep
                s += take * x

    def weights_for(self, momentum: float, base: list) -> list:
        """`base` (one array per `model.weights` entry) with the trainable
        variables replaced by the shadow at `momentum`, as the optimizer's
        EMA leaves a model after `fit`."""
        out = list(base)
        where = {id(v): i for i, v in enumerate(self.model.weights)}
        for v, s in zip(self.variables, self.shadows[momentum], strict=True):
            out[where[id(v)]] = s.astype(out[where[id(v)]].dtype, copy=True)
        return out
