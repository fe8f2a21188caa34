"""``zotune tasks --check FILE``: read a task file and all its data, show three examples."""

from __future__ import annotations

from pathlib import Path

from .sources import read_pools, resolve_data_dir
from .spec import TaskSpec
from .taskfile import load_task_file

SHOWN = 3


def check_task_file(path: str | Path, data_dir: str | None = None) -> str:
    """The report of a valid task file: its sources and row counts, then the first three dev
    examples rendered with their candidates (the gold one marked) or gold answers. A mistake
    raises :class:`~zotune.tasks.taskfile.TaskFileError` (or ``TaskDataError`` for a data
    line), one line naming the file and the key or line."""
    spec = load_task_file(path)
    pools = read_pools(spec, resolve_data_dir(data_dir) if spec.local is None else None)
    train = f", {len(pools.train.records)} train rows" if pools.train else ", no train file"
    lines = [
        f"{spec.name}: {len(pools.dev.records)} dev rows{train}; loss {spec.loss}, "
        f"metric {spec.metric}",
    ]
    for record in pools.dev.records[:SHOWN]:
        lines.extend(["", f"--- {record.where}", *_shown(spec, record.row)])
    return "\n".join(lines)


def _shown(spec: TaskSpec, row) -> list[str]:
    example = spec.example(row)
    lines = [f"context: {example.contexts[0]!r}"]
    if example.generation:
        lines.append(f"trained on: {example.continuations[0]!r}")
        lines.append(f"gold answers: {' | '.join(map(repr, example.answers))}")
        return lines
    for index, (context, candidate) in enumerate(
        zip(example.contexts, example.continuations, strict=True)
    ):
        mark = "  <- gold" if example.is_correct(index) else ""
        own = f" after {context!r}" if context != example.contexts[0] else ""
        lines.append(f"candidate {index}: {candidate!r}{own}{mark}")
    return lines
