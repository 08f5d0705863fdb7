"""The quality benchmark's command line: `python -m benchmarks.quality --help`.

Keras is imported only to run the benchmark (after `--backend` is set), never
for `--report`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks.quality.config import DATASETS, REGIMES, parse_seeds, parse_step_freq


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark, or re-renders its report; returns the result."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description="ASWA vs last model, early stopping, SWA and EMA on "
        "Fashion-MNIST, digits, UMLS and Nations.",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny data, 3 epochs, 1 seed"
    )
    parser.add_argument(
        "--backend",
        choices=("tensorflow", "jax", "torch"),
        help="Keras backend (set before Keras is imported; default: KERAS_BACKEND)",
    )
    parser.add_argument(
        "--seeds", default=None, help="e.g. 1-5 or 1,3,7 (default 1-5; smoke: 1)"
    )
    parser.add_argument(
        "--datasets",
        default=None,
        help=f"comma-separated, from {DATASETS} (default: all; --steps: fashion_mnist)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where quality.json/.md go"
    )
    parser.add_argument(
        "--img-dir",
        type=Path,
        default=None,
        help="where the PNGs go (default: OUT/img)",
    )
    parser.add_argument(
        "--timing-repeats",
        type=int,
        default=3,
        help="plain vs ASWA timing repeats (UMLS)",
    )
    parser.add_argument(
        "--report", action="store_true", help="re-render OUT/quality.md only"
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated configuration keys to run, in this order "
        "(e.g. fashion_mnist/cnn,fashion_mnist/mlp)",
    )
    parser.add_argument(
        "--step-freqs",
        default=None,
        help="comma-separated N of the step-level ASWAs, or auto for "
        'update_freq="auto", or its variants auto-recent, auto-accuracy '
        "(default 50,100,200,auto; with --regime: replaces each "
        "configuration's)",
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help="the step-level study: Fashion-MNIST only (default), plus 2-epoch "
        "runs; writes OUT/quality-steps.json/.md",
    )
    parser.add_argument(
        "--regime",
        default=None,
        help=f"the regimes study: comma-separated, from {REGIMES}, or all; "
        "writes OUT/quality-regimes.json/.md (with --report: re-renders it). "
        "--smoke without it runs the classic grid and then every regime",
    )
    parser.add_argument(
        "--include",
        "--include-smoke",
        nargs="*",
        default=[],
        help="with --report: quality.json files of smoke runs or other backends' runs",
    )
    args = parser.parse_args(argv)
    # Smoke runs default to a directory named after the backend.
    needs_keras = not args.report or (args.smoke and args.out is None)
    backend = _use_backend(parser, args.backend) if needs_keras else None
    out = args.out or Path(
        f"benchmarks/out/smoke-{backend}" if args.smoke else "benchmarks/results"
    )
    if args.report:
        from benchmarks.quality.rerender import rerender, rerender_regimes

        if args.regime:
            return rerender_regimes(out, args.include)
        return rerender(out, args.include, args.steps)
    from benchmarks.quality.run import run

    seeds = parse_seeds(args.seeds or ("1" if args.smoke else "1-5"))
    command = "python -m benchmarks.quality " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    regimes = None
    if args.regime:
        regimes = REGIMES if args.regime == "all" else args.regime.split(",")
        unknown = set(regimes) - set(REGIMES)
        if unknown:
            parser.error(f"unknown regime(s) {sorted(unknown)}; have {REGIMES}")
    elif args.smoke and not (args.steps or args.only or args.datasets):
        # The smoke run covers every regime too (quality-regimes.json).
        run(
            smoke=True,
            seeds=seeds,
            datasets=[],
            out=out,
            img_dir=out / "img",
            regimes=REGIMES,
            command=command,
        )
    step_freqs = (
        tuple(parse_step_freq(n) for n in args.step_freqs.split(","))
        if args.step_freqs
        else None
    )
    if regimes:
        return run(
            smoke=args.smoke,
            seeds=seeds,
            datasets=[],
            out=out,
            img_dir=out / "img",
            only=args.only.split(",") if args.only else None,
            regimes=regimes,
            step_freqs=step_freqs,
            command=command,
        )
    if args.datasets is None:
        args.datasets = "fashion_mnist" if args.steps else ",".join(DATASETS)
    datasets = [d for d in args.datasets.split(",") if d]
    return run(
        smoke=args.smoke,
        seeds=seeds,
        datasets=datasets,
        out=out,
        img_dir=args.img_dir or out / "img",
        timing_repeats=args.timing_repeats,
        steps=args.steps,
        step_freqs=step_freqs,
        only=args.only.split(",") if args.only else None,
        command=command,
    )


def _use_backend(parser: argparse.ArgumentParser, backend: str | None) -> str:
    """Imports Keras on `backend` (its default where None) and returns it.

    Keras fixes its backend at its first import, so `backend` is set before
    that; where Keras is already loaded on another one, it is an error.
    """
    if backend and "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    if backend and keras.backend.backend() != backend:
        parser.error(
            f"Keras is already loaded with backend {keras.backend.backend()!r}; "
            f"run in a fresh process or set KERAS_BACKEND={backend}."
        )
    return keras.backend.backend()


if __name__ == "__main__":
    main()
