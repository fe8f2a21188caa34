"""docs/results/README.md: a short index whose tables are copies of the generated pages'
(zotune.bench.index), checked here to be current, first the findings', with no long cell."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zotune.bench import index

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
INDEX = RESULTS / "README.md"
MAX_WORDS = 1500  # as `wc -w` counts them: every token, table rules and markers included
MAX_CELL = 120  # characters: a table cell is a value or a phrase, never a paragraph

PAGE = """# report

## section a

### Test accuracy (%)

prose

| optimizer | full | lora |
| --- | ---: | ---: |
| zo-sgd | 75.0 | 59.5 |

## section b

### Test accuracy (%)

| optimizer | full | lora |
| --- | ---: | ---: |
| zo-sgd | 49.4 | 49.6 |
"""


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("page.md", ["| optimizer | full | lora |", "| --- | ---: | ---: |",
                     "| zo-sgd | 75.0 | 59.5 |"]),
        ("page.md > section b > Test accuracy (%)",
         ["| optimizer | full | lora |", "| --- | ---: | ---: |", "| zo-sgd | 49.4 | 49.6 |"]),
        ("page.md > section b > Test accuracy (%) | optimizer | lora",
         ["| optimizer | lora |", "| --- | ---: |", "| zo-sgd | 49.6 |"]),
    ],
)
def test_a_copy_is_the_first_table_after_its_headings_in_the_columns_named(
        tmp_path, source, expected):
    (tmp_path / "page.md").write_text(PAGE)
    assert index.copy_of(index.Source.parse(source), tmp_path).splitlines() == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("page.md > section c", "page.md: no heading 'section c'"),
        ("page.md > section b | optimizer | zero", "page.md: no column 'zero'"),
        ("absent.md", "absent.md: no such page"),
        ("../outside.md", "must lie inside"),
    ],
)
def test_a_copy_that_cannot_be_made_is_refused_in_one_line(tmp_path, source, message):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "page.md").write_text(PAGE)
    (tmp_path / "outside.md").write_text(PAGE)
    with pytest.raises(ValueError, match=re.escape(message)):
        index.copy_of(index.Source.parse(source), folder)


def test_refreshing_replaces_each_copy_and_leaves_the_prose(tmp_path, capsys):
    (tmp_path / "page.md").write_text(PAGE)
    page = tmp_path / "README.md"
    page.write_text("intro\n\n<!-- table: page.md | optimizer | full -->\n| stale |\n"
                    "<!-- /table -->\n\noutro\n")
    assert index.main([str(page), "--check"]) == 1
    assert index.main([str(page)]) == 0
    assert page.read_text() == ("intro\n\n<!-- table: page.md | optimizer | full -->\n"
                                "| optimizer | full |\n| --- | ---: |\n| zo-sgd | 75.0 |\n"
                                "<!-- /table -->\n\noutro\n")
    assert index.main([str(page), "--check"]) == 0
    capsys.readouterr()
    for text, error in [
        ("<!-- table: absent.md -->\n<!-- /table -->\n", f"absent.md: no such page in {tmp_path}"),
        ("<!-- table: page.md -->\n",
         "a <!-- table: ... --> comment lacks its <!-- /table --> below it"),
    ]:
        page.write_text(text)
        assert index.main([str(page)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"zotune: error: {error}"]
        assert page.read_text() == text


# The published index ------------------------------------------------------------------------


def test_the_index_tables_are_the_generated_pages_tables():
    text = INDEX.read_text(encoding="utf-8")
    assert index.refreshed(text, RESULTS) == text, (
        "docs/results/README.md is stale: python -m zotune.bench.index docs/results/README.md")


def test_the_index_is_short_and_leads_with_the_answer_then_the_findings():
    text = INDEX.read_text(encoding="utf-8")
    assert len(text.split()) < MAX_WORDS
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## Which optimizer should I use?", "## The paper's findings"]
    first_copy = index.COPY.search(text)
    assert first_copy is not None and first_copy["source"] == "findings.md"


@pytest.mark.parametrize("page", [INDEX, RESULTS / "findings.md"], ids=lambda p: p.name)
def test_no_table_cell_is_a_paragraph(page):
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("|"):
            longest = max(index.cells(line), key=len)
            assert len(longest) <= MAX_CELL, f"{page.name}: {longest[:60]}…"
