"""The docs pages mirror the benchmark reports."""

import re

from benchmarks import publish

GUIDE = publish.REPO / "docs" / "choosing.md"
# What a guide claim quotes: a score with two decimals (91.32) or seed
# counts, wins/ties/losses (3/0/2).
_QUOTED = re.compile(r"(?<![\d./])(\d+\.\d\d|\d+/\d+/\d+)(?![\d/])")


def test_docs_page_matches_the_reports():
    current = publish.PAGE.read_text()
    assert "<!-- BEGIN benchmarks/results/quality.md -->" in current
    assert "<!-- BEGIN benchmarks/results/overhead.md -->" in current
    assert publish.render(current) == current, (
        "docs/benchmarks.md is stale: run python -m benchmarks.publish"
    )


def test_block_refilled_with_links_and_headings_adapted(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "docs" / "img").mkdir(parents=True)
    report = tmp_path / "results" / "r.md"
    report.write_text(
        "# Title\n\n![plot](../docs/img/a.png) [web](https://x.org) "
        "[raw](r.json)\n\n```\n# not a heading\n```\n"
    )
    page = tmp_path / "docs" / "page.md"
    text = (
        "# Page\n\nkept\n<!-- BEGIN results/r.md -->\nold\n<!-- END results/r.md -->\n"
    )
    out = publish.render(text, page=page, root=tmp_path)
    assert out == (
        "# Page\n\nkept\n<!-- BEGIN results/r.md -->\n## Title\n\n"
        "![plot](img/a.png) [web](https://x.org) [raw](../results/r.json)\n\n"
        "```\n# not a heading\n```\n<!-- END results/r.md -->\n"
    )
    assert publish.render(out, page=page, root=tmp_path) == out


def test_guide_quotes_only_what_a_report_measured():
    # docs/choosing.md is hand-written; each score and W/T/L it quotes must
    # stand in a generated report, so a rerun that changes a table shows up
    # here rather than as a stale claim.
    reports = "\n".join(
        p.read_text() for p in (publish.REPO / "benchmarks" / "results").glob("*.md")
    )
    measured = set(_QUOTED.findall(reports))
    quoted = _QUOTED.findall(GUIDE.read_text())
    assert len(quoted) > 30
    assert sorted(set(quoted) - measured) == []


def test_guide_rows_link_to_the_benchmarks():
    rows = [
        line
        for line in GUIDE.read_text().splitlines()
        if line.startswith("| ") and not line.startswith("| your run")
    ]
    assert len(rows) >= 7
    anchors = set(re.findall(r"\]\(benchmarks\.md#([\w-]+)\)", GUIDE.read_text()))
    page = re.sub(r"```.*?```", "", publish.PAGE.read_text(), flags=re.S)
    for row in rows:
        assert "](benchmarks.md#" in row, row
    # Python-Markdown's slugs (mkdocs' headings ids): word characters kept,
    # runs of spaces and hyphens made one hyphen.
    headings = re.findall(r"^#+ (.+)$", page, flags=re.M)
    slugs = {
        re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", h).strip().lower())
        for h in headings
    }
    assert anchors and anchors <= slugs, anchors - slugs
