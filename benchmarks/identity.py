"""Does an engine change change results? The quality smoke runs, before and after.

Runs `python -m benchmarks.quality --smoke` with this checkout and with a
git revision (its whole tree: engine and benchmark as they were), and
compares the runs both made, paired by configuration and seed: ASWA's
decisions and the sha256 of each method's final weights (last model, early
stopping, SWA, EMA, ASWA). Runs and methods only one side has (a newer
smoke's configurations, a newer benchmark's step-level ASWA) are listed, not
compared::

    python -m benchmarks.identity --baseline 8618a07 --backend all

Exits 1 when a compared run differs, or when no run was compared.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Not imported from `benchmarks`: in the baseline's process, `benchmarks` is
# the baseline's package.
REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax", "torch")


def weights_digest(arrays) -> str:
    """sha256 (16 hex digits) of arrays' shapes, dtypes and bytes, in order."""
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(repr((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def digest_smoke(backend: str) -> dict:
    """The smoke run of the checkout in the working directory, digested.

    Wraps the benchmark's `run_seed` (one training run per configuration and
    seed; in `benchmarks.quality` or, since the package split,
    `benchmarks.quality.run`) to record each run.
    """
    os.environ["KERAS_BACKEND"] = backend
    sys.path.insert(0, os.getcwd())  # this checkout's engine and benchmark
    try:
        home = importlib.import_module("benchmarks.quality.run")
        cli = importlib.import_module("benchmarks.quality.__main__")
    except ImportError:  # a single-module benchmark
        home = cli = importlib.import_module("benchmarks.quality")
    original = home.run_seed
    runs = []

    def run_seed(cfg, data, seed):
        result = original(cfg, data, seed)
        _, weights, aswa = result[:3]
        runs.append(
            {
                "config": f"{cfg.dataset}/{cfg.model}",
                "seed": seed,
                "decisions": [h["decision"] for h in aswa.history],
                "weights": {m: weights_digest(w) for m, w in sorted(weights.items())},
            }
        )
        return result

    home.run_seed = run_seed
    with tempfile.TemporaryDirectory() as out:
        cli.main(["--smoke", "--backend", backend, "--out", out])
    import keras_aswa

    return {"engine": str(Path(keras_aswa.__file__).parent), "runs": runs}


def _by_run(runs: list) -> dict:
    """Runs keyed by `(config, seed, i)`: the `i`-th run of that
    configuration and seed (0 unless a smoke trains it more than once)."""
    keyed, seen = {}, {}
    for run in runs:
        pair = (run["config"], run["seed"])
        keyed[(*pair, seen.get(pair, 0))] = run
        seen[pair] = seen.get(pair, 0) + 1
    return keyed


def _label(key: tuple) -> str:
    config, seed, i = key
    return f"{config} seed {seed}" + (f" (run {i + 1})" if i else "")


def compare(before: dict, after: dict) -> tuple[bool, list[str]]:
    """Whether two digests agree on the runs both have; report lines.

    Runs are paired by configuration and seed, not by position: the runs
    only one side has (a newer smoke's configurations) are listed, not
    compared, and so are the methods only one side has. Identical only when
    at least one run was compared and every compared run has the same
    decisions and the same final weights for every common method.
    """
    lines = []
    old, new = _by_run(before["runs"]), _by_run(after["runs"])
    common = [key for key in new if key in old]  # in this checkout's order
    same = bool(common)
    decisions = weights = 0
    for key in common:
        b, a = old[key], new[key]
        methods = sorted(set(b["weights"]) & set(a["weights"]))
        differ = [m for m in methods if b["weights"][m] != a["weights"][m]]
        only = sorted(set(b["weights"]) ^ set(a["weights"]))
        ok = b["decisions"] == a["decisions"] and not differ
        same &= ok
        decisions += len(b["decisions"])
        weights += len(methods)
        verdict = "same" if b["decisions"] == a["decisions"] else "DIFFER"
        line = f"{_label(key)}: decisions {verdict}"
        line += f", weights of {', '.join(methods)} " + (
            f"DIFFER for {', '.join(differ)}" if differ else "identical"
        )
        if only:
            line += f" (not compared: {', '.join(only)})"
        lines.append(line)
    for side, mine, other in (("baseline", old, new), ("this checkout", new, old)):
        alone = [_label(key) for key in mine if key not in other]
        if alone:
            lines.append(f"not compared, only in {side}: {'; '.join(alone)}")
    lines.append(
        f"{'IDENTICAL' if same else 'DIFFERENT'}: {len(common)} runs, "
        f"{decisions} decisions, {weights} final weight sets compared"
        + ("" if common else " (no run in common)")
    )
    return same, lines


def _digest_in(tree: Path, backend: str) -> dict:
    """`digest_smoke` of the checkout at `tree`, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digest.json"
        code = (
            f"import json, runpy; g = runpy.run_path({__file__!r}); "
            f"d = g['digest_smoke']({backend!r}); "
            f"open({str(path)!r}, 'w').write(json.dumps(d))"
        )
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""}
        subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True)
        return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.identity", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--baseline", required=True, help="git revision to compare with"
    )
    parser.add_argument("--backend", default="all", choices=(*BACKENDS, "all"))
    args = parser.parse_args(argv)
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    ok = True
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.baseline],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        for backend in backends:
            before, after = _digest_in(Path(old), backend), _digest_in(REPO, backend)
            same, lines = compare(before, after)
            ok &= same
            print(f"== {backend}: {args.baseline} against this checkout")
            print("\n".join(lines), flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
