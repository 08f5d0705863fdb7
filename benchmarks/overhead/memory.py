"""Peak resident memory of one fit of each variant (on CPU, device memory is
host RAM).
"""

from __future__ import annotations

import gc
import resource
from pathlib import Path

from benchmarks.machine import proc_status_kib
from benchmarks.overhead.child import run_child
from benchmarks.overhead.config import RSS_EPOCHS, RSS_VARIANTS, Config
from benchmarks.overhead.workload import Workload, variant_callbacks


def _reset_peak_rss() -> bool:
    # Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM).
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _release_free_memory():
    # Hand freed heap pages back to the OS (glibc), so that the peak counts
    # every page the measured fit needs, not only those beyond a reused heap.
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss(w: Workload, variant: str, warm_up: bool = True) -> dict:
    """Growth of the process's peak RSS over its current RSS during one fit of
    `variant`, after a warm-up fit of the same variant (compiling its paths,
    JAX's eager ops included) and handing freed memory back to the OS."""
    if warm_up:
        w.reset()
        w.fit(variant_callbacks(variant, w), epochs=2)
        w.evaluate()
    w.reset()
    _release_free_memory()
    if _reset_peak_rss() and proc_status_kib("VmRSS") is not None:
        before, method = proc_status_kib("VmRSS"), "VmHWM - VmRSS after reset"
        w.fit(variant_callbacks(variant, w), epochs=RSS_EPOCHS)
        peak = proc_status_kib("VmHWM")
    else:  # only growth above the earlier peak shows
        before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
        w.fit(variant_callbacks(variant, w), epochs=RSS_EPOCHS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_delta_mib": (peak - before) / 1024,
        "rss_mib": before / 1024,
        "method": method,
    }


def peak_rss_all(cfg: Config, mode: str, w: Workload | None) -> dict:
    """Per variant: in a fresh process each (`subprocess`), one after the
    other in this one (`inprocess`: freed memory is reused, so later variants
    may show less), or not at all (`off`)."""
    if mode == "off":
        return {}
    if mode == "inprocess":
        return {v: peak_rss(w, v, warm_up=False) for v in RSS_VARIANTS}
    args = ["--smoke"] if cfg.smoke else []
    return {
        v: run_child(["--peak-rss-of", v, *args], torch_threads=cfg.torch_threads)
        for v in RSS_VARIANTS
    }
