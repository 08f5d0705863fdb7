"""Copies the benchmark reports into the docs page, so the site shows them.

`docs/benchmarks.md` is written by hand around blocks that mirror the
reports under `benchmarks/results/`::

    <!-- BEGIN benchmarks/results/quality.md -->
    ...
    <!-- END benchmarks/results/quality.md -->

This script refills every such block from its report: headings go one level
down (the page has its own title), and relative links and images are
rewritten to resolve from `docs/`. Run it after a benchmark run::

    python -m benchmarks.publish          # rewrite docs/benchmarks.md
    python -m benchmarks.publish --check  # exit 1 if the page is stale
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "benchmarks.md"

_BLOCK = re.compile(
    r"(<!-- BEGIN (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- END (?P=path) -->)",
    re.DOTALL,
)
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def adapt(text: str, source: Path, page: Path) -> str:
    """A report's Markdown as it reads inside `page`.

    Args:
        text: The report's Markdown.
        source: Where the report lives; its relative links start there.
        page: The page the text goes into.

    Returns:
        The text with headings one level down and relative links rewritten.
    """

    def relink(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"[a-z]+:|#|/", target):
            return match.group(0)
        resolved = (source.parent / target).resolve()
        new = os.path.relpath(resolved, page.parent.resolve())
        return f"{match.group(1)}{Path(new).as_posix()}{match.group(3)}"

    lines = []
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("#"):
            line = "#" + line
        lines.append(line if in_code else _LINK.sub(relink, line))
    return "\n".join(lines).strip() + "\n"


def render(page_text: str, page: Path = PAGE, root: Path = REPO) -> str:
    """`page_text` with every block refilled from its report.

    Raises:
        FileNotFoundError: If a block names a report that does not exist.
    """

    def refill(match: re.Match) -> str:
        source = root / match.group("path")
        body = adapt(source.read_text(), source, page)
        return f"{match.group(1)}{body}{match.group(4)}"

    return _BLOCK.sub(refill, page_text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check that the page matches the reports",
    )
    args = parser.parse_args(argv)
    current = PAGE.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(
                f"{PAGE.relative_to(REPO)} is stale: run python -m benchmarks.publish",
                file=sys.stderr,
            )
            return 1
        return 0
    PAGE.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
