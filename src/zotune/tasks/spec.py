r"""The task type: where a task's data lives, its templates, labels and paper loss.

A task is data, as in lm-evaluation-harness's YAML tasks: a dataset (local files and a hub
id), templates (row → the contexts and continuations of its candidates), the target (raw label
→ candidate index), the training loss of the paper's runs and the size of its validation split.
A small function appears only where data cannot say it: normalizing a nested row (MultiRC,
WSC, WinoGrande's two forms).

Candidate ``i`` of an example is the text ``contexts[i] + continuations[i]``; the scorer
tokenizes that joined text and scores its tail (see :mod:`zotune.evaluation.scoring`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TaskDataError
from .example import Example
from .formats import Row, as_is, read_jsonl

Reader = Callable[[Path], Iterator[tuple[int, Row]]]
# A template: one canonical row → (contexts, continuations), one pair per candidate.
Template = Callable[[Row], tuple[tuple[str, ...], tuple[str, ...]]]

REFERENCE = "reference"
TEMPLATE_VERSIONS = (REFERENCE, "zotune-0.1")
LOSSES = ("ce", "lm")
# zo-bench/run.py (--num_dev) with MeZO's large_models/mezo.sh DEV=500 for most tasks.
DEFAULT_NUM_VAL = 500
# MeZO large_models/run.py: max_new_tokens = 50 (generation tasks' answer budget).
DEFAULT_MAX_NEW_TOKENS = 50
METRICS = ("accuracy", "squad_f1", "drop_f1")


@dataclass(frozen=True)
class LocalFiles:
    """Where a task's labelled files lie under the data directory.

    ``dev`` and ``train`` list accepted file names, the first that exists wins. ``dev`` (the
    official validation split, the source of the test set) is required; ``train`` is optional
    and, when absent, every split is carved from ``dev``. Public test files carry no labels
    and are never read.
    """

    folder: str
    dev: tuple[str, ...]
    train: tuple[str, ...]
    reader: Reader = read_jsonl
    # Read the hub when the data directory has no folder for the task (DROP, ReCoRD: local
    # files are a test's fixture, the data itself comes from the hub).
    hub_fallback: bool = False


@dataclass(frozen=True)
class HubDataset:
    """The same data on the Hugging Face hub (``datasets.load_dataset(path, config)``)."""

    path: str
    config: str | None
    train: str = "train"
    dev: str = "validation"


@dataclass(frozen=True, eq=False)
class TaskSpec:
    """One task, declared as data (built-in in :mod:`zotune.tasks.builtin`, or read from a task
    file by :mod:`zotune.tasks.taskfile`).

    ``templates`` maps a version name to the task-aligned template of that version; a task
    lists ``"reference"`` and, where zotune 0.1 wrote it differently, ``"zotune-0.1"``.
    ``raw`` is the template without alignment. ``labels`` maps a raw label value (as any
    source spells it) to the index of its candidate; None means the label field holds the
    index itself (ReCoRD). ``fields`` are the text fields a canonical row must hold;
    ``normalize`` turns a source row into canonical rows. ``loss`` is the training loss of
    the paper's runs and ``num_val`` the size of their validation split (see
    :mod:`zotune.tasks.builtin`).

    Generation tasks set ``answers_field`` (the row's gold answers, a list or one string):
    their examples are decoded greedily (at most ``max_new_tokens``) and scored by
    ``metric`` (``squad_f1``: SQuAD's normalisation; ``drop_f1``: DROP's, numbers and
    spans). ``correct_field`` lists every right candidate where several are (ReCoRD).
    ``group_field`` keeps rows that share its value in one split when splits are carved
    from one file (SQuAD: the article). ``local`` or ``hub`` may be None where the task has
    no such source; ``source`` is the task file a spec was read from.
    """

    name: str
    description: str
    local: LocalFiles | None
    hub: HubDataset | None
    fields: tuple[str, ...]
    label_field: str
    labels: Mapping[Any, int] | None
    templates: Mapping[str, Template]
    raw: Template
    loss: str = "ce"
    num_val: int = DEFAULT_NUM_VAL
    normalize: Callable[[Row], list[Row]] = as_is
    answers_field: str | None = None
    correct_field: str | None = None
    metric: str = "accuracy"
    group_field: str | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    source: str | None = None
    calibration: Template | None = None

    @property
    def generation(self) -> bool:
        return self.answers_field is not None

    def check(self, row: Row) -> None:
        """Raise :class:`TaskDataError` unless ``row`` has every field the template reads."""
        for name in (*self.fields, self.label_field):
            if name not in row:
                raise TaskDataError(f"missing field {name!r}")
        for name in self.fields:
            if not isinstance(row[name], str):
                raise TaskDataError(f"field {name!r} should be text, got {row[name]!r:.60}")
        if self.generation:
            self.answers_of(row)

    def answers_of(self, row: Row) -> tuple[str, ...]:
        """The gold answers of a generation row (at least one, each text)."""
        value = row[self.answers_field]
        answers = (value,) if isinstance(value, str) else value
        if (
            not isinstance(answers, (list, tuple))
            or not answers
            or not all(isinstance(a, str) and a.strip() for a in answers)
        ):
            raise TaskDataError(
                f"field {self.answers_field!r} should hold one or more non-empty answers, "
                f"got {value!r:.60}"
            )
        return tuple(answers)

    def label_of(self, row: Row) -> int:
        if self.generation:
            return 0
        value = row[self.label_field]
        if self.labels is None:
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
            raise TaskDataError(f"label {value!r} is not a candidate index")
        try:
            return self.labels[value]
        except (KeyError, TypeError):
            allowed = ", ".join(repr(key) for key in self.labels)
            raise TaskDataError(f"label {value!r} is not one of {allowed}") from None

    def template(self, template: bool = True, version: str = REFERENCE) -> Template:
        """The template of ``version`` (the raw one when ``template`` is False)."""
        check_version(version)
        if not template:
            return self.raw
        return self.templates.get(version, self.templates[REFERENCE])

    def example(self, row: Row, template: bool = True, version: str = REFERENCE) -> Example:
        """The :class:`Example` of one checked canonical row."""
        contexts, continuations = self.template(template, version)(row)
        answers = self.answers_of(row) if self.generation else ()
        correct = tuple(row[self.correct_field]) if self.correct_field else ()
        calibration = self.calibration(row) if self.calibration and template else None
        try:
            return Example(
                contexts, continuations, self.label_of(row), answers, correct, calibration
            )
        except ValueError as err:
            raise TaskDataError(str(err)) from None

    def examples(self, raw: Row, template: bool = True, version: str = REFERENCE) -> list[Example]:
        """Normalize, check and template one raw row as a source ships it."""
        rows = self.normalize(raw)
        for row in rows:
            self.check(row)
        return [self.example(row, template, version) for row in rows]


def check_version(version: str) -> None:
    if version not in TEMPLATE_VERSIONS:
        raise ValueError(
            f"unknown template version {version!r} (choose from {', '.join(TEMPLATE_VERSIONS)})"
        )
