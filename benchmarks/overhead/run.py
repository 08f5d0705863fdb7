"""The cost benchmark on each backend: this process's, or a child per backend."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime

import keras

from benchmarks.machine import load_average, machine
from benchmarks.overhead.bookkeeping import bookkeeping
from benchmarks.overhead.child import run_child
from benchmarks.overhead.config import Config
from benchmarks.overhead.memory import peak_rss_all
from benchmarks.overhead.timing import check_decisions, summarize, time_fits
from benchmarks.overhead.workload import Workload, log, torch_threads, versions


def run_backends(cfg: Config, backends, rss: str) -> list[dict]:
    """One result per backend that ran: in this process where it is the only
    one and this process's, otherwise each in a child of its own."""
    if list(backends) == [keras.backend.backend()]:
        return [run_backend(cfg, rss)]
    args = ["--rss", rss, *(["--smoke"] if cfg.smoke else [])]
    args += ["--reps", str(cfg.reps), "--epochs", str(cfg.epochs)]
    results = []
    for b in backends:
        try:
            results += run_child(["--backend", b, *args], b, None, cfg.torch_threads)
        except subprocess.CalledProcessError as e:  # report the backends that ran
            print(f"{b}: failed with exit status {e.returncode}", file=sys.stderr)
    return results


def run_backend(cfg: Config, rss: str = "subprocess") -> dict:
    """Everything for the backend this process runs; `rss` as in `peak_rss_all`."""
    with torch_threads(cfg.torch_threads):
        start, load0 = time.perf_counter(), load_average()[0]
        log(f"{'smoke' if cfg.smoke else 'reference'} workload")
        w = Workload(cfg)
        timings = time_fits(w)
        log("bookkeeping")
        book = bookkeeping(w.model, cfg.bookkeeping_reps)
        log("decision check")
        check = check_decisions(w)
        log(f"peak RSS ({rss})")
        memory = peak_rss_all(cfg, rss, w)
        return {
            "backend": keras.backend.backend(),
            "config": asdict(cfg),
            "data": w.data,
            "params": w.model.count_params(),
            "timings": timings,
            "summary": summarize(timings, cfg.epochs),
            "bookkeeping": book,
            "check": check,
            "memory": memory,
            "versions": versions(),
            "machine": machine(keras.backend.backend()),
            "load_avg": [load0, load_average()[0]],
            "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "runtime_s": time.perf_counter() - start,
        }
