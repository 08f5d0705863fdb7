"""The cost benchmark's workloads and what it compares; no Keras here."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("tensorflow", "jax", "torch")
VARIANTS = ("plain", "eval", "aswa", "naive")
RSS_VARIANTS = ("plain", "aswa", "naive")
RSS_EPOCHS = 3  # epoch 0 starts the average; 1 and 2 score a provisional one
MIB = 2**20


@dataclass(frozen=True)
class Config:
    """One workload and how often to measure it."""

    hidden: tuple[int, ...] = (2048, 2048)
    n_train: int = 2048
    n_val: int = 512
    batch_size: int = 128
    epochs: int = 5
    reps: int = 5  # interleaved repetitions of each variant
    bookkeeping_reps: int = 21
    data: str = "auto"  # "auto" (Fashion-MNIST if installed), "fashion", "random"
    seed: int = 0
    smoke: bool = False
    # torch intra-op threads (None: torch's default). On a loaded machine
    # torch's thread pool can stall tiny steps 50-fold, so smoke uses one.
    torch_threads: int | None = None


REFERENCE = Config()
SMOKE = Config(
    hidden=(64, 64),
    n_train=256,
    n_val=64,
    batch_size=64,
    epochs=3,
    reps=2,
    bookkeeping_reps=5,
    data="random",
    smoke=True,
    torch_threads=1,
)


# Two stacks of Dense layers of (about) the same 3.1M float32 parameters: 3
# layers 1024 wide (6 variables) and 150 layers 144 wide (300 variables).
STACKS = {"few": (3, 1024), "many": (150, 144)}
# One decision's bookkeeping: a hard update, a soft one, a rejection.
DECISIONS = ("restart", "soft", "reject")
