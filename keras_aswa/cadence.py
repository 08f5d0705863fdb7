"""How often a step-level ASWA checks: the rule of `update_freq="auto"`.

A pure function of counts, so that the same script chooses the same `N`
(training batches between two checks) and `K` (validation batches a check
scores on) on an idle machine and on a loaded one. It counts work in
forward passes over samples: a check scores two weight sets (the running
model and the provisional ensemble) on `K` batches of `b` samples, `2 K b`
sample-forwards; a training step on `B` samples costs about three times its
forward pass (the backward pass about twice the forward), `3 B`. What the
machine then makes of that work, a fit's `timing` reports.

The rule:

1. **K**: every validation batch, at most 32 (`validation_steps` where the
   user gave it).
2. **N within the budget**: the fewest batches whose share of training
   covers a check, `N = ceil(check / (check_budget * step))`.
3. **A floor on checks**: at least `MIN_CHECKS` checks over the fit and two
   an epoch, where the fit's length is known: a 96-step fine-tune checked
   every 4 steps (24 checks) chose better ensembles than one checked once an
   epoch (6 checks). Where the floor sets a smaller `N` than the budget,
   `K` drops (down to 8 batches) until the checks fit in the budget again,
   or to 8 where they cannot: frequent checks on 8 batches chose better
   than rare ones on more. The checks may then exceed the budget; the
   choice says by how much.

The callback adds a check at the fit's last batch where `N` does not divide
the fit, so that the last weights are always a candidate.

Example:

```python
choose(total_steps=96, steps_per_epoch=16, validation_batches=20,
       batch_size=32, validation_batch_size=32, check_budget=0.1)
# Cadence(every=4, validation_steps=8, checks=24, share=1.33): the floor
# (96 // 24) sets N, K drops to 8, and the checks count 1.33x the training.
```
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# At least this many checks over a fit of known length.
MIN_CHECKS = 24
# At least this many checks an epoch.
CHECKS_PER_EPOCH = 2
# The fewest and most validation batches a check scores on, where it is a
# choice (on fewer than 8 batches of 32 a score moves with the batches more
# than with the weights).
MIN_BATCHES = 8
MAX_BATCHES = 32
# A forward pass's share of a training step's cost, sample for sample.
FORWARD_SHARE = 1 / 3


@dataclass(frozen=True)
class Cadence:
    """What `choose` chose.

    Attributes:
        every: `N`, the training batches between two checks.
        validation_steps: `K`, the validation batches a check scores on
            (None: all of them, their number unknown, or a `score_fn`).
        checks: How many checks the fit gets (its last batch included),
            None where its length is unknown.
        share: The checks' counted cost as a share of the training's
            (None with a `score_fn`, whose cost is not counted).
    """

    every: int
    validation_steps: int | None
    checks: int | None
    share: float | None


def choose(
    *,
    total_steps: int | None,
    steps_per_epoch: int | None,
    validation_batches: int | None,
    batch_size: int,
    validation_batch_size: int | None,
    check_budget: float,
    validation_steps: int | None = None,
    counted: bool = True,
) -> Cadence:
    """`N` and `K` for a fit, by the rule above.

    Args:
        total_steps: The fit's training batches (None where unknown).
        steps_per_epoch: Its batches an epoch (None where unknown).
        validation_batches: The validation batches there are (None where
            unknown).
        batch_size: Samples in a training batch.
        validation_batch_size: Samples in a validation batch (None: as
            many as in a training batch).
        check_budget: The share of training the checks may take.
        validation_steps: `K` where the user fixed it.
        counted: False where a check's cost cannot be counted (a
            `score_fn`): `N` is then the floor alone.

    Returns:
        A `Cadence`.
    """
    caps = [
        total_steps // MIN_CHECKS if total_steps else None,
        steps_per_epoch // CHECKS_PER_EPOCH if steps_per_epoch else None,
    ]
    cap = max(1, min(c for c in caps if c is not None)) if any(caps) else None
    samples = validation_batch_size or batch_size

    def check(k):  # a check's cost, in training steps
        return FORWARD_SHARE * 2 * k * samples / batch_size

    def every_for(k):
        return max(1, math.ceil(check(k) / check_budget))

    k = validation_steps
    if counted and k is None and validation_batches is not None:
        k = min(validation_batches, MAX_BATCHES)
        fewest = min(validation_batches, MIN_BATCHES)
        if cap is not None and every_for(k) > cap:
            # The largest K whose checks every `cap` batches fit the budget.
            k = max(fewest, math.floor(cap * check_budget / check(1)))
    if not counted:
        every, share = cap or 1, None
    else:
        counted_k = k if k is not None else MAX_BATCHES
        every = every_for(counted_k)
        if cap is not None:
            every = min(every, cap)
        share = check(counted_k) / every
    checks = None
    if total_steps:
        checks = math.ceil(total_steps / every)
    return Cadence(every, k, checks, share)
