"""What a callback can learn about the `fit` call that runs it.

Keras does not tell callbacks whether `fit` got validation data, nor which
other callbacks run beside them. Both sit in `fit`'s own frame, found by
walking up the stack from a callback hook: `validation_split` has been turned
into `validation_data`, and `callbacks` is the `CallbackList`, by the time
`on_train_begin` runs, on every backend.
"""

from __future__ import annotations

import inspect


def fit_locals(model) -> dict | None:
    """The local variables of the `fit` call training `model`.

    Args:
        model: The model whose `fit` is running.

    Returns:
        `fit`'s locals, or None when no such frame is on the stack (a custom
        training loop calling the hooks itself).
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
                return dict(frame.f_locals)
            frame = frame.f_back
        return None
    finally:
        del frame


def fit_has_validation(model) -> bool | None:
    """Whether the running `fit` validates; None when that cannot be known."""
    found = fit_locals(model)
    if found is None:
        return None
    return found.get("validation_data") is not None


def fit_callbacks(model) -> list:
    """The callbacks of the running `fit`, in order (empty when unknown)."""
    found = fit_locals(model) or {}
    return list(getattr(found.get("callbacks"), "callbacks", None) or [])
