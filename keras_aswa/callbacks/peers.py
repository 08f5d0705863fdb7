"""What an averaging callback checks about the callbacks beside it.

Keras runs each hook over the callbacks in list order, so order decides who
writes the final weights and who sees whose weights at an epoch end. Wrong
set-ups that would lose or silently mix state are refused before any
training is spent; set-ups that merely need a choice get a warning.
"""

from __future__ import annotations

import os
import warnings

import keras


def check_peers(callback, callbacks: list, optimizer=None) -> None:
    """Refuses conflicting set-ups and warns about ambiguous ones.

    Args:
        callback: The averaging callback whose `fit` begins.
        callbacks: The callbacks of that `fit`, in order (empty if unknown).
        optimizer: The model's optimizer.

    Raises:
        ValueError: If another averaging callback shares its `backup_dir`,
            or an averaging callback runs after one with `swap_on_epoch=True`
            (it would average that one's ensemble).
    """
    from keras_aswa.callbacks.base import AveragingCallback

    name = type(callback).__name__
    later = False
    for cb in callbacks:
        if cb is callback:
            later = True
            continue
        peer = type(cb).__name__
        if isinstance(cb, AveragingCallback):
            if callback.backup_dir is not None and cb.backup_dir is not None:
                if os.path.abspath(cb.backup_dir) == os.path.abspath(
                    callback.backup_dir
                ):
                    raise ValueError(
                        f"{name} and {peer} share backup_dir={callback.backup_dir!r}: "
                        "each would resume the other's average. Give each "
                        "averaging callback its own backup_dir."
                    )
            first, second = (callback, cb) if later else (cb, callback)
            if first.swap_on_epoch:
                raise ValueError(
                    f"{type(second).__name__} runs after "
                    f"{type(first).__name__}(swap_on_epoch=True), so at each "
                    "epoch end it would read that callback's average instead "
                    f"of the running weights. Place {type(second).__name__} "
                    "before it in the callbacks list."
                )
        writes = (
            isinstance(cb, keras.callbacks.EarlyStopping) and cb.restore_best_weights
        ) or (isinstance(cb, AveragingCallback) and cb.restore_best)
        if callback.restore_best and writes:
            winner = peer if later else name
            fixes = " or ".join(dict.fromkeys([_no_restore(callback), _no_restore(cb)]))
            warnings.warn(
                f"{name} and {peer} both write weights into the model when "
                "training ends; Keras runs them in list order, so the later "
                f"one, {winner}, decides the final weights. Construct the one "
                f"you don't want as {fixes}, or reorder the callbacks.",
                stacklevel=4,
            )
        if (
            later
            and isinstance(cb, keras.callbacks.BackupAndRestore)
            and callback.swap_on_epoch
        ):
            raise ValueError(
                f"BackupAndRestore after {name}(swap_on_epoch=True) would back up "
                "the average instead of the running model: place it before."
            )
    if callback.restore_best and getattr(optimizer, "use_ema", False):
        warnings.warn(
            f"The optimizer has use_ema=True: fit writes its EMA weights into "
            f"the model at the end, then {name} replaces them with its average "
            f"(of the running weights, not the EMA). Use "
            f"{_no_restore(callback)} to keep the EMA weights.",
            stacklevel=4,
        )


def _no_restore(callback) -> str:
    """The call that builds `callback` without writing weights at the end."""
    flag = (
        "restore_best_weights"
        if isinstance(callback, keras.callbacks.EarlyStopping)
        else "restore_best"
    )
    return f"{type(callback).__name__}({flag}=False)"
