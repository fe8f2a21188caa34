"""zotune tasks --markdown: the task tables rendered from the specs."""

from __future__ import annotations

import pytest

from zotune.cli import main
from zotune.tasks.builtin import TASKS
from zotune.tasks.catalog import placeholder_row, tasks_markdown


def test_markdown_has_one_row_per_task_in_each_table(capsys):
    assert main(["tasks", "--markdown"]) == 0
    printed = capsys.readouterr().out
    assert printed == tasks_markdown()
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert names == ["task", *TASKS, "task", *TASKS]
    assert "| sst2 | `{sentence} It was` | ` terrible`, ` great` |" in printed


# Fields an example shows as what they select, not as their placeholder: COPA's question
# picks the connective, WinoGrande's sentence is split at its blank.
SHOWN_OTHERWISE = {"copa": {"question"}, "winogrande": {"sentence"}}


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("template", [True, False])
def test_every_other_text_field_shows_in_the_rendered_example(name, template):
    spec = TASKS[name]
    example = spec.example(placeholder_row(spec), template)
    text = "".join((*example.contexts, *example.continuations))
    missing = {field for field in spec.fields if "{" + field + "}" not in text}
    assert missing == SHOWN_OTHERWISE.get(name, set())
