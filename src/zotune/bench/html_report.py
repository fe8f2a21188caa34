"""``report.html``: the report as one self-contained page, its plots embedded.

The page is the Markdown report (:func:`zotune.bench.report.markdown_report`) turned into
HTML, with every image it links read from the report folder and embedded as a base64
``data:`` URI, and its style inline: it opens from disk, offline, and can be mailed or
attached as one file. Only the Markdown the report writes is understood: headings, bullet
lists, pipe tables, images, ``<details>`` blocks, paragraphs, and ``code`` and **bold**
inline.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<path>[^)]+)\)$")
INLINE_CODE = re.compile(r"`([^`]+)`")
BOLD = re.compile(r"\*\*([^*]+)\*\*")
# A table cell boundary: a pipe the report did not escape as ``\|``.
CELL_BOUNDARY = re.compile(r"(?<!\\)\|")
IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 80em; margin: 2em auto;
       padding: 0 1em; line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }
th { background: #f3f3f3; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f5f5f5; padding: 0 0.2em; }
img { max-width: 100%; display: block; margin: 1em 0; }
details { margin: 1em 0; }
"""


def inline(text: str) -> str:
    """Escaped ``text`` with ``code`` and **bold** made HTML."""
    parts = INLINE_CODE.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # inside backticks
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            out.append(BOLD.sub(r"<strong>\1</strong>", html.escape(part)))
    return "".join(out)


def table_cells(line: str) -> list[str]:
    """The cells of a pipe-table row, ``\\|`` unescaped."""
    cells = CELL_BOUNDARY.split(line.strip())[1:-1]
    return [cell.strip().replace("\\|", "|") for cell in cells]


def _alignments(separator: str) -> list[bool]:
    """Per column, whether the separator row aligns it right (``---:``)."""
    return [cell.endswith(":") for cell in table_cells(separator)]


def table_html(rows: list[str]) -> str:
    header, separator, *body = rows
    right = _alignments(separator)
    head = "".join(f"<th>{inline(c)}</th>" for c in table_cells(header))
    lines = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for row in body:
        cells = table_cells(row)
        lines.append("<tr>" + "".join(
            f'<td class="number">{inline(c)}</td>' if i < len(right) and right[i]
            else f"<td>{inline(c)}</td>"
            for i, c in enumerate(cells)
        ) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def image_html(alt: str, link: str, base: Path) -> str:
    """The image at ``link`` (relative to ``base``, and inside it) as an embedded ``<img>``;
    a note where it is missing or lies outside the report folder."""
    root = base.resolve()
    path = (base / link).resolve()
    kind = IMAGE_TYPES.get(path.suffix.lower())
    if not path.is_relative_to(root) or kind is None or not path.is_file():
        return f"<p>(figure {html.escape(alt)}: not found beside the report)</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:{kind};base64,{data}">'


def render_html(markdown: str, base: Path, title: str = "zotune benchmark report") -> str:
    """The report's Markdown as a self-contained HTML page; images are read from ``base``."""
    body: list[str] = []
    paragraph: list[str] = []
    listing: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if paragraph:
            body.append(f"<p>{inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if listing:
            body.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in listing) + "</ul>")
            listing.clear()
        if len(table) >= 2:
            body.append(table_html(table))
        table.clear()

    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            if paragraph or listing:
                flush()
            table.append(stripped)
            continue
        if table:
            flush()
        if not stripped:
            flush()
        elif heading := re.match(r"^(#{1,6}) (.*)$", stripped):
            flush()
            level = len(heading.group(1))
            body.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif stripped.startswith("- "):
            if paragraph:
                flush()
            listing.append(stripped[2:])
        elif image := IMAGE.match(stripped):
            flush()
            body.append(image_html(image.group("alt"), image.group("path"), base))
        elif stripped.startswith(("<details>", "</details>")):
            flush()
            summary = re.match(r"^<details><summary>(.*)</summary>$", stripped)
            if summary:
                body.append(f"<details><summary>{inline(summary.group(1))}</summary>")
            else:
                body.append("</details>" if stripped == "</details>" else "<details>")
        else:
            if listing:
                flush()
            paragraph.append(stripped)
    flush()
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head><body>",
        *body,
        "</body></html>",
        "",
    ])
