"""The cost benchmark in a fresh process: one backend, engine or variant each.

Keras fixes its backend per process, and peak RSS is a process's own, so
parts of the benchmark run as children of `python -m benchmarks.overhead`
that write their result with `--json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.machine import REPO


def run_child(
    args: list[str],
    backend: str | None = None,
    engine: str | None = None,
    torch_threads: int | None = None,
):
    """Runs the benchmark with `args` in a fresh process; returns its JSON.

    Args:
        args: The command line, without `--json` (added here).
        backend: `KERAS_BACKEND` of the child; None keeps this process's.
        engine: A directory whose `keras_aswa` the child imports instead of
            the checkout's (`--baseline`); None for the checkout's.
        torch_threads: The child's `--torch-threads`, if any.

    Raises:
        subprocess.CalledProcessError: If the child fails.
    """
    if engine is None:
        cmd = [sys.executable, "-m", "benchmarks.overhead"]
    else:
        # `-c` rather than `-m`: the engine's directory goes first on
        # sys.path, before the checkout and any installed keras_aswa.
        launcher = (
            f"import runpy, sys; sys.path.insert(0, {engine!r}); "
            "runpy.run_module('benchmarks.overhead', run_name='__main__')"
        )
        cmd = [sys.executable, "-c", launcher]
    if torch_threads:
        args = [*args, "--torch-threads", str(torch_threads)]
    env = dict(os.environ)
    if backend:
        env["KERAS_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), env.get("PYTHONPATH")])
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        subprocess.run(
            [*cmd, *args, "--json", str(path)], cwd=REPO, env=env, check=True
        )
        return json.loads(path.read_text())
