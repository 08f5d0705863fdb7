"""The docs page mirrors the benchmark reports."""

from benchmarks import publish


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
