"""The quality benchmark's grid: methods, data sets and how each is trained.

No Keras here: the report code reads configurations back from the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

METHODS = ("last", "early_stopping", "swa", "ema", "aswa")
METHOD_LABELS = {
    "last": "last running model",
    "early_stopping": "EarlyStopping (best val epoch)",
    "swa": "SWA (from 50 %)",
    "ema": "optimizer EMA (use_ema=True)",
    "aswa": "ASWA",
    "best_step": "best step-level check",
    "ema_tuned": "EMA, momentum chosen on validation",
}
# Step-level ASWA (`update_freq=N`): a Fashion-MNIST epoch is 422 batches of
# 128, so N = 50 / 100 / 200 decide ~8 / 4 / 2 times an epoch. Each check
# scores the running and the provisional model on the first 20 batches of 32
# (640 of the 6000 validation images), on val_loss: at 640 images accuracy
# moves in steps of 1/640 and ties (which never win) are frequent, while the
# loss is continuous. "auto": `update_freq="auto"`, which chooses N and K
# (`validation_steps`) itself, from the first batches' timings.
STEP_FREQS = (50, 100, 200, "auto")
STEP_VALIDATION_STEPS = 20
STEP_MONITOR = "val_loss"
# Smoke: 4 batches an epoch, 128 validation images.
SMOKE_STEP_FREQS = (2, 5, "auto")
SMOKE_VALIDATION_STEPS = 2


# Opt-in variants of step-level ASWA with update_freq="auto" (the issue's
# "moonshot"), read off the same run as the paper's rule beside them:
# - "auto-recent": an ensemble that forgets: a new member weighs at least
#   1/RECENT_HORIZON (the provisional average E + (θ - E) / min(n + 1, H)),
#   an exponential window over the accepted snapshots, as EMA's over steps;
# - "auto-accuracy": the checks decide on val_accuracy, the compiled metric
#   users report, rather than the loss.
STEP_VARIANTS = {
    "auto-recent": "step ASWA, 'auto', a new member weighs at least 1/8",
    "auto-accuracy": "step ASWA, 'auto', deciding on val_accuracy",
}
RECENT_HORIZON = 8


def is_auto(n: int | str) -> bool:
    """Whether step frequency `n` is "auto" or one of its `STEP_VARIANTS`."""
    return str(n).startswith("auto")


def step_method(n: int | str) -> str:
    """The method name of step-level ASWA every `n` batches (or "auto", or
    one of `STEP_VARIANTS`)."""
    return f"aswa_{n}" if is_auto(n) else f"aswa_n{n}"


def parse_step_freq(text: str) -> int | str:
    """ "50" -> 50; "auto" and the `STEP_VARIANTS` stay names."""
    if text == "auto" or text in STEP_VARIANTS:
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"step frequency {text!r}: an int, 'auto' or one of {list(STEP_VARIANTS)}"
        ) from None


def method_label(method: str) -> str:
    """How a method is named in the reports."""
    if method in METHOD_LABELS:
        return METHOD_LABELS[method]
    if method == "aswa_auto":
        return "step ASWA, update_freq='auto'"
    if method.removeprefix("aswa_") in STEP_VARIANTS:
        return STEP_VARIANTS[method.removeprefix("aswa_")]
    return f"step ASWA, every {method.removeprefix('aswa_n')} batches"


# The regimes study: baselines beyond METHODS, read off the same run.
# best_step: the best running model among step-level ASWA's checks (the same
# steps, validation batches and monitor as the step ASWA it follows);
# ema_tuned: an EMA of the trainable weights at the momentum, of EMA_MOMENTA,
# that scores best on validation (tracked beside the optimizer's own).
EXTRA_BASELINES = ("best_step", "ema_tuned")
EMA_MOMENTA = (0.9, 0.99, 0.999)
REGIMES = ("finetune", "small", "rich", "text", "short")
# Fine-tuning: a CNN pretrained on Fashion-MNIST classes 0-4, fine-tuned on
# FINETUNE_TRAIN images of classes 5-9; LoRA of rank LORA_RANK on the
# backbone's Dense layer (Keras has no LoRA for convolutions).
FINETUNE_VARIANTS = ("full", "frozen", "lora")
# Adam learning rates per variant, from a sweep (`lr_sweep`, seed 1, see
# docs/benchmarks.md): at the lower one a run is still improving at its last
# epoch (best validation loss there), at the higher one it has converged
# (best validation loss well before the end, accuracy flat).
FINETUNE_LRS = {"full": (1e-4, 1e-3), "frozen": (3e-3, 3e-2), "lora": (3e-4, 3e-3)}
FINETUNE_EPOCHS = 20
LORA_RANK = 4
FINETUNE_TRAIN, FINETUNE_VAL = 1000, 500  # images, 5 classes, balanced
SMALL_TRAIN, SMALL_VAL = 2000, 500  # images, 10 classes, balanced
# Short fine-tuning: the fine-tuning regime's pretrained CNN, fully fine-tuned
# for SHORT_EPOCHS epochs of 32 batches (96 optimizer steps), step-level ASWA
# every SHORT_STEP_FREQS batches on all validation batches and "auto".
SHORT_EPOCHS, SHORT_LEARNING_RATE = 3, 1e-3
SHORT_STEP_FREQS = (4, 8, "auto")
SMALL_EPOCHS = 40
PRETRAIN_EPOCHS = 2
# Text: examples/finetune_lora.py's task at its own settings (`prepare`'s
# defaults; a test holds them to it): its keras-hub BERT classifier on the
# small backbone pretrained in examples/data/austen_bert, mixed_bfloat16,
# LoRA of rank LORA_RANK, AdamW, on the example's fixed split of paragraphs
# of Jane Austen's six novels. Smoke: the example's slices, batch and sequence
# length, but 2 epochs, so that each ASWA decides after its first snapshot
# (in 1 epoch of 7 batches "auto", which times 5 first, checks once).
TEXT_DATASET = "austen"
TEXT_EPOCHS, TEXT_BATCH_SIZE, TEXT_LEARNING_RATE = 6, 32, 1e-2
TEXT_SEQUENCE_LENGTH, SMOKE_TEXT_SEQUENCE_LENGTH = 128, 32
SMOKE_TEXT = {"epochs": 2, "batch_size": 16}

IMAGE_DATASETS = ("fashion_mnist", "digits")
KG_DATASETS = ("umls", "nations")
DATASETS = IMAGE_DATASETS + KG_DATASETS
KG_METRICS = ("mrr", "hits@1", "hits@3", "hits@10")


@dataclass(frozen=True)
class Config:
    """One data set / model pair and how it is trained."""

    dataset: str
    model: str
    epochs: int
    batch_size: int
    learning_rate: float
    monitor: str  # what ASWA and early stopping compare
    mode: str
    # Step-level ASWA read off the same run: every N training batches, on
    # the first `validation_steps` batches (of 32) of the validation split.
    step_freqs: tuple[int | str, ...] = ()
    validation_steps: int | None = None
    variant: str = ""  # e.g. "2ep": a second configuration of one model
    # The regimes study (`--regime`); "" in the classic grid and --steps.
    regime: str = ""
    # Baselines read off the same run beyond METHODS (`EXTRA_BASELINES`).
    baselines: tuple[str, ...] = ()
    # Fine-tuning: "full", "frozen" (only the head trains) or "lora".
    finetune: str = ""
    # What step-level ASWA (and `best_step`) decide on; "": STEP_MONITOR.
    step_monitor: str = ""

    @property
    def key(self) -> str:
        suffix = f"-{self.variant}" if self.variant else ""
        return f"{self.dataset}/{self.model}{suffix}"

    @property
    def methods(self) -> tuple[str, ...]:
        """What is read off this configuration's runs."""
        return (
            METHODS
            + tuple(self.baselines)
            + tuple(step_method(n) for n in self.step_freqs)
        )

    @property
    def aswa_variants(self) -> tuple[str, ...]:
        """Epoch-level ASWA and each step-level one."""
        return ("aswa", *(step_method(n) for n in self.step_freqs))

    @property
    def baseline_methods(self) -> tuple[str, ...]:
        """Every method that is not an ASWA."""
        return tuple(m for m in self.methods if m not in self.aswa_variants)

    @property
    def step_watch(self) -> tuple[str, str]:
        """Step-level ASWA's monitor and mode."""
        monitor = self.step_monitor or STEP_MONITOR
        return monitor, "min" if monitor.endswith("loss") else "max"

    @property
    def optimizer(self) -> str:
        """The optimizer's class: Adam, or AdamW where the text regime's
        example trains with it."""
        return "AdamW" if self.dataset == TEXT_DATASET else "Adam"

    @property
    def is_kg(self) -> bool:
        return self.dataset in KG_DATASETS

    @property
    def metric(self) -> str:
        """The headline test metric."""
        return "mrr" if self.is_kg else "accuracy"


