"""One epoch's weight bookkeeping inside ASWA, against copying the weights."""

from __future__ import annotations

import statistics
import time

import keras
import numpy as np
from keras import ops

from keras_aswa.averaging import WeightAverage


def _nbytes(x) -> int:
    """The bytes of tensor `x`."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    itemsize = {"bfloat16": 2}.get(dtype) or np.dtype(dtype).itemsize
    # The size the tensor has now: TensorFlow's slot variables take any shape.
    return int(ops.convert_to_numpy(ops.size(x))) * itemsize


def block(tensors):
    """Waits until `tensors` are computed: JAX dispatches asynchronously, and
    so do GPUs (eager TensorFlow and torch ops on CPU are synchronous)."""
    tensors = [t for t in tensors if t is not None]
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.block_until_ready(tensors)
    elif backend == "torch":
        import torch

        if tensors and tensors[-1].is_cuda:
            torch.cuda.synchronize()
    elif tensors:  # one element of the last: ops run in order on a device
        ops.convert_to_numpy(ops.reshape(tensors[-1], (-1,))[:1])


def bookkeeping(model, reps: int) -> dict:
    """One epoch's weight bookkeeping of ASWA against np.copy of the same
    bytes: the provisional ensemble shown and taken out again, then rejected
    (`discard`), adopted (`commit`, a soft update) or replaced by the running
    weights (`restart`, a hard update); SWA's `update`; and the bytes alive
    in the WeightAverage at each point."""
    floats = [v for v in model.weights if keras.backend.is_float_dtype(v.dtype)]
    host = [ops.convert_to_numpy(v.value) for v in floats]
    weight_bytes = sum(a.nbytes for a in host)
    average = WeightAverage(model.weights)
    average.restart()
    block(average.average)

    def values():
        return [v.value for v in floats]

    def timed(fn):
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def ensemble_bytes():
        return sum(_nbytes(a) for a in average.average if a is not None)

    # The running weights kept while the provisional ensemble is shown, and
    # the provisional ensemble kept for `commit` afterwards.
    held = {"ensemble": ensemble_bytes(), "during": 0, "after": 0}

    def kept(key):  # the store's running values, or its pending average
        held = getattr(average.store, key) or []
        return sum(_nbytes(x) for x in held if x is not None)

    def provisional():
        with average.provisional():
            block(values())
            during = ensemble_bytes() + kept("running")
        block(values())
        after = ensemble_bytes() + kept("pending")
        held["during"] = max(held["during"], during)
        held["after"] = max(held["after"], after)

    def reject():
        provisional()
        average.discard()

    def soft():
        provisional()
        average.commit()
        block(average.average)

    def hard():
        provisional()
        average.restart()
        block(average.average)

    def update():
        average.update()
        block(average.average)

    # Reference costs over all float weights, for the profile: a device copy
    # (one is kept during the provisional) and an assign (three per epoch).
    targets = [np.empty_like(a) for a in host]
    others = [ops.convert_to_tensor(a + 1) for a in host]  # distinct buffers

    def device_copy():
        block([ops.copy(v.value) for v in floats])

    def assign():
        for v, other in zip(floats, others, strict=True):
            v.assign(other)
        block(values())

    steps = {
        "memcpy": lambda: [np.copy(a) for a in host],
        "memcpy_prealloc": lambda: [
            np.copyto(t, a) for t, a in zip(targets, host, strict=True)
        ],
        "reject": reject,
        "soft": soft,
        "hard": hard,
        "update": update,
        "device_copy": device_copy,
        "assign": assign,
    }
    ms = {k: [] for k in steps}
    for _ in range(reps):
        for k, fn in steps.items():
            ms[k].append(timed(fn))
    for v, value in zip(floats, host, strict=True):  # leave the model as it was
        v.assign(value)
    med = {k: statistics.median(x) for k, x in ms.items()}
    worst = max(med["reject"], med["soft"], med["hard"])  # one per epoch
    return {
        "weight_bytes": weight_bytes,
        "largest_variable_bytes": max(a.nbytes for a in host),
        "ms": med,
        "bookkeeping_ms": worst,
        "ratio_to_memcpy": worst / med["memcpy"],
        "ensemble_bytes": held["ensemble"],
        "provisional_bytes": max(held["during"], held["after"]),
    }
