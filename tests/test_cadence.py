"""The rule of update_freq="auto" (keras_aswa.cadence), by tables."""

import math

import pytest

from keras_aswa.cadence import Cadence, choose


def cost(k, samples=32, batch_size=32):
    """A check's counted cost in training steps: 2 K b forward samples
    against 3 B per step."""
    return 2 * k * samples / (3 * batch_size)


# (total, per epoch, validation batches, B, b, budget) -> (N, K, checks)
TABLE = [
    # A 96-step fine-tune: the floor (96 // 24 = 4) sets N; K drops to 8.
    ((96, 16, 20, 32, 32, 0.1), (4, 8, 24)),
    # 16 batches, fewer than the floor's 24 checks: every batch.
    ((16, 8, 8, 32, 32, 0.1), (1, 8, 16)),
    # A long fit: the budget sets N = ceil(cost(32) / 0.1) = 214, on 32.
    ((10_000, 500, 100, 32, 32, 0.1), (214, 32, 47)),
    # Longer still, bigger training batches: cheaper checks.
    ((10_000, 500, 100, 128, 32, 0.1), (54, 32, 186)),
    # The floor (41) binds at K = 32; a generous budget affords K = 24,
    # whose checks it then covers every 40.
    ((1_000, 100, 100, 32, 32, 0.4), (40, 24, 25)),
    # Fewer validation batches than 8: all of them.
    ((96, 16, 3, 32, 32, 0.1), (4, 3, 24)),
    # A fit whose length is unknown: the budget alone, on all batches (<= 32).
    ((None, None, 20, 32, 32, 0.1), (134, 20, None)),
]


def chosen_by_the_rule(given):
    total, per_epoch, there, batch_size, samples, budget = given
    return choose(
        total_steps=total,
        steps_per_epoch=per_epoch,
        validation_batches=there,
        batch_size=batch_size,
        validation_batch_size=samples,
        check_budget=budget,
    )


@pytest.mark.parametrize("given, expected", TABLE)
def test_choose_by_the_table(given, expected):
    total, per_epoch, there, batch_size, samples, budget = given
    chosen = chosen_by_the_rule(given)
    assert (chosen.every, chosen.validation_steps, chosen.checks) == expected
    n, k, _ = expected
    assert chosen.share == pytest.approx(cost(k, samples, batch_size) / n)


@pytest.mark.parametrize("given, expected", TABLE)
def test_the_rule_holds_its_promises(given, expected):
    total, per_epoch, there, batch_size, samples, budget = given
    chosen = chosen_by_the_rule(given)
    if total:  # the floor: 24 checks a fit at least, two an epoch
        assert chosen.checks >= min(24, total)
        assert chosen.every <= max(1, per_epoch // 2)
    if chosen.share > budget:  # over the budget only at the floor, on 8
        assert chosen.validation_steps == min(there, 8)
    else:  # within it: no rarer check than the budget needs
        assert math.ceil(
            cost(chosen.validation_steps, samples, batch_size) / budget
        ) == (chosen.every) or chosen.every == max(1, min(total // 24, per_epoch // 2))


def test_validation_steps_given_are_kept_and_score_fn_is_not_counted():
    kept = choose(
        total_steps=96,
        steps_per_epoch=16,
        validation_batches=20,
        batch_size=32,
        validation_batch_size=32,
        check_budget=0.1,
        validation_steps=3,
    )
    assert kept == Cadence(every=4, validation_steps=3, checks=24, share=cost(3) / 4)
    uncounted = choose(
        total_steps=96,
        steps_per_epoch=16,
        validation_batches=None,
        batch_size=32,
        validation_batch_size=None,
        check_budget=0.1,
        counted=False,
    )
    assert uncounted == Cadence(every=4, validation_steps=None, checks=24, share=None)


def test_a_run_that_n_does_not_divide_counts_its_last_check():
    chosen = choose(
        total_steps=100,
        steps_per_epoch=20,
        validation_batches=8,
        batch_size=32,
        validation_batch_size=32,
        check_budget=0.1,
    )
    # Every 4 (100 // 24), and 100 is a multiple: 25 checks.
    assert (chosen.every, chosen.checks) == (4, 25)
    odd = choose(
        total_steps=99,
        steps_per_epoch=33,
        validation_batches=8,
        batch_size=32,
        validation_batch_size=32,
        check_budget=0.1,
    )
    assert (odd.every, odd.checks) == (4, 25)  # 24 multiples, then batch 99
