"""Cost against the number of variables (`--by-count`): one decision's
bookkeeping for few large and many small variables, each backend and engine
(this checkout's `keras_aswa`, and a `--baseline` revision's) in fresh
processes.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
from keras import ops

from benchmarks.machine import REPO, code_version, load_average, machine
from benchmarks.overhead.bookkeeping import block
from benchmarks.overhead.child import run_child
from benchmarks.overhead.config import STACKS
from benchmarks.overhead.workload import log, versions
from keras_aswa.averaging import WeightAverage


def dense_stack(layers: int, width: int):
    """`layers` Dense layers `width` wide, seeded."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((width,))] + [keras.layers.Dense(width) for _ in range(layers)]
    )


def decisions_by_count(reps: int) -> dict:
    """One decision's bookkeeping, for few large and many small variables.

    Per stack (`STACKS`), interleaved: `restart` (a hard update, or the
    first), `soft` (`provisional()` entered and left, then `commit()`) and
    `reject` (the same, then `discard()`), with nothing evaluated inside,
    against `np.copy` of the same float weights in host memory. Uses only the
    public API of `WeightAverage`, so that it measures an earlier engine as
    well (`--baseline`).

    Args:
        reps: Repetitions of each step.

    Returns:
        Per stack: its variables, parameters and bytes, and per step the
        milliseconds of every repetition.
    """
    import keras_aswa

    out = {}
    steps = {}
    for name, shape in STACKS.items():
        model = dense_stack(*shape)
        host = [ops.convert_to_numpy(v.value) for v in model.weights]
        average = WeightAverage(model.weights)
        average.restart()

        def restart(average=average):
            average.restart()
            block(average.average)

        def soft(average=average):
            with average.provisional():
                pass
            average.commit()
            block(average.average)

        def reject(average=average, model=model):
            with average.provisional():
                pass
            average.discard()
            block([v.value for v in model.weights])

        def copy(host=host):
            return [np.copy(a) for a in host]

        steps[name] = {"restart": restart, "soft": soft, "reject": reject}
        steps[name]["copy"] = copy
        out[name] = {
            "variables": len(model.weights),
            "params": model.count_params(),
            "bytes": sum(a.nbytes for a in host),
            "ms": {k: [] for k in steps[name]},
        }
    for fns in steps.values():  # compile and warm up
        for fn in fns.values():
            fn()
    for _ in range(reps):
        for name, fns in steps.items():
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                out[name]["ms"][k].append((time.perf_counter() - t) * 1e3)
    return {
        "backend": keras.backend.backend(),
        "engine": str(Path(keras_aswa.__file__).parent),
        "stacks": out,
        "versions": versions(),
        "load_avg": load_average()[0],
    }


def _baseline_checkout(rev: str, into: str) -> str:
    """`keras_aswa/` as of git revision `rev`, unpacked under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "keras_aswa"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def by_count(
    backends,
    reps: int,
    rounds: int,
    baseline: str | None,
    torch_threads: int | None = None,
) -> dict:
    """`decisions_by_count` per backend and engine, each in a fresh process.

    The engines alternate, `rounds` times (the baseline first in each), so
    that both see the same load on a shared machine; repetitions pool over
    rounds.

    Args:
        backends: Backend names.
        reps: Repetitions of each step, per process.
        rounds: Processes per backend and engine.
        baseline: A git revision whose `keras_aswa` to measure beside this
            checkout's, or None.
        torch_threads: torch's intra-op threads in the processes (None:
            torch's default).

    Returns:
        `{"runs": {backend: {engine: result}}, "baseline": baseline,
        "commit": ..., "machine": ...}`, each result as `decisions_by_count`
        returns it, with repetitions pooled.
    """
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"this": str(REPO)}
        if baseline:
            engines = {baseline: _baseline_checkout(baseline, tmp), **engines}
        for b in backends:
            runs[b] = {}
            for r in range(rounds):
                for label, path in engines.items():
                    log(f"{b}: {label}, round {r + 1}/{rounds}")
                    result = run_child(
                        ["--by-count-of", str(reps)], b, path, torch_threads
                    )
                    runs[b][label] = _pool(runs[b].get(label), result)
    return {
        "runs": runs,
        "baseline": baseline,
        "commit": code_version(),
        "machine": machine(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _pool(into: dict | None, result: dict) -> dict:
    """`result`'s repetitions added to those of `into` (None: the first)."""
    if into is None:
        return result
    for name, stack in result["stacks"].items():
        for k, ms in stack["ms"].items():
            into["stacks"][name]["ms"][k] += ms
    into["load_avg"] = max(into["load_avg"], result["load_avg"])
    return into
