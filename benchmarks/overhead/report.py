"""The cost benchmark's tables, from its results (`--json`).

Imports no Keras, keras_aswa or backend: `--report` re-renders anywhere.
"""

from __future__ import annotations

import statistics

from benchmarks.machine import describe
from benchmarks.overhead.config import DECISIONS, MIB, STACKS, VARIANTS


def render(data, command: str) -> str:
    """The report of a run's results: `--by-count`'s, or the cost tables.

    Args:
        data: What the run wrote with `--json`: a dict for `--by-count`, a
            list of per-backend results otherwise.
        command: The run's arguments, for the report's Command line.
    """
    if isinstance(data, dict):
        return by_count_markdown(data, command)
    return header(data, command) + markdown(data)


def header(results: list[dict], command: str) -> str:
    """Where and how `results` were measured: command, machine, workload."""
    first = results[0]
    m, cfg = first["machine"], first["config"]
    vers = {k: v for r in results for k, v in r["versions"].items()}
    return (
        "\n".join(
            [
                f"Command: `python -m benchmarks.overhead {command}`",
                f"Date: {first['date']}; commit {m['commit']}",
                f"Machine: {describe(m)}",
                "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
                f"Workload: MLP 784-{'-'.join(map(str, cfg['hidden']))}-10, "
                f"{first['params']:,} parameters, Adam, batch {cfg['batch_size']}, "
                f"{first['data']}, {cfg['epochs']} epochs a fit, "
                f"{cfg['reps']} repetitions "
                "interleaved; medians",
                "Runtime and load average (start, end): "
                + "; ".join(
                    f"{r['backend']} {r['runtime_s']:.0f} s, "
                    f"{r['load_avg'][0]:.1f}/{r['load_avg'][1]:.1f}"
                    for r in results
                ),
                "",
            ]
        )
        + "\n"
    )


