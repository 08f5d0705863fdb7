"""The quality benchmark's JSON: how records are laid out and written."""

from __future__ import annotations

import json
import re
from pathlib import Path


def rounded(x, digits: int = 5):
    """`x` as a float of `digits` decimals, for the JSON; None stays None."""
    return None if x is None else round(float(x), digits)


HISTORY_KEYS = {  # JSON column <- ASWA.history key
    "epoch": "epoch",
    "decision": "decision",
    "running": "running",
    "provisional": "provisional",
    "ensemble": "ensemble_score",
    "size": "ensemble_size",
}


def history_columns(history: list[dict]) -> dict:
    """ASWA's per-epoch records as columns (compact in JSON)."""
    out = {}
    for column, key in HISTORY_KEYS.items():
        values = [h.get(key, h.get(column)) for h in history]
        if column in ("running", "provisional", "ensemble"):
            values = [rounded(v) for v in values]
        out[column] = values
    return out


def write_json(result: dict, path: Path) -> None:
    """`result` as indented JSON, with each flat list on one line."""
    text = json.dumps(result, indent=1)
    # One line per list of numbers or strings: per-epoch columns stay short.
    text = re.sub(
        r"\[([^\[\]{}]*)\]",
        lambda m: "[" + " ".join(m.group(1).split()) + "]",
        text,
    )
    path.write_text(text + "\n")
