"""The committed reports re-render from their JSON, by code that needs no Keras.

One fresh process imports every report module and re-renders every report
under `benchmarks/results/` from its JSON (in a copy of the directory), the
way the command lines do; then `keras`, `keras_aswa` and the backends must
still be unimported, and each report must equal the committed one byte for
byte. No backend is needed, so this runs the same under every one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.machine import REPO

RESULTS = Path("benchmarks") / "results"
REPORT_MODULES = (
    "benchmarks.machine",
    "benchmarks.publish",
    "benchmarks.lora_memory",
    "benchmarks.auto_cost",
    "benchmarks.quality.config",
    "benchmarks.quality.stats",
    "benchmarks.quality.results",
    "benchmarks.quality.report",
    "benchmarks.quality.steps_report",
    "benchmarks.quality.regimes_report",
    "benchmarks.quality.rerender",
    "benchmarks.quality.__main__",
    "benchmarks.overhead.config",
    "benchmarks.overhead.report",
    "benchmarks.overhead.__main__",
)
FORBIDDEN = ("keras", "keras_aswa", "tensorflow", "jax", "torch")
# Written by hand, with no JSON to render them from.
HAND_WRITTEN = {"dicee.md", "overhead-gpu.md"}
# Re-rendered in place, with the files each must reproduce byte for byte.
BYTE_IDENTICAL = {
    "quality.md": ("quality.md", "quality.json"),
    "quality-steps.md": ("quality-steps.md", "quality-steps.json"),
    "quality-regimes.md": ("quality-regimes.md", "quality-regimes.json"),
    "overhead.md": ("overhead.md",),
    "overhead-variables.md": ("overhead-variables.md",),
    "overhead-variables-1core.md": ("overhead-variables-1core.md",),
    "auto_cost.md": ("auto_cost.md",),
}
# Its Date and Machine lines are the renderer's: the JSON records neither.
RENDER_TIME = {"lora_memory.md": ("Date: ", "Machine: ")}

_SCRIPT = """
import importlib, json, sys
modules, rerenders, forbidden = json.loads(sys.argv[1])
for name in modules:
    importlib.import_module(name)
for name, args in rerenders:
    importlib.import_module(name).main(args)
loaded = [m for m in sys.modules if m.split(".")[0] in forbidden]
print(json.dumps(sorted(loaded)))
"""


def _command(report: Path) -> str:
    """The arguments on a committed report's Command line, after the module."""
    line = next(
        line
        for line in (REPO / report).read_text().splitlines()
        if line.startswith("Command: `python -m benchmarks.")
    )
    return line.split("`")[1].split(" ", 3)[3]


def _rerenders() -> list:
    """Each report's re-render: the module whose `main` runs, and its arguments."""
    out = [
        ("benchmarks.quality.__main__", ["--report"]),
        ("benchmarks.quality.__main__", ["--report", "--steps"]),
        ("benchmarks.quality.__main__", ["--report", "--regime", "all"]),
    ]
    for stem in ("overhead", "overhead-variables", "overhead-variables-1core"):
        md = RESULTS / f"{stem}.md"
        args = ["--report", str(RESULTS / f"{stem}.json"), "--out", str(md)]
        out.append(
            ("benchmarks.overhead.__main__", [*args, f"--command={_command(md)}"])
        )
    md = RESULTS / "lora_memory.md"
    args = ["--report", str(RESULTS / "lora_memory.json"), "--out", str(md)]
    args += ["--before", str(RESULTS / "lora_memory.before.json")]
    out.append(("benchmarks.lora_memory", [*args, f"--command={_command(md)}"]))
    md = RESULTS / "auto_cost.md"
    args = ["--report", str(RESULTS / "auto_cost.json"), "--out", str(md)]
    out.append(("benchmarks.auto_cost", [*args, f"--command={_command(md)}"]))
    return out


@pytest.fixture(scope="module")
def rerendered(tmp_path_factory) -> tuple[Path, list[str]]:
    """A copy of the results, every report re-rendered in it; what was loaded."""
    root = tmp_path_factory.mktemp("rerender")
    shutil.copytree(REPO / RESULTS, root / RESULTS)
    payload = json.dumps([REPORT_MODULES, _rerenders(), FORBIDDEN])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # The plots' paths in quality.json are relative to where a run started.
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, payload],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return root / RESULTS, json.loads(done.stdout.splitlines()[-1])


def test_report_code_imports_no_keras(rerendered):
    _, loaded = rerendered
    assert loaded == []


@pytest.mark.parametrize("report", sorted(BYTE_IDENTICAL))
def test_report_rerenders_byte_identical(rerendered, report):
    out, _ = rerendered
    for name in BYTE_IDENTICAL[report]:
        assert (out / name).read_bytes() == (REPO / RESULTS / name).read_bytes(), name


@pytest.mark.parametrize("report", sorted(RENDER_TIME))
def test_report_rerenders_but_for_render_time_lines(rerendered, report):
    out, _ = rerendered

    def kept(path):
        return [
            line
            for line in path.read_text().splitlines(keepends=True)
            if not line.startswith(RENDER_TIME[report])
        ]

    assert kept(out / report) == kept(REPO / RESULTS / report)


def test_every_report_is_checked_or_hand_written():
    reports = {p.name for p in (REPO / RESULTS).glob("*.md")}
    assert reports == HAND_WRITTEN | set(BYTE_IDENTICAL) | set(RENDER_TIME)
