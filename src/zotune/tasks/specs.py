r"""The task declarations: where each task's data lives, its template, candidates and labels.

A task is data, as in lm-evaluation-harness's YAML tasks: a dataset (local files and a hub
id), a template (row → context), the candidates (label words) and the target (raw label →
candidate index). A small function appears only where data cannot say it: normalizing a
nested row (MultiRC, WSC, WinoGrande's two forms) and WinoGrande's per-option contexts.

Whitespace convention: contexts never end in whitespace; each candidate carries its leading
space (``" great"``), so context + candidate is the text the model reads. Text fields are
stripped. Where every candidate shares the context and is one word, the scorer runs the
context once for all candidates.

Task-aligned templates (``template=True``), after MeZO / ZO-Bench. MeZO ends its prompts with
``\n`` and puts the answer word on the next line; here the prompt ends at the question and the
answer word follows with a space (``"... Yes or No?" + " Yes"``), so that every answer is one
ordinary word token (a bare ``"Yes"`` after a newline tokenizes differently across models, and
the whitespace rule above stays uniform).

``zotune tasks --markdown`` prints every task's context and candidates, rendered from the
specs below (COPA's connective is "so" for an effect question, "because" for a cause).

Candidates are listed in label order: candidate i is label i of the hub's integer encoding
(SST-2 0 negative; RTE 0 entailment, 1 not_entailment; CB 0 entailment, 1 contradiction,
2 neutral; BoolQ, WSC, WiC, MultiRC 0 false; COPA 0 choice1; WinoGrande answer "1" → 0), and
the string / boolean labels of the local files map to the same indices.

COPA candidates are a space + the choice with its first letter lowercased unless the first
word is "I" (MeZO's "correct" capitalization); both candidates share the premise context.

WinoGrande is scored by *partial scoring* (Trinh & Le 2018; the GPT-3 paper; llm-foundry): each
option is put in its own context, the text before the blank + the option, and both candidates
score the same continuation, the text after the blank. Only the words the option should predict
are scored, so the comparison is not biased by how likely each option's name is on its own.
(ZO-Bench instead scores option + rest as the continuation of the text before the blank.)

MultiRC: every answer option of every question is one binary example (is this answer
correct?), as in MeZO, so one paragraph yields many examples.

No task alignment (``template=False``, the paper's alignment ablation): the context is the raw
input alone, its fields joined by newlines with no prompt words, and the candidates stay the
same label words. SST-2 and COPA match ZO-Bench's ``*TemplateEmpty`` (COPA keeps the premise
without its final period and drops the connective). WinoGrande has no prompt words to drop;
without alignment the option is no longer placed in the sentence: the context is the raw
sentence, blank included, and the candidates are the two options as words.

The raw contexts are in the second table of ``zotune tasks --markdown``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TaskDataError
from .example import Example
from .formats import (
    Row,
    as_is,
    copa_rows,
    multirc_rows,
    read_glue_tsv,
    read_jsonl,
    winogrande_rows,
    wsc_rows,
)

Reader = Callable[[Path], Iterator[tuple[int, Row]]]


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


@dataclass(frozen=True)
class HubDataset:
    """The same data on the Hugging Face hub (``datasets.load_dataset(path, config)``)."""

    path: str
    config: str | None
    train: str = "train"
    dev: str = "validation"


@dataclass(frozen=True, eq=False)
class TaskSpec:
    """One task, declared as data.

    ``context`` / ``raw_context`` build the shared context with / without the task-aligned
    template; ``choices`` are the candidates (a constant tuple of label words, or a function of
    the row). ``pairs`` replaces ``context`` where each candidate needs its own context
    (WinoGrande). ``labels`` maps a raw label value (as any source spells it) to the index of
    its candidate. ``fields`` are the text fields a canonical row must hold; ``normalize``
    turns a source row into canonical rows.
    """

    name: str
    description: str
    local: LocalFiles
    hub: HubDataset
    fields: tuple[str, ...]
    label_field: str
    labels: Mapping[Any, int]
    raw_context: Callable[[Row], str]
    choices: tuple[str, ...] | Callable[[Row], tuple[str, ...]]
    context: Callable[[Row], str] | None = None
    pairs: Callable[[Row], tuple[tuple[str, ...], tuple[str, ...]]] | None = None
    normalize: Callable[[Row], list[Row]] = as_is

    def check(self, row: Row) -> None:
        """Raise :class:`TaskDataError` unless ``row`` has every field the template reads."""
        for name in (*self.fields, self.label_field):
            if name not in row:
                raise TaskDataError(f"missing field {name!r}")
        for name in self.fields:
            if not isinstance(row[name], str):
                raise TaskDataError(f"field {name!r} should be text, got {row[name]!r:.60}")

    def label_of(self, row: Row) -> int:
        value = row[self.label_field]
        try:
            return self.labels[value]
        except (KeyError, TypeError):
            allowed = ", ".join(repr(key) for key in self.labels)
            raise TaskDataError(f"label {value!r} is not one of {allowed}") from None

    def example(self, row: Row, template: bool = True) -> Example:
        """The :class:`Example` of one checked canonical row."""
        label = self.label_of(row)
        if template and self.pairs is not None:
            contexts, continuations = self.pairs(row)
            return Example(contexts, continuations, label)
        build = self.context if template and self.context is not None else self.raw_context
        context = build(row)
        continuations = self.choices(row) if callable(self.choices) else self.choices
        return Example((context,) * len(continuations), continuations, label)

    def examples(self, raw: Row, template: bool = True) -> list[Example]:
        """Normalize, check and template one raw row as a source ships it."""
        rows = self.normalize(raw)
        for row in rows:
            self.check(row)
        return [self.example(row, template) for row in rows]


def _text(row: Row, name: str) -> str:
    return row[name].strip()


# Label encodings: SuperGLUE JSONL spells labels as strings or JSON booleans, the hub as
# integers; Python's True == 1 lets the integer keys cover booleans.
_BINARY = {0: 0, 1: 1}
_SUPERGLUE = "aps/super_glue"


def _sst2(row: Row) -> str:
    return f"{_text(row, 'sentence')} It was"


def _premise_without_period(row: Row) -> str:
    premise = _text(row, "premise")
    return premise[:-1] if premise.endswith(".") else premise


def _copa(row: Row) -> str:
    connective = "so" if row["question"] == "effect" else "because"
    return f"{_premise_without_period(row)} {connective}"


def _lowercase_first_letter(text: str) -> str:
    first_word = text.split(" ", 1)[0]
    if first_word == "I" or first_word.startswith("I'"):
        return text
    return text[:1].lower() + text[1:]


def _copa_choices(row: Row) -> tuple[str, ...]:
    return tuple(" " + _lowercase_first_letter(_text(row, key)) for key in ("choice1", "choice2"))


def _winogrande_pairs(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    before, after = row["sentence"].split("_")
    options = (_text(row, "option1"), _text(row, "option2"))
    continuation = after.rstrip()
    return tuple(f"{before.lstrip()}{option}" for option in options), (continuation,) * 2


def _winogrande_choices(row: Row) -> tuple[str, ...]:
    return (" " + _text(row, "option1"), " " + _text(row, "option2"))


def _multirc(row: Row) -> str:
    return (
        f"{_text(row, 'paragraph')}\nQuestion: {_text(row, 'question')}\n"
        f'I found this answer "{_text(row, "answer")}". Is that correct? Yes or No?'
    )


def _rte(row: Row) -> str:
    return (
        f"{_text(row, 'premise')}\n"
        f'Does this mean that "{_text(row, "hypothesis")}" is true? Yes or No?'
    )


def _cb(row: Row) -> str:
    return (
        f"Suppose {_text(row, 'premise')} "
        f'Can we infer that "{_text(row, "hypothesis")}"? Yes, No, or Maybe?'
    )


def _boolq(row: Row) -> str:
    question = _text(row, "question")
    if not question.endswith("?"):
        question += "?"
    return f"{_text(row, 'passage')} {question[:1].upper()}{question[1:]}"


def _wsc(row: Row) -> str:
    return (
        f"{_text(row, 'text')}\nIn the previous sentence, does the pronoun "
        f'"{_text(row, "span2_text").lower()}" refer to {_text(row, "span1_text")}? Yes or No?'
    )


def _wic(row: Row) -> str:
    return (
        f'Does the word "{_text(row, "word")}" have the same meaning in these two sentences? '
        f"Yes, No?\n{_text(row, 'sentence1')}\n{_text(row, 'sentence2')}"
    )


def _joined(*names: str) -> Callable[[Row], str]:
    """The no-alignment context: the raw fields, one per line (empty ones left out)."""

    def raw_context(row: Row) -> str:
        return "\n".join(text for name in names if (text := _text(row, name)))

    return raw_context


def _superglue(folder: str) -> LocalFiles:
    return LocalFiles(folder, dev=("val.jsonl",), train=("train.jsonl",))


_SPECS = (
    TaskSpec(
        name="sst2",
        description="SST-2 movie-review sentiment (GLUE): '{sentence} It was' terrible / great",
        local=LocalFiles("sst2", dev=("dev.tsv",), train=("train.tsv",), reader=read_glue_tsv),
        hub=HubDataset("nyu-mll/glue", "sst2"),
        fields=("sentence",),
        label_field="label",
        labels={"0": 0, "1": 1, **_BINARY},
        context=_sst2,
        raw_context=_joined("sentence"),
        choices=(" terrible", " great"),
    ),
    TaskSpec(
        name="copa",
        description="COPA causal reasoning (SuperGLUE): premise + so / because + alternative",
        local=_superglue("copa"),
        hub=HubDataset(_SUPERGLUE, "copa"),
        fields=("premise", "choice1", "choice2", "question"),
        label_field="label",
        labels=_BINARY,
        context=_copa,
        raw_context=_premise_without_period,
        choices=_copa_choices,
        normalize=copa_rows,
    ),
    TaskSpec(
        name="winogrande",
        description="WinoGrande coreference: option in the context, score the rest of the sentence",
        local=LocalFiles(
            "winogrande",
            dev=("dev.jsonl", "val.jsonl", "winogrande.jsonl"),
            train=(
                "train.jsonl",
                "train_xl.jsonl",
                "train_l.jsonl",
                "train_m.jsonl",
                "train_s.jsonl",
                "train_xs.jsonl",
            ),
        ),
        hub=HubDataset("allenai/winogrande", "winogrande_xl"),
        fields=("sentence", "option1", "option2"),
        label_field="answer",
        labels={"1": 0, "2": 1, 1: 0, 2: 1},
        pairs=_winogrande_pairs,
        raw_context=_joined("sentence"),
        choices=_winogrande_choices,
        normalize=winogrande_rows,
    ),
    TaskSpec(
        name="multirc",
        description="MultiRC reading comprehension (SuperGLUE): is this answer correct? per answer",
        local=_superglue("multirc"),
        hub=HubDataset(_SUPERGLUE, "multirc"),
        fields=("paragraph", "question", "answer"),
        label_field="label",
        labels=_BINARY,
        context=_multirc,
        raw_context=_joined("paragraph", "question", "answer"),
        choices=(" No", " Yes"),
        normalize=multirc_rows,
    ),
    TaskSpec(
        name="rte",
        description="RTE entailment (SuperGLUE): does the premise mean the hypothesis? Yes / No",
        local=_superglue("rte"),
        hub=HubDataset(_SUPERGLUE, "rte"),
        fields=("premise", "hypothesis"),
        label_field="label",
        labels={"entailment": 0, "not_entailment": 1, **_BINARY},
        context=_rte,
        raw_context=_joined("premise", "hypothesis"),
        choices=(" Yes", " No"),
    ),
    TaskSpec(
        name="cb",
        description="CommitmentBank (SuperGLUE): can we infer the hypothesis? Yes / No / Maybe",
        local=_superglue("cb"),
        hub=HubDataset(_SUPERGLUE, "cb"),
        fields=("premise", "hypothesis"),
        label_field="label",
        labels={"entailment": 0, "contradiction": 1, "neutral": 2, **_BINARY, 2: 2},
        context=_cb,
        raw_context=_joined("premise", "hypothesis"),
        choices=(" Yes", " No", " Maybe"),
    ),
    TaskSpec(
        name="boolq",
        description="BoolQ (SuperGLUE): yes / no questions about a Wikipedia passage",
        local=_superglue("boolq"),
        hub=HubDataset(_SUPERGLUE, "boolq"),
        fields=("passage", "question"),
        label_field="label",
        labels=_BINARY,
        context=_boolq,
        raw_context=_joined("passage", "question"),
        choices=(" No", " Yes"),
    ),
    TaskSpec(
        name="wsc",
        description="Winograd Schema (SuperGLUE): does the pronoun refer to this noun? Yes / No",
        local=_superglue("wsc"),
        hub=HubDataset(_SUPERGLUE, "wsc.fixed"),
        fields=("text", "span1_text", "span2_text"),
        label_field="label",
        labels=_BINARY,
        context=_wsc,
        raw_context=_joined("text", "span2_text", "span1_text"),
        choices=(" No", " Yes"),
        normalize=wsc_rows,
    ),
    TaskSpec(
        name="wic",
        description="Word-in-Context (SuperGLUE): one meaning of a word in two sentences? Yes / No",
        local=_superglue("wic"),
        hub=HubDataset(_SUPERGLUE, "wic"),
        fields=("word", "sentence1", "sentence2"),
        label_field="label",
        labels=_BINARY,
        context=_wic,
        raw_context=_joined("word", "sentence1", "sentence2"),
        choices=(" No", " Yes"),
    ),
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}


def list_tasks() -> list[str]:
    """Task names, the paper's four first."""
    return list(TASKS)


def get_task(name: str) -> TaskSpec:
    """The spec of a task; ``"SST-2"`` and ``"sst2"`` name the same one."""
    spec = TASKS.get(name.lower().replace("-", ""))
    if spec is None:
        raise ValueError(f"Unknown task {name!r} (choose from {', '.join(TASKS)})")
    return spec
