"""Tables as text: GitHub Markdown for pages, aligned columns for the terminal.

Every table zotune prints or writes (reports, profiles, step cost, traffic, the task list)
goes through these two functions, so they all look alike.
"""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, right_from: int | None = None
) -> str:
    """A GitHub Markdown table; columns from index ``right_from`` on are right-aligned
    (numbers), all left-aligned when it is None. Cells are written as given."""
    rule = [
        "---:" if right_from is not None and i >= right_from else "---"
        for i in range(len(header))
    ]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, rule, *rows))


def text_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, right_from: int = 2
) -> str:
    """Columns padded to their widest cell, separated by two spaces, a dashed rule under the
    header; columns from index ``right_from`` on are right-aligned."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    fmt = "  ".join(
        f"{{:>{w}}}" if i >= right_from else f"{{:<{w}}}" for i, w in enumerate(widths)
    )
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool) -> str:
    """:func:`markdown_table` or :func:`text_table` (the first two columns are labels)."""
    return markdown_table(header, rows) if markdown else text_table(header, rows)
