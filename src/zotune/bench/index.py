"""The results index: the generated pages' headline tables, copied into one page.

    python -m zotune.bench.index docs/results/README.md           # rewrite the copies
    python -m zotune.bench.index docs/results/README.md --check   # exit 1 where one is stale

A copy sits between two comments of the index::

    <!-- table: cpu-studies/report/report.md > Studies | variant | test acc (%, seed mean ± std) -->
    ...
    <!-- /table -->

naming its page (relative to the index's folder, and inside it), then, after each ``>``, a
heading to find after the one before (the copy is the first table after the last), then,
after each ``|``, a column to keep (all when none is named). So the index shows the tables
the reports and the findings page generate, never a hand-copied figure, and
``make results`` refreshes it with them.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..utils.files import atomic_write_text

COPY = re.compile(r"(<!-- table: (?P<source>.+?) -->\n)(?P<body>.*?)(<!-- /table -->)",
                  re.DOTALL)


@dataclass(frozen=True)
class Source:
    """Where a copy comes from: a page, the headings leading to its table, the columns kept."""

    page: str
    headings: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Source:
        location, *columns = (part.strip() for part in text.split("|"))
        page, *headings = (part.strip() for part in location.split(">"))
        return cls(page, tuple(headings), tuple(columns))


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def table_after(text: str, headings: tuple[str, ...], page: str) -> list[str]:
    """The lines of the first Markdown table after ``headings``, each found after the last."""
    lines = text.splitlines()
    at = 0
    for heading in headings:
        found = next((i for i in range(at, len(lines))
                      if lines[i].startswith("#") and lines[i].lstrip("#").strip() == heading),
                     None)
        if found is None:
            raise ValueError(f"{page}: no heading {heading!r}")
        at = found + 1
    start = next((i for i in range(at, len(lines)) if lines[i].startswith("|")), None)
    if start is None:
        raise ValueError(f"{page}: no table after {' > '.join(headings) or 'its start'}")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def keep_columns(table: list[str], columns: tuple[str, ...], page: str) -> list[str]:
    if not columns:
        return table
    header = cells(table[0])
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{page}: no column {missing[0]!r} (it has {', '.join(header)})")
    keep = [header.index(c) for c in columns]
    return ["| " + " | ".join(cells(line)[i] for i in keep) + " |" for line in table]


def copy_of(source: Source, folder: Path) -> str:
    """The table ``source`` names, as the index shows it."""
    path = (folder / source.page).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ValueError(f"{source.page}: a table's page must lie inside {folder}")
    if not path.is_file():
        raise ValueError(f"{source.page}: no such page in {folder}")
    table = table_after(path.read_text(encoding="utf-8"), source.headings, source.page)
    return "\n".join(keep_columns(table, source.columns, source.page))


def refreshed(index: str, folder: Path) -> str:
    """``index`` with every copy replaced by its page's current table."""
    def replace(match: re.Match[str]) -> str:
        table = copy_of(Source.parse(match["source"]), folder)
        return f"{match.group(1)}{table}\n{match.group(4)}"

    if index.count("<!-- table: ") != len(COPY.findall(index)):
        raise ValueError("a <!-- table: ... --> comment lacks its <!-- /table --> below it")
    return COPY.sub(replace, index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zotune.bench.index",
        description="Copy the generated tables an index names into it.")
    parser.add_argument("index", help="the index page, e.g. docs/results/README.md")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 where a copy differs from its page")
    args = parser.parse_args(argv)
    path = Path(args.index)
    try:
        text = path.read_text(encoding="utf-8")
        new = refreshed(text, path.parent)
    except (ValueError, OSError) as error:
        print(f"zotune: error: {error}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"{path}: a table differs from its page; run python -m zotune.bench.index "
                  f"{path}", file=sys.stderr)
            return 1
        return 0
    if new != text:
        atomic_write_text(path, new)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
