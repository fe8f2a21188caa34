"""Task files (zotune.tasks.taskfile): the README's example runs as written, generation and
CSV / TSV files load, and every malformed file gets one line naming the file and the key or
line."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from zotune.cli import main
from zotune.tasks import TaskDataError, get_task, load_splits
from zotune.tasks.check import check_task_file

README = Path(__file__).resolve().parents[1] / "README.md"
POSITIVE = ["a joy to watch", "warm and funny", "a delight"]
NEGATIVE = ["a dull mess", "tedious and flat", "painfully boring"]
TINY = ["--model", "random:tiny-llama", "--num-train", "8", "--num-val", "4", "--num-test",
        "6", "--steps", "2", "--batch-size", "4", "--eval-every", "1", "--no-progress"]


def quiet(_message: str) -> None:
    pass


def review_rows(count: int) -> list[dict]:
    return [
        {"review": f"{(POSITIVE if i % 2 else NEGATIVE)[i % 3]} {i}", "label": "pos" if i % 2
         else "neg"}
        for i in range(count)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def readme_example() -> tuple[str, list[str]]:
    """The YAML and the zotune commands of the README's "Your own task" section."""
    section = README.read_text().split("## Your own task", 1)[1].split("\n## ", 1)[0]
    task = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [line.split("#", 1)[0].strip() for line in commands.splitlines()]
    return task, [line for line in lines if line.startswith("zotune ")]


def test_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    task, commands = readme_example()
    assert len(task.splitlines()) + len(commands) <= 10
    (tmp_path / "reviews.yaml").write_text(task)
    write_jsonl(tmp_path / "reviews-dev.jsonl", review_rows(12))
    write_jsonl(tmp_path / "reviews-train.jsonl", review_rows(30))
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "train":
            argv += TINY  # the README's run, shrunk to a test's size (later flags win)
        assert main(argv) == 0, command
    out = capsys.readouterr().out
    assert "reviews: 12 dev rows, 30 train rows" in out
    assert "candidate 1: ' great'  <- gold" in out
    assert "test accuracy" in out


def test_the_readme_example_fits_its_splits_to_a_small_file(tmp_path):
    """The README's command with the default sizes: val scales down to the 30-row train file
    (one line says so), and a task file's missing test split is called a missing file."""
    task, _ = readme_example()
    (tmp_path / "reviews.yaml").write_text(task)
    write_jsonl(tmp_path / "reviews-dev.jsonl", review_rows(12))
    write_jsonl(tmp_path / "reviews-train.jsonl", [
        {"review": f"review number {i}", "label": "pos" if i % 2 else "neg"} for i in range(30)
    ])
    logged = []
    splits = load_splits(str(tmp_path / "reviews.yaml"), log=logged.append)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 12)
    assert logged[0].startswith("reviews: no test file; test = 12 examples of reviews-dev.jsonl")
    assert ("reviews: val = 6 of the 30 examples in reviews-train.jsonl (the default "
            "num_val=500 does not fit; --num-val sets it)") in logged
    assert not any("no labels" in line for line in logged)


def test_a_task_file_is_a_taskspec_like_the_builtins(tmp_path):
    task, _ = readme_example()
    (tmp_path / "reviews.yaml").write_text(task)
    write_jsonl(tmp_path / "reviews-dev.jsonl", review_rows(12))
    write_jsonl(tmp_path / "reviews-train.jsonl", review_rows(30))
    spec = get_task(str(tmp_path / "reviews.yaml"))
    builtin = get_task("sst2")
    assert type(spec) is type(builtin)
    row = {"review": "a delight", "label": "pos"}
    assert spec.example(row) == builtin.example({"sentence": "a delight", "label": 1})
    splits = load_splits(str(tmp_path / "reviews.yaml"), num_train=8, num_val=4, num_test=6,
                         log=quiet)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 6)


@pytest.mark.parametrize("fmt,sep", [("csv", ","), ("tsv", "\t")])
def test_csv_and_tsv_files_by_extension(tmp_path, fmt, sep):
    lines = [f"review{sep}label", *[f"{r['review']}{sep}{r['label']}" for r in review_rows(6)]]
    (tmp_path / f"dev.{fmt}").write_text("\n".join(lines) + "\n")
    (tmp_path / "t.yaml").write_text(
        f"data: {{dev: dev.{fmt}}}\ntemplate: '{{review}} It was'\n"
        "candidates: [' terrible', ' great']\nlabels: {neg: 0, pos: 1}\n"
    )
    report = check_task_file(tmp_path / "t.yaml")
    assert f"dev.{fmt} line 2" in report and "candidate 0: ' terrible'  <- gold" in report