def markdown(results: list[dict]) -> str:
    """Tables: cost per variant, bookkeeping and its breakdown, memory."""
    lines = [
        "Time per fit as wall clock / process CPU time; ratios and excesses are "
        "medians of per-repetition values.",
        "",
        "| backend | variant | fit s | ratio to plain | ideal ratio (plain + "
        "`evaluate`s) | excess over it (% of plain) | excess over `eval` fit (% of "
        "plain) | callback ms / scored epoch | excess from callback time (% of "
        "plain) | evaluations / fit | peak RSS growth MiB (over plain's, in copies "
        "of the float weights) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def pair(row, key, fmt):
        return " / ".join(format(row[c][key], fmt) for c in ("wall", "cpu"))

    def rss(r, v):
        mem, plain = r["memory"].get(v), r["memory"].get("plain")
        if mem is None:
            return "-"
        copies = (mem["peak_delta_mib"] - plain["peak_delta_mib"]) * MIB
        copies /= r["bookkeeping"]["weight_bytes"]
        return f"{mem['peak_delta_mib']:.1f}" + (
            "" if v == "plain" else f" ({copies:+.1f})"
        )

    for r in results:
        for v in VARIANTS:
            row = r["summary"]["rows"][v]
            ideal = v in ("plain", "eval")
            lines.append(
                f"| {r['backend']} | {v} | {pair(row, 'fit_s', '.2f')} | "
                f"{pair(row, 'ratio', '.3f')} | {pair(row, 'ideal_ratio', '.3f')} | "
                + ("-" if ideal else pair(row, "excess_computed_pct", "+.1f"))
                + " | "
                + ("-" if ideal else pair(row, "excess_measured_pct", "+.1f"))
                + f" | {row['epoch_end_ms']:.1f} | "
                + ("-" if ideal else f"{row['excess_callback_pct']:+.1f}")
                + f" | {row['evaluations']} | {rss(r, v)} |"
            )
    lines += [
        "",
        "| backend | epoch s (plain) | `evaluate` ms | cached evaluate ms | float "
        "weights MiB | bookkeeping ms (worst epoch) | `np.copy` ms | bookkeeping "
        "/ copy | held: ensemble | held: at most, around a provisional | first "
        "ASWA fit, one-time s | decisions agree (aswa vs naive) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        s, b, c = r["summary"], r["bookkeeping"], r["check"]
        wb = b["weight_bytes"]
        lines.append(
            f"| {r['backend']} | {s['epoch_s']:.2f} | {s['evaluate_ms']:.1f} | "
            f"{s['cached_evaluate_ms']:.1f} | {wb / MIB:.1f} | "
            f"{b['bookkeeping_ms']:.2f} | "
            f"{b['ms']['memcpy']:.2f} | {b['ratio_to_memcpy']:.1f}x | "
            f"{b['ensemble_bytes'] / wb:.2f} copies | "
            f"{b['provisional_bytes'] / wb:.2f} "
            f"copies | {s['first_aswa_extra_s']:+.2f} | "
            f"{'yes' if c['agree'] else 'NO'}: {' '.join(c['aswa'])} |"
        )
    lines += [
        "",
        "| backend | reject: provisional shown and discarded ms | soft: ... and "
        "committed ms | hard: ... and restarted ms | SWA's update ms | `ops.copy` "
        "all ms | assign all ms | `np.copy` ms | `np.copyto` (preallocated) ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r["bookkeeping"]["ms"]
        lines.append(
            f"| {r['backend']} | {m['reject']:.2f} | {m['soft']:.2f} | "
            f"{m['hard']:.2f} | {m['update']:.2f} | "
            f"{m['device_copy']:.2f} | {m['assign']:.2f} | "
            f"{m['memcpy']:.2f} | {m['memcpy_prealloc']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def by_count_markdown(report: dict, command: str) -> str:
    """The report of `by_count`: medians, ratios many/few and to `np.copy`."""
    med = statistics.median
    first = next(iter(next(iter(report["runs"].values())).values()))
    stacks = first["stacks"]
    m = report["machine"]
    vers = {
        k: v
        for engines in report["runs"].values()
        for r in engines.values()
        for k, v in r["versions"].items()
    }
    few, many = stacks["few"], stacks["many"]
    lines = [
        "# Cost against the number of variables"
        + (", on one core" if m["nproc"] == 1 else ""),
        "",
        f"Command: `python -m benchmarks.overhead {command}`",
        f"Date: {report['date']}; commit {report['commit']}",
        f"Machine: {describe(m)}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"Models: Dense stacks of {few['variables']} variables "
        f"({few['params']:,} float32 parameters) and {many['variables']} "
        f"variables ({many['params']:,}); medians of "
        f"{len(few['ms']['copy'])} repetitions per engine, the engines "
        "alternating in fresh processes; load average at most "
        + ", ".join(
            f"{b} {max(r['load_avg'] for r in engines.values()):.1f}"
            for b, engines in report["runs"].items()
        ),
        "",
        "One decision's weight bookkeeping (`WeightAverage`, nothing evaluated): "
        "`restart` (a hard update), `soft` (provisional average shown, taken "
        "out, committed), `reject` (shown, taken out, discarded); `np.copy` "
        "copies the same float weights in host memory.",
        "",
        "| backend | engine | variables | restart ms | soft ms | reject ms | "
        "worst ms | `np.copy` ms | worst / copy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst = {}
    for b, engines in report["runs"].items():
        for label, r in engines.items():
            for name in STACKS:
                s = r["stacks"][name]
                ms = {k: med(v) for k, v in s["ms"].items()}
                w = max(ms[d] for d in DECISIONS)
                worst[b, label, name] = ms | {"worst": w}
                lines.append(
                    f"| {b} | {label} | {s['variables']} | "
                    + " | ".join(f"{ms[d]:.2f}" for d in DECISIONS)
                    + f" | {w:.2f} | {ms['copy']:.2f} | {w / ms['copy']:.1f}x |"
                )
    lines += [
        "",
        f"Ratio {many['variables']} variables / {few['variables']} variables "
        "(target: at most 1.5x):",
        "",
        "| backend | engine | restart | soft | reject | worst |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for b, engines in report["runs"].items():
        for label in engines:
            ratio = {
                k: worst[b, label, "many"][k] / worst[b, label, "few"][k]
                for k in (*DECISIONS, "worst")
            }
            lines.append(
                f"| {b} | {label} | "
                + " | ".join(f"{ratio[k]:.1f}x" for k in (*DECISIONS, "worst"))
                + " |"
            )
    return "\n".join(lines) + "\n"
