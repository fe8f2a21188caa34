"""``zotune tasks --markdown``: every task's template and data, rendered from its spec.

Each template is shown by building the task's example from a placeholder row, a row whose
text fields hold their own names (``{"sentence": "{sentence}"}``), so the table is what the
code does, not a description of it, and cannot drift from it. A field the template reads as
a category rather than as text (COPA's ``question``) shows the branch its placeholder takes.
"""

from __future__ import annotations

from ..utils.tables import markdown_table
from .builtin import TASKS
from .spec import TaskSpec


def placeholder_row(spec: TaskSpec) -> dict[str, object]:
    """A canonical row of ``spec`` whose text fields hold ``{name}`` and whose label is the
    first one the spec knows."""
    row: dict[str, object] = {name: "{" + name + "}" for name in spec.fields}
    if spec.generation:
        row[spec.answers_field] = ["{answer}"]
    else:
        row[spec.label_field] = 0 if spec.labels is None else next(iter(spec.labels))
    if spec.name == "winogrande":  # its templates split the sentence at the blank
        row["sentence"] = "{text before the blank} _ {text after it}"
    if spec.name == "record":  # the candidates are the passage's entities
        row.update(query="{query}, @placeholder in it", entities=["{entity 1}", "{entity 2}"])
        row["correct"] = [0]
    return row


def _shown(text: str) -> str:
    """A context or candidate as a Markdown table cell: code, newlines as ``\\n``."""
    return "`" + repr(text)[1:-1].replace("|", "\\|").replace("`", "'") + "`"


def _cells(spec: TaskSpec, template: bool) -> tuple[str, str]:
    example = spec.example(placeholder_row(spec), template)
    contexts = " / ".join(_shown(c) for c in dict.fromkeys(example.contexts))
    candidates = ", ".join(_shown(c) for c in example.continuations)
    return contexts, candidates


def _files(spec: TaskSpec) -> str:
    if spec.local is None:
        return "none: the hub"
    train = ", ".join(spec.local.train) if spec.local.train else "none: carved from dev"
    return f"{spec.local.folder}/ dev: {', '.join(spec.local.dev)}; train: {train}"


def tasks_markdown() -> str:
    """Two Markdown tables: the task-aligned templates, and the raw (unaligned) contexts
    with the data each task reads."""
    aligned, raw = [], []
    for name, spec in TASKS.items():
        aligned.append((name, *_cells(spec, template=True)))
        context, candidates = _cells(spec, template=False)
        hub = "" if spec.hub is None else spec.hub.path
        hub += f" ({spec.hub.config})" if spec.hub is not None and spec.hub.config else ""
        raw.append((name, context, candidates, _files(spec), hub))
    return "\n".join(
        [
            "## Task-aligned templates",
            "",
            markdown_table(("task", "context", "candidates (label order)"), aligned),
            "",
            "## Without alignment, and the data",
            "",
            markdown_table(
                ("task", "context", "candidates", "local files", "hub dataset"), raw
            ),
            "",
        ]
    )
