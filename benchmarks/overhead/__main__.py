"""The cost benchmark's command line: `python -m benchmarks.overhead --help`.

Keras is imported only to measure, never for `--report`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import benchmarks.overhead
from benchmarks.overhead.config import BACKENDS, REFERENCE, SMOKE, VARIANTS
from benchmarks.overhead.report import render


def main(argv: list[str] | None = None) -> None:
    """Measures (or re-renders, `--report`), prints and writes the tables."""
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead",
        description=benchmarks.overhead.__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--backend",
        choices=[*BACKENDS, "all"],
        help="default: the one Keras loads (KERAS_BACKEND)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny model, 3 epochs: checks every path quickly",
    )
    parser.add_argument("--reps", type=int, help="repetitions of each variant")
    parser.add_argument("--epochs", type=int, help="epochs a fit")
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="torch intra-op threads (default: torch's own)",
    )
    parser.add_argument(
        "--rss",
        choices=["subprocess", "inprocess", "off"],
        help="how peak RSS is measured: each variant in a fresh "
        "process (default), one after another in this one "
        "(default with --smoke), or not",
    )
    parser.add_argument("--out", help="also write the Markdown tables here")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument(
        "--by-count",
        action="store_true",
        help="only the bookkeeping of 6 against 300 variables of the same bytes",
    )
    parser.add_argument(
        "--baseline",
        help="with --by-count: also measure keras_aswa as of this git revision",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with --by-count: processes per backend and engine",
    )
    parser.add_argument(
        "--cores",
        type=int,
        help="with --by-count: measure on this many CPU cores only (1 leaves "
        "out the threads that large tensors' kernels get, small ones' not)",
    )
    parser.add_argument(
        "--report",
        metavar="JSON",
        help="re-render the tables from the --json file of an earlier run "
        "(either kind) instead of measuring; needs no Keras",
    )
    parser.add_argument(
        "--command",
        help="with --report: the arguments of the run that wrote JSON, for "
        "the report's Command line",
    )
    parser.add_argument("--peak-rss-of", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--by-count-of", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.report:
        if args.command is None:
            parser.error("--report needs --command: the arguments of its run")
        _emit(render(json.loads(Path(args.report).read_text()), args.command), args)
        return
    cfg = SMOKE if args.smoke else REFERENCE
    args.rss = args.rss or ("inprocess" if args.smoke else "subprocess")
    cfg = replace(cfg, reps=args.reps or cfg.reps, epochs=args.epochs or cfg.epochs)
    if args.torch_threads:
        cfg = replace(cfg, torch_threads=args.torch_threads)

    if args.peak_rss_of or args.by_count_of:  # child of peak_rss_all, by_count
        from benchmarks.overhead.by_count import decisions_by_count
        from benchmarks.overhead.memory import peak_rss
        from benchmarks.overhead.workload import Workload, torch_threads

        with torch_threads(cfg.torch_threads):
            result = (
                peak_rss(Workload(cfg), args.peak_rss_of)
                if args.peak_rss_of
                else decisions_by_count(args.by_count_of)
            )
        Path(args.json).write_text(json.dumps(result))
        return
    import keras

    backend = args.backend or keras.backend.backend()
    backends = BACKENDS if backend == "all" else [backend]
    if args.by_count:
        from benchmarks.overhead.by_count import by_count

        reps = args.reps or cfg.bookkeeping_reps
        if args.cores:  # inherited by the measuring processes
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
        data = by_count(backends, reps, args.rounds, args.baseline, cfg.torch_threads)
    else:
        from benchmarks.overhead.run import run_backends

        data = run_backends(cfg, backends, args.rss)
        if not data:
            sys.exit(1)
    _emit(render(data, " ".join(argv)), args, data)


def _emit(text: str, args: argparse.Namespace, data=None) -> None:
    """Prints the report; writes it to `--out`, and `data` to `--json`."""
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json and data is not None:
        Path(args.json).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