def test_a_generation_task_file(tmp_path):
    rows = [{"q": f"What is {i} plus one?", "a": [str(i + 1), f"{i + 1}."]} for i in range(9)]
    write_jsonl(tmp_path / "qa.jsonl", rows)
    (tmp_path / "qa.yaml").write_text(
        "data: {dev: qa.jsonl}\ntemplate: \"Question: {q}\\nAnswer:\"\nanswer_field: a\n"
    )
    spec = get_task(str(tmp_path / "qa.yaml"))
    example = spec.example(rows[2])
    assert (spec.loss, spec.metric, spec.generation) == ("lm", "squad_f1", True)
    assert example.contexts == ("Question: What is 2 plus one?\nAnswer:",)
    assert example.continuations == (" 3\n",) and example.answers == ("3", "3.")
    assert "gold answers: '1' | '1.'" in check_task_file(tmp_path / "qa.yaml")


GOOD = {
    "data": {"dev": "dev.jsonl"},
    "template": "{review} It was",
    "candidates": [" terrible", " great"],
    "labels": {"neg": 0, "pos": 1},
}


def _without(key):
    return {k: v for k, v in GOOD.items() if k != key}


# (task file as a dict or raw text, dev rows as JSONL text or None, what the one line names)
MALFORMED = {
    "missing key": (_without("template"), None, ["t.yaml", "template: missing"]),
    "unknown key": ({**GOOD, "templat": "x"}, None, ["t.yaml", "templat: unknown key"]),
    "empty template field": ({**GOOD, "template": "{} It was"}, None,
                             ["t.yaml", "template: empty template field {}"]),
    "unknown format": ({**GOOD, "data": {"dev": "dev.jsonl", "format": "xml"}}, None,
                       ["t.yaml", "data.format: unknown format 'xml'"]),
    "unreadable data file": ({**GOOD, "data": {"dev": "nope.jsonl"}}, None,
                             ["t.yaml", "data.dev: cannot read", "nope.jsonl"]),
    "missing field": (GOOD, '{"review": "ok", "label": "pos"}\n{"label": "neg"}\n',
                      ["dev.jsonl line 2", "missing field 'review'"]),
    "label not in the mapping": (GOOD, '{"review": "ok", "label": "pos"}\n'
                                 '{"review": "hm", "label": "meh"}\n',
                                 ["dev.jsonl line 2", "label 'meh' is not one of"]),
    "empty data field": (GOOD, '{"review": "ok", "label": "pos"}\n'
                         '{"review": "ok", "label": "pos"}\n{"review": " ", "label": "neg"}\n',
                         ["dev.jsonl line 3", "field 'review' is empty"]),
    "not JSON": (GOOD, '{"review": "ok", "label": "pos"}\n{"review": \n',
                 ["dev.jsonl line 2", "not valid JSON"]),
    "not YAML": ("template: [unclosed\n", None, ["t.yaml", "not valid YAML"]),
    "both kinds": ({**GOOD, "answer_field": "a"}, None,
                   ["t.yaml", "answer_field: give either candidates"]),
    "label index out of range": ({**GOOD, "labels": {"neg": 0, "pos": 2}}, None,
                                 ["t.yaml", "labels: 'pos' maps to 2"]),
    "no data": (_without("data"), None, ["t.yaml", "data: missing"]),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_each_mistake_is_one_line_naming_file_and_key_or_line(tmp_path, case, capsys):
    task, rows, expected = MALFORMED[case]
    text = task if isinstance(task, str) else json.dumps(task)
    (tmp_path / "t.yaml").write_text(text)
    (tmp_path / "dev.jsonl").write_text(rows or '{"review": "ok", "label": "pos"}\n')
    with pytest.raises(TaskDataError) as error:
        check_task_file(tmp_path / "t.yaml")
    message = str(error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message
    assert main(["tasks", "--check", str(tmp_path / "t.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_missing_task_file_is_named(tmp_path):
    with pytest.raises(TaskDataError, match=r"nope\.yaml: no such task file"):
        get_task(str(tmp_path / "nope.yaml"))
