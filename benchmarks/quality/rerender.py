"""`--report`: the quality reports re-rendered from their JSON, other runs merged.

Imports no Keras, keras_aswa or backend: re-rendering needs none.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from benchmarks.quality.config import Config, metric_names, step_method
from benchmarks.quality.regimes_report import render_regimes_markdown
from benchmarks.quality.report import render_markdown
from benchmarks.quality.results import history_columns, write_json
from benchmarks.quality.stats import summarize
from benchmarks.quality.steps_report import render_steps_markdown


def rerender(out: Path, include: list[str], steps: bool = False) -> dict:
    """Re-renders quality.md from quality.json, merging other runs.

    Smoke runs go to the smoke section; full runs on other backends (e.g.
    UMLS timings) to the dicee comparison. `steps`: re-renders
    quality-steps.md from quality-steps.json instead, merging the
    configurations and seeds of other step-level runs.

    Returns:
        The result, as written back to the JSON.
    """
    if steps:
        result = json.loads((out / "quality-steps.json").read_text())
        for path in include:
            _merge_steps(result, path)
        write_json(result, out / "quality-steps.json")
        (out / "quality-steps.md").write_text(render_steps_markdown(result, out))
        return result
    result = json.loads((out / "quality.json").read_text())
    for entry in result["configs"].values():
        for record in entry["records"]:
            if isinstance(record["aswa_history"], list):  # older row format
                record["aswa_history"] = history_columns(record["aswa_history"])
    for path in include:
        res = json.loads(Path(path).read_text())
        for entry in res["configs"].values():
            for record in entry["records"]:
                record.pop("aswa_history", None)  # kept in their own JSON
        section = "smoke_runs" if res["smoke"] else "other_backends"
        result.setdefault(section, {})[res["environment"]["backend"]] = res
    write_json(result, out / "quality.json")
    (out / "quality.md").write_text(render_markdown(result, out))
    return result


def rerender_regimes(out: Path, include: list[str]) -> dict:
    """Re-renders quality-regimes.md from quality-regimes.json, merging the
    regime runs (and smoke runs) given in `include`: another backend's into
    a section of its own, a run on a backend already in the report into that
    backend's configurations, where it replaces the results of those it ran
    again (e.g. after a rule changed: the report says which)."""
    result = json.loads((out / "quality-regimes.json").read_text())
    for path in include:
        res = json.loads(Path(path).read_text())
        backend = res["environment"]["backend"]
        if res["smoke"]:
            result.setdefault("smoke_runs", {})[backend] = res
            continue
        others = result.setdefault("other_backends", {})
        # A run on a backend already here adds its configurations to that
        # backend's (e.g. a regime run apart); another backend's is its own.
        mine = result if result["environment"]["backend"] == backend else None
        mine = mine or others.get(backend)
        if mine is None:
            others[backend] = res
            continue
        again = set(res["configs"]) & set(mine["configs"])
        runs = mine.setdefault("other_runs", [])
        for run in runs:  # each configuration's results come from one run
            run["configs"] = [c for c in run["configs"] if c not in again]
        runs[:] = [run for run in runs if run["configs"]]
        mine["configs"].update(res["configs"])
        runs.append(
            {k: res.get(k) for k in ("command", "date", "runtime_seconds", "seeds")}
            | {"configs": list(res["configs"]), "replaced": sorted(again)}
        )
    if not result.get("other_backends"):
        result.pop("other_backends", None)
    # Every summary from its records under today's statistics, so that a
    # comparison added since a run (e.g. `vs_auto`) covers it too.
    runs = [result, *result.get("other_backends", {}).values()]
    for run in runs + list(result.get("smoke_runs", {}).values()):
        for entry in run["configs"].values():
            _summarize(entry)
    write_json(result, out / "quality-regimes.json")
    (out / "quality-regimes.md").write_text(render_regimes_markdown(result, out))
    return result


def _merge_steps(result: dict, path: str) -> None:
    """Joins the step-level run at `path` into `result`.

    Its new configurations (e.g. the long ones, run apart) join whole; more
    seeds of a configuration join its records, by seed. A configuration run
    again with more step-level variants (e.g. `"auto"` beside the fixed N)
    and otherwise the same settings replaces the earlier run of it; run again
    with some of its step-level variants only (e.g. `"auto"` after its rule
    changed), on the same seeds, it replaces those variants' results.
    """
    res = json.loads(Path(path).read_text())
    for key, entry in res["configs"].items():
        mine = result["configs"].get(key)
        if mine is None or _widens(entry["config"], mine["config"]):
            result["configs"][key] = entry
            continue
        if _widens(mine["config"], entry["config"]):
            _replace_variants(mine, entry, f"{path}: {key}")
        elif _settings(mine["config"]) != _settings(entry["config"]):
            raise ValueError(f"{path}: {key} was run with other settings")
        else:
            seeds = {r["seed"] for r in mine["records"]}
            mine["records"] += [r for r in entry["records"] if r["seed"] not in seeds]
            mine["records"].sort(key=lambda r: r["seed"])
        _summarize(mine)
        mine["seconds"] = round(mine["seconds"] + entry["seconds"], 1)
    env = res["environment"]
    result.setdefault("other_runs", []).append(
        {k: res.get(k) for k in ("command", "date", "runtime_seconds", "seeds")}
        | {
            "configs": list(res["configs"]),
            "load_average_at_start": env["load_average_at_start"],
            "load_average_at_end": env.get("load_average_at_end"),
        }
    )


def _summarize(entry: dict) -> None:
    """(Re)computes a configuration's summary from its records."""
    cfg = Config(**entry["config"])
    entry["summary"] = summarize(
        entry["records"], metric_names(cfg), cfg.methods, bool(cfg.baselines)
    )


def _replace_variants(mine: dict, entry: dict, where: str) -> None:
    """Puts `entry`'s step-level results in place of `mine`'s, seed by seed.

    Raises:
        ValueError: If the seeds differ, or a seed's last model does: the
            other methods were read off a trajectory the new run did not
            retrace.
    """
    methods = [step_method(n) for n in entry["config"]["step_freqs"]]
    records = {r["seed"]: r for r in entry["records"]}
    if set(records) != {r["seed"] for r in mine["records"]}:
        raise ValueError(f"{where}: a rerun of some variants needs the same seeds")
    for record in mine["records"]:
        new = records[record["seed"]]
        if new["metrics"]["last"] != record["metrics"]["last"]:
            raise ValueError(
                f"{where}: seed {record['seed']} trained otherwise (its last "
                "model differs), so its variants cannot be replaced alone"
            )
        for method in methods:
            record["metrics"][method] = new["metrics"][method]
            record["step_aswa"][method] = new["step_aswa"][method]
    # Their fit times against the rerun's own plain fits.
    timing, new_timing = mine.get("step_timing"), entry.get("step_timing")
    if timing and new_timing:
        for part in ("seconds", "median", "over_plain"):
            for method in methods:
                timing[part][method] = new_timing[part][method]


def _settings(config: dict) -> dict:
    """A configuration as a run today writes it: a run from before a field
    was added has that field's default."""
    return json.loads(json.dumps(asdict(Config(**config))))


def _widens(new: dict, old: dict) -> bool:
    """Whether configuration `new` is `old` with more step-level variants."""
    new, old = _settings(new), _settings(old)
    freqs = set(new.pop("step_freqs")), set(old.pop("step_freqs"))
    return new == old and freqs[1] < freqs[0]
