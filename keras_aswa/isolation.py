"""Keeping keras_aswa's own data passes out of training's randomness.

Every time a torch `DataLoader` is iterated, it draws a base seed from torch's
global generator, and Keras' torch backend shuffles training batches with
that same generator. An extra evaluation at an epoch end would therefore
change the order of every later batch. Restoring the generator's state after
the callback's work keeps a fit with the callback on the same trajectory as
a fit without it. TensorFlow and JAX shuffle with their own seeded state,
which evaluation leaves alone; a torch `DataLoader` can still appear under
them, so the rule follows torch being loaded, not the backend.
"""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def rng_preserved():
    """Restores torch's global random state on exit, when torch is loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