def configs(
    datasets, smoke: bool, steps: bool = False, step_freqs=None, only=None
) -> list[Config]:
    """The benchmark grid, sized for a ~1 h run on 2 shared CPU cores.

    Epoch counts: a Fashion-MNIST CNN epoch costs ~14 s here (TensorFlow),
    so 15 epochs; the MLPs and graphs are cheap. The graphs use the
    reference (dicee) setting. Smoke: 3 epochs, so that SWA averages 2.
    Fashion-MNIST also reads off step-level ASWA (`STEP_FREQS`); `steps`
    (the step-level study) adds 2-epoch runs of both its models, the
    fine-tuning regime.
    """
    freqs = tuple(step_freqs or (SMOKE_STEP_FREQS if smoke else STEP_FREQS))
    vsteps = SMOKE_VALIDATION_STEPS if smoke else STEP_VALIDATION_STEPS
    step = {"step_freqs": freqs, "validation_steps": vsteps}
    grid = []
    for ds in datasets:
        if ds == "fashion_mnist":
            grid += [
                Config(ds, "mlp", 20, 128, 1e-3, "val_accuracy", "max", **step),
                Config(ds, "cnn", 15, 128, 1e-3, "val_accuracy", "max", **step),
            ]
            if steps:  # the cheap 2-epoch runs first
                grid[-2:-2] = [
                    Config(
                        ds,
                        m,
                        2,
                        128,
                        1e-3,
                        "val_accuracy",
                        "max",
                        **step,
                        variant="2ep",
                    )
                    for m in ("mlp", "cnn")
                ]
        elif ds == "digits":
            grid.append(Config(ds, "mlp", 100, 32, 1e-3, "val_accuracy", "max"))
        elif ds in KG_DATASETS:
            grid += [
                Config(ds, m, 200, 1024, 0.1, "val_mrr", "max")
                for m in ("distmult", "complex")
            ]
        else:
            raise ValueError(f"unknown data set {ds!r}; have {DATASETS}")
    if smoke:
        grid = [replace(c, epochs=min(c.epochs, 3)) for c in grid]
    if only:  # these configuration keys, in this order
        by_key = {c.key: c for c in grid}
        grid = [by_key[k] for k in only]
    return grid


