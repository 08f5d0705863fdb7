"""Where a benchmark ran and on which code: the one place that asks.

Every benchmark records its machine, library versions, accelerator, commit
and load through these functions. Nothing here imports Keras or a backend at
module level: versions and the accelerator are looked up when asked for, so
that report code can import this module and stay free of them.
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
"""The checkout the benchmarks run from (children start there)."""


def cpu_model() -> str:
    """The processor's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores() -> int:
    """The CPU cores this process may run on (all of them where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def code_version() -> str:
    """The checkout's short commit, flagged when `keras_aswa/` has changes."""
    git = ["git", "-C", str(REPO)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "keras_aswa"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (keras_aswa/ has uncommitted changes)" if dirty else "")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: the machine is shared."""
    return [round(x, 2) for x in os.getloadavg()]


def accelerator(backend: str) -> str:
    """The device `backend` computes on, or "no GPU"."""
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return "no GPU" if device.platform == "cpu" else device.device_kind
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "no GPU"


def versions(*modules: str) -> dict[str, str]:
    """`__version__` of each of `modules` that imports, in the order given."""
    out = {}
    for name in modules:
        try:
            out[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    return out


def machine(backend: str | None = None) -> dict:
    """Cores, processor, Python, platform and commit; with a backend, its device.

    Args:
        backend: The Keras backend whose accelerator to name, or None to
            leave the accelerator out (and every backend unimported).
    """
    out = {"nproc": cores(), "cpu": cpu_model()}
    if backend:
        out["accelerator"] = accelerator(backend)
    return out | {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": code_version(),
    }


def proc_status_kib(key: str) -> int | None:
    """A figure of this process from /proc/self/status (Linux), e.g. "VmHWM"."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def describe(m: dict) -> str:
    """A `machine()` dict as the reports' Machine line reads.

    A dict without an accelerator comes from a run that named none: the
    CPU-only runs before it was recorded, and processes that load no backend.
    """
    accelerator = m.get("accelerator", "no GPU")
    cores = f"{m['nproc']} CPU core" + ("" if m["nproc"] == 1 else "s")
    return f"{cores}, {m['cpu']}; {accelerator}; Python {m['python']}"