def regime_configs(regimes, smoke: bool, only=None, step_freqs=None) -> list[Config]:
    """The regimes study: fine-tuning, small data, the data-rich grid and
    text (LoRA on a pretrained BERT).

    Every configuration reads off the extra baselines (`EXTRA_BASELINES`) and
    step-level ASWA with `update_freq="auto"` (the data-rich ones also the
    fixed N of `STEP_FREQS`, as in the classic grid). Smoke: one learning rate
    per fine-tuning variant, 3 epochs, the data-rich MLP only; text as
    `SMOKE_TEXT`. `step_freqs` replaces every configuration's step-level
    ASWAs (e.g. to add `STEP_VARIANTS`).
    """
    extra = {"baselines": EXTRA_BASELINES}
    grid = []
    for regime in regimes:
        if regime == "finetune":
            for i, ft in enumerate(FINETUNE_VARIANTS):
                for j, lr in enumerate(FINETUNE_LRS[ft]):
                    if smoke and (i + j) % 2:
                        continue
                    grid.append(
                        Config(
                            "fmnist_finetune",
                            "cnn",
                            FINETUNE_EPOCHS,
                            32,
                            lr,
                            "val_accuracy",
                            "max",
                            step_freqs=("auto",),
                            variant=f"{ft}-lr{lr:g}",
                            regime=regime,
                            finetune=ft,
                            **extra,
                        )
                    )
        elif regime == "small":
            grid += [
                Config(
                    "fmnist_small",
                    "mlp",
                    SMALL_EPOCHS,
                    32,
                    1e-3,
                    monitor,
                    "min" if monitor == "val_loss" else "max",
                    step_freqs=("auto",),
                    variant=monitor,
                    regime=regime,
                    step_monitor=monitor,
                    **extra,
                )
                for monitor in ("val_loss", "val_accuracy")
            ]
        elif regime == "rich":
            rich = configs(["fashion_mnist"], smoke)
            grid += [
                replace(c, regime=regime, **extra)
                for c in (rich[:1] if smoke else rich)
            ]
        elif regime == "text":
            text = Config(
                TEXT_DATASET,
                "bert",
                TEXT_EPOCHS,
                TEXT_BATCH_SIZE,
                TEXT_LEARNING_RATE,
                "val_accuracy",
                "max",
                step_freqs=("auto",),
                variant="lora",
                regime=regime,
                **extra,
            )
            grid.append(replace(text, **SMOKE_TEXT) if smoke else text)
        elif regime == "short":
            grid.append(
                Config(
                    "fmnist_finetune",
                    "cnn",
                    SHORT_EPOCHS,
                    32,
                    SHORT_LEARNING_RATE,
                    "val_loss",
                    "min",
                    step_freqs=SHORT_STEP_FREQS,
                    variant=f"short-full-lr{SHORT_LEARNING_RATE:g}",
                    regime=regime,
                    finetune="full",
                    **extra,
                )
            )
        else:
            raise ValueError(f"unknown regime {regime!r}; have {REGIMES}")
    if smoke:
        grid = [replace(c, epochs=min(c.epochs, 3)) for c in grid]
    if step_freqs:
        grid = [replace(c, step_freqs=tuple(step_freqs)) for c in grid]
    if only:
        by_key = {c.key: c for c in grid}
        grid = [by_key[k] for k in only]
    return grid


def metric_names(cfg: Config) -> tuple[str, ...]:
    """What is recorded per method: the test metrics and the validation score
    (and, in the regimes, the validation loss)."""
    if cfg.is_kg:
        return KG_METRICS + ("val",)
    return ("accuracy", "val", "val_loss") if cfg.regime else ("accuracy", "val")


def parse_seeds(text: str) -> list[int]:
    """ "1-5" or "1,2,7" or "1-3,9" -> list of ints."""
    seeds = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            seeds += list(range(int(lo), int(hi) + 1))
        elif part:
            seeds.append(int(part))
    return seeds
