r"""The task declarations: where each task's data lives, its templates, labels and paper loss.

A task is data, as in lm-evaluation-harness's YAML tasks: a dataset (local files and a hub
id), templates (row → the contexts and continuations of its candidates), the target (raw label
→ candidate index), the training loss of the paper's runs and the size of its validation split.
A small function appears only where data cannot say it: normalizing a nested row (MultiRC,
WSC, WinoGrande's two forms).

Candidate ``i`` of an example is the text ``contexts[i] + continuations[i]``; the scorer
tokenizes that joined text and scores its tail (see :mod:`zotune.evaluation.scoring`).

Template versions (``version=``). ``"reference"`` (the default) writes every prompt as ZO-Bench's
``zo-bench/templates.py`` (ZO-Bench/ZO-LLM, commit bf210fa) does, with the template its
``run.py`` picks (``--template_ver 0``); MeZO's ``large_models/templates.py`` (princeton-nlp/MeZO,
commit 552cb1b) holds the same strings for the tasks both have, except BoolQ (below). The
reference builds ``encode(row)`` (the prompt) and ``verbalize(row, c)`` (prompt + answer c) and
strips spaces, not newlines, from both ends (``zo-bench/utils.py::encode_prompt``); the context
here is the stripped prompt and the continuation the rest of the stripped verbalization, so
context + continuation is byte for byte the text the reference tokenizes. Fields are used as
the reference uses them (stripped only where it strips). ``"zotune-0.1"`` keeps zotune 0.1's
prompts, to reproduce results made with it.

``zotune tasks --markdown`` prints every task's context and candidates, rendered from the
specs below (COPA's connective is "so" for an effect question, "because" for a cause).

COPA's choice is written with its whole first word lower-cased unless that word is exactly
"I" (``CopaTemplate.capitalize``, capitalization "correct": ``"I'm"`` becomes ``"i'm"``).
WinoGrande's continuation is the option and the rest of the sentence (the reference's
candidates are ``option + text after _``). BoolQ: ZO-Bench's ``run.py`` passes
``template_ver=0``, i.e. ``BoolQTemplate`` (answer after a space); MeZO's ``run.py`` calls
``get_template()`` whose BoolQ default is ``BoolQTemplateV3`` (answer after ``\n``).

``"zotune-0.1"`` differs from the reference for COPA (only the first letter of the choice
lower-cased, ``I'…`` kept), WinoGrande (partial scoring: each option in its own context,
both scoring the text after the blank) and MultiRC, RTE, CB, WSC, WiC (the prompt ends at the
question mark and the answer follows a space).

Candidates are listed in label order: candidate i is label i of the hub's integer encoding
(SST-2 0 negative; RTE 0 entailment, 1 not_entailment; CB 0 entailment, 1 contradiction,
2 neutral; BoolQ, WSC, WiC, MultiRC 0 false; COPA 0 choice1; WinoGrande answer "1" → 0), and
the string / boolean labels of the local files map to the same indices. (ZO-Bench lists
BoolQ's candidates as Yes, No; the order only decides exact ties.)

MultiRC: every answer option of every question is one binary example (is this answer
correct?), as in MeZO, so one paragraph yields many examples.

No task alignment (``template=False``, the paper's alignment ablation): the prompt words are
dropped and the candidates stay the same label words. SST-2, COPA and RTE use ZO-Bench's
``SST2TemplateEmpty``, ``CopaTemplateEmpty`` and ``RTETemplateEmpty``; the other tasks have
no reference and join their raw fields by newlines, the answer on its own line where the
aligned answer is. WinoGrande has no prompt words to drop; without alignment the option is no
longer placed in the sentence: the context is the raw sentence, blank included, and the
candidates are the two options as words.

The raw contexts are in the second table of ``zotune tasks --markdown``.

Training loss (``loss``): the loss the paper's runs train each task with. ``lm`` (the LM
loss on the gold candidate, ``--train_as_classification False``) for COPA
(``zo-bench/sweeps/Copa_*``, MeZO ``large_models/mezo.sh``) and WinoGrande
(``zo-bench/sweeps/WinoGrande_*``); ``ce`` (cross-entropy over the candidates,
``--train_as_classification``) for SST-2 (``zo-bench/sweeps/SST2_opt-1.3b``) and MeZO's other
classification tasks (``large_models/mezo.sh``: "for others, set this flag to True").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TaskDataError
from .example import Example
from .formats import (
    Row,
    as_is,
    copa_rows,
    drop_rows,
    multirc_rows,
    read_glue_tsv,
    read_jsonl,
    read_squad_json,
    record_rows,
    squad_rows,
    winogrande_rows,
    wsc_rows,
)

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
    """One task, declared as data (built-in here, or read from a task file by
    :mod:`zotune.tasks.taskfile`).

    ``templates`` maps a version name to the task-aligned template of that version; a task
    lists ``"reference"`` and, where zotune 0.1 wrote it differently, ``"zotune-0.1"``.
    ``raw`` is the template without alignment. ``labels`` maps a raw label value (as any
    source spells it) to the index of its candidate; None means the label field holds the
    index itself (ReCoRD). ``fields`` are the text fields a canonical row must hold;
    ``normalize`` turns a source row into canonical rows. ``loss`` is the training loss of
    the paper's runs and ``num_val`` the size of their validation split (see the module
    docstring).

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


def answered(prompt: str, answers: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The reference's (prompt, prompt + answer) pair as (contexts, continuations).

    ``zo-bench/utils.py::encode_prompt`` strips spaces (not newlines) from both ends of the
    prompt and of each verbalization; the continuation is what the stripped verbalization
    adds to the stripped prompt.
    """
    context = prompt.strip(" ")
    continuations = []
    for answer in answers:
        full = (prompt + answer).strip(" ")
        # Leading spaces strip alike from both unless the prompt is only spaces.
        continuations.append(full[len(context) :] if context else full)
    return (context,) * len(answers), tuple(continuations)


def _text(row: Row, name: str) -> str:
    return row[name].strip()


# Label encodings: SuperGLUE JSONL spells labels as strings or JSON booleans, the hub as
# integers; Python's True == 1 lets the integer keys cover booleans.
_BINARY = {0: 0, 1: 1}
_SUPERGLUE = "aps/super_glue"
# The verbalizers of zo-bench/templates.py, in label order.
_SST2_WORDS = ("terrible", "great")  # SST2Template.verbalizer
_NO_YES = ("No", "Yes")  # MultiRCTemplate, WICTemplate, WSCTemplate .verbalizer
_YES_NO = ("Yes", "No")  # RTETemplate.verbalizer
_YES_NO_MAYBE = ("Yes", "No", "Maybe")  # CBTemplate.verbalizer


# Reference templates (zo-bench/templates.py; the class is named beside each) --------------


def _sst2(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # SST2Template: f"{text} It was" + f" {verbalizer[c]}"
    return answered(f"{row['sentence'].strip()} It was", [f" {w}" for w in _SST2_WORDS])


def _sst2_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # SST2TemplateEmpty: f"{text} " + verbalizer[c]
    return answered(f"{row['sentence'].strip()} ", _SST2_WORDS)


def _copa_premise(row: Row) -> str:
    # CopaTemplate.get_prompt: premise.rstrip() without one final "."
    premise = row["premise"].rstrip()
    return premise[:-1] if premise.endswith(".") else premise


def _copa_capitalize(choice: str) -> str:
    # CopaTemplate.capitalize, capitalization "correct": the whole first word lower-cased
    # unless it is exactly "I".
    words = choice.split(" ")
    if words[0] != "I":
        words[0] = words[0].lower()
    return " ".join(words)


def _copa(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # CopaTemplate: effect_conj " so ", cause_conj " because "
    conjunction = " so " if row["question"] == "effect" else " because "
    choices = [_copa_capitalize(row[key]) for key in ("choice1", "choice2")]
    return answered(_copa_premise(row) + conjunction, choices)


def _copa_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # CopaTemplateEmpty: both conjunctions " "
    choices = [_copa_capitalize(row[key]) for key in ("choice1", "choice2")]
    return answered(_copa_premise(row) + " ", choices)


def _winogrande(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # WinoGrandeTemplate: the text before "_"; WinoGrandeDataset.build_sample's candidates
    # are option + the text after "_".
    before, after = row["sentence"].split("_")
    return answered(before, [row["option1"] + after, row["option2"] + after])


def _multirc(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # MultiRCTemplate
    prompt = (
        f"{row['paragraph']}\nQuestion: {row['question']}\n"
        f'I found this answer "{row["answer"]}". Is that correct? Yes or No?\n'
    )
    return answered(prompt, _NO_YES)


def _rte(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # RTETemplate
    prompt = f'{row["premise"]}\nDoes this mean that "{row["hypothesis"]}" is true? Yes or No?\n'
    return answered(prompt, _YES_NO)


def _rte_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # RTETemplateEmpty
    return answered(f'{row["premise"]}\n"{row["hypothesis"]}"\n', _YES_NO)


def _cb(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # CBTemplate
    prompt = (
        f'Suppose {row["premise"]} Can we infer that "{row["hypothesis"]}"? '
        "Yes, No, or Maybe?\n"
    )
    return answered(prompt, _YES_NO_MAYBE)


def _boolq(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # BoolQTemplate (zo-bench/run.py passes template_ver=0)
    question = row["question"]
    if not question.endswith("?"):
        question = question + "?"
    question = question[0].upper() + question[1:]
    return answered(f"{row['passage']} {question}", [f" {w}" for w in _NO_YES])


def _wsc(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # WSCTemplate
    prompt = (
        f"{row['text']}\nIn the previous sentence, does the pronoun "
        f'"{row["span2_text"].lower()}" refer to {row["span1_text"]}? Yes or No?\n'
    )
    return answered(prompt, _NO_YES)


def _wic(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # WICTemplate
    prompt = (
        f'Does the word "{row["word"]}" have the same meaning in these two sentences? '
        f"Yes, No?\n{row['sentence1']}\n{row['sentence2']}\n"
    )
    return answered(prompt, _NO_YES)


def _lines(*names: str, answers: Sequence[str]) -> Template:
    """No alignment without a reference: the raw fields one per line (empty ones left out),
    then the answers on the next line."""

    def raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
        prompt = "\n".join(text for name in names if (text := _text(row, name)))
        return answered(prompt + "\n", answers)

    return raw


def _winogrande_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return answered(row["sentence"].strip(), [f" {_text(row, k)}" for k in ("option1", "option2")])


def _boolq_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    prompt = "\n".join(text for name in ("passage", "question") if (text := _text(row, name)))
    return answered(prompt, [f" {w}" for w in _NO_YES])


# Surface-form calibration prompts: MeZO's encode_sfc / verbalize_sfc
# (large_models/templates.py, the class named beside each): the prompt without the input. -----


def _words_only(words: Sequence[str]) -> Template:
    # MultiRC, RTE, CB, WiC, WSC: encode_sfc "" and verbalize_sfc the verbalizer word; BoolQ:
    # "" and the candidate.
    return lambda row: answered("", words)


def _sst2_sfc(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # SST2Template: encode_sfc " It was", verbalize_sfc " It was {verbalizer[c]}"
    return answered(" It was", [f" {w}" for w in _SST2_WORDS])


def _copa_sfc(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # CopaTemplate: encode_sfc conjunction.strip(), verbalize_sfc + " " + capitalize(choice)
    conjunction = "so" if row["question"] == "effect" else "because"
    choices = [" " + _copa_capitalize(row[key]) for key in ("choice1", "choice2")]
    return answered(conjunction, choices)


def _record_sfc(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # ReCoRDTemplateGPT3: encode_sfc "-", verbalize_sfc "- {query, @placeholder → entity}"
    fulls = [f"- {row['query'].replace('@placeholder', e)}" for e in row["entities"]]
    return verbalized("-", fulls)


# Generation and ReCoRD (MeZO's large_models/templates.py; ZO-Bench has none of them) ------


def _squad(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # SQuADv2Template (MeZO's SQuAD template): encode ends "Answer:", verbalize adds
    # " {answers[0]}\n" (the first gold answer, with the newline the decoding stops at).
    prompt = (
        f"Title: {row['title']}\nContext: {row['context']}\n"
        f"Question: {row['question'].strip()}\nAnswer:"
    )
    return answered(prompt, [f" {row['answers'][0]}\n"])


def _squad_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = ("title", "context", "question")
    prompt = "\n".join(text for name in names if (text := _text(row, name)))
    return answered(prompt + "\n", [f"{row['answers'][0]}\n"])


def _drop(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # DROPTemplate: "Passage: {context}\nQuestion: {question}\nAnswer:" + " {answers[0]}\n"
    prompt = f"Passage: {row['passage']}\nQuestion: {row['question'].strip()}\nAnswer:"
    return answered(prompt, [f" {row['answers'][0]}\n"])


def _drop_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    prompt = "\n".join(text for name in ("passage", "question") if (text := _text(row, name)))
    return answered(prompt + "\n", [f"{row['answers'][0]}\n"])


def verbalized(
    prompt: str, verbalizations: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(contexts, continuations) from an encode / verbalize pair whose verbalization is not
    the prompt + the answer: each stripped of spaces at both ends, the continuation being
    what the verbalization adds after the prompt (MeZO's ``option_len``)."""
    context = prompt.strip(" ")
    continuations = []
    for full in verbalizations:
        full = full.strip(" ")
        if not full.startswith(context):
            raise TaskDataError(f"verbalization {full[:40]!r} does not extend its prompt")
        continuations.append(full[len(context) :])
    return (context,) * len(verbalizations), tuple(continuations)


def _record(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # ReCoRDTemplateGPT3 (what MeZO's ReCoRDDataset.get_template returns): "@highlight\n"
    # becomes "- "; encode "{passage}\n-", verbalize "{passage}\n- {query, @placeholder →
    # the entity}".
    passage = row["passage"].replace("@highlight\n", "- ")
    fulls = [f"{passage}\n- {row['query'].replace('@placeholder', e)}" for e in row["entities"]]
    return verbalized(f"{passage}\n-", fulls)


def _record_raw(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    passage = row["passage"].replace("@highlight\n", "")
    fulls = [f"{passage}\n{row['query'].replace('@placeholder', e)}" for e in row["entities"]]
    return verbalized(f"{passage}\n", fulls)


# zotune 0.1's aligned templates, where they differ from the reference ---------------------


def _same_context(context: str, answers: Sequence[str]):
    return (context,) * len(answers), tuple(answers)


def _copa_v01(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    def lower_first_letter(text: str) -> str:
        first_word = text.split(" ", 1)[0]
        if first_word == "I" or first_word.startswith("I'"):
            return text
        return text[:1].lower() + text[1:]

    premise = _text(row, "premise")
    premise = premise[:-1] if premise.endswith(".") else premise
    connective = "so" if row["question"] == "effect" else "because"
    answers = [" " + lower_first_letter(_text(row, key)) for key in ("choice1", "choice2")]
    return _same_context(f"{premise} {connective}", answers)


def _winogrande_partial(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    before, after = row["sentence"].split("_")
    options = (_text(row, "option1"), _text(row, "option2"))
    return tuple(f"{before.lstrip()}{option}" for option in options), (after.rstrip(),) * 2


def _question_v01(build: Callable[[Row], str], answers: Sequence[str]) -> Template:
    """A 0.1 Yes/No prompt: the reference prompt without its final newline, answers after a
    space, fields stripped."""

    def template(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
        stripped = {key: value.strip() if isinstance(value, str) else value
                    for key, value in row.items()}
        return _same_context(build(stripped).rstrip("\n"), [f" {a}" for a in answers])

    return template


def _prompt_of(template: Template) -> Callable[[Row], str]:
    return lambda row: template(row)[0][0]


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
        templates={REFERENCE: _sst2},
        raw=_sst2_raw,
        loss="ce",  # zo-bench/sweeps/SST2_opt-1.3b: --train_as_classification
        num_val=500,  # zo-bench/sweeps/SST2_opt-1.3b: --num_dev=500
        calibration=_sst2_sfc,
    ),
    TaskSpec(
        name="copa",
        description="COPA causal reasoning (SuperGLUE): premise + so / because + alternative",
        local=_superglue("copa"),
        hub=HubDataset(_SUPERGLUE, "copa"),
        fields=("premise", "choice1", "choice2", "question"),
        label_field="label",
        labels=_BINARY,
        templates={REFERENCE: _copa, "zotune-0.1": _copa_v01},
        raw=_copa_raw,
        loss="lm",  # zo-bench/sweeps/Copa_*: --train_as_classification=False
        num_val=100,  # zo-bench/sweeps/Copa_*: --num_dev=100 (MeZO large_models/mezo.sh DEV=100)
        normalize=copa_rows,
        calibration=_copa_sfc,
    ),
    TaskSpec(
        name="winogrande",
        description="WinoGrande coreference: text before the blank, then option + the rest",
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
        templates={REFERENCE: _winogrande, "zotune-0.1": _winogrande_partial},
        raw=_winogrande_raw,
        loss="lm",  # zo-bench/sweeps/WinoGrande_*: --train_as_classification=False
        num_val=100,  # zo-bench/sweeps/WinoGrande_*: --num_dev=100
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
        templates={REFERENCE: _multirc, "zotune-0.1": _question_v01(_prompt_of(_multirc), _NO_YES)},
        raw=_lines("paragraph", "question", "answer", answers=_NO_YES),
        loss="ce",  # MeZO large_models/mezo.sh: --train_as_classification
        normalize=multirc_rows,
        calibration=_words_only(_NO_YES),
    ),
    TaskSpec(
        name="rte",
        description="RTE entailment (SuperGLUE): does the premise mean the hypothesis? Yes / No",
        local=_superglue("rte"),
        hub=HubDataset(_SUPERGLUE, "rte"),
        fields=("premise", "hypothesis"),
        label_field="label",
        labels={"entailment": 0, "not_entailment": 1, **_BINARY},
        templates={REFERENCE: _rte, "zotune-0.1": _question_v01(_prompt_of(_rte), _YES_NO)},
        raw=_rte_raw,
        loss="ce",  # MeZO large_models/mezo.sh: --train_as_classification
        calibration=_words_only(_YES_NO),
    ),
    TaskSpec(
        name="cb",
        description="CommitmentBank (SuperGLUE): can we infer the hypothesis? Yes / No / Maybe",
        local=_superglue("cb"),
        hub=HubDataset(_SUPERGLUE, "cb"),
        fields=("premise", "hypothesis"),
        label_field="label",
        labels={"entailment": 0, "contradiction": 1, "neutral": 2, **_BINARY, 2: 2},
        templates={REFERENCE: _cb, "zotune-0.1": _question_v01(_prompt_of(_cb), _YES_NO_MAYBE)},
        raw=_lines("premise", "hypothesis", answers=_YES_NO_MAYBE),
        loss="ce",  # MeZO large_models/mezo.sh: --train_as_classification
        num_val=100,  # MeZO large_models/mezo.sh: CB) DEV=100
        calibration=_words_only(_YES_NO_MAYBE),
    ),
    TaskSpec(
        name="boolq",
        description="BoolQ (SuperGLUE): yes / no questions about a Wikipedia passage",
        local=_superglue("boolq"),
        hub=HubDataset(_SUPERGLUE, "boolq"),
        fields=("passage", "question"),
        label_field="label",
        labels=_BINARY,
        templates={REFERENCE: _boolq},
        raw=_boolq_raw,
        loss="ce",  # MeZO large_models/mezo.sh: --train_as_classification
        calibration=_words_only(_NO_YES),
    ),
    TaskSpec(
        name="wsc",
        description="Winograd Schema (SuperGLUE): does the pronoun refer to this noun? Yes / No",
        local=_superglue("wsc"),
        hub=HubDataset(_SUPERGLUE, "wsc.fixed"),
        fields=("text", "span1_text", "span2_text"),
        label_field="label",
        labels=_BINARY,
        templates={REFERENCE: _wsc, "zotune-0.1": _question_v01(_prompt_of(_wsc), _NO_YES)},
        raw=_lines("text", "span2_text", "span1_text", answers=_NO_YES),
        loss="ce",  # MeZO large_models/mezo.sh: --train_as_classification
        normalize=wsc_rows,
        calibration=_words_only(_NO_YES),
    ),
    TaskSpec(
        name="wic",
        description="Word-in-Context (SuperGLUE): one meaning of a word in two sentences? Yes / No",
        local=_superglue("wic"),
        hub=HubDataset(_SUPERGLUE, "wic"),
        fields=("word", "sentence1", "sentence2"),
        label_field="label",
        labels=_BINARY,
        templates={REFERENCE: _wic, "zotune-0.1": _question_v01(_prompt_of(_wic), _NO_YES)},
        raw=_lines("word", "sentence1", "sentence2", answers=_NO_YES),
        loss="ce",  # MeZO large_models/mezo.sh: --train_as_classification
        calibration=_words_only(_NO_YES),
    ),
)

_GENERATION_SPECS = (
    TaskSpec(
        name="squad",
        description="SQuAD v1.1 reading comprehension: generate the answer span, F1 / EM",
        # Only the official dev set is offline: train / val / test are carved from it by
        # article (group_field), so no paragraph is in two splits.
        local=LocalFiles("squad", dev=("dev-v1.1.json",), train=(), reader=read_squad_json),
        hub=HubDataset("rajpurkar/squad", None),
        fields=("title", "context", "question"),
        label_field="answers",
        labels=None,
        templates={REFERENCE: _squad},
        raw=_squad_raw,
        loss="lm",  # MeZO large_models/mezo.sh: SQuAD --train_as_classification False
        normalize=squad_rows,
        answers_field="answers",
        metric="squad_f1",  # MeZO large_models/tasks.py: SQuADDataset.metric_name = "f1"
        group_field="title",
    ),
    TaskSpec(
        name="drop",
        description="DROP discrete reasoning over paragraphs: generate the answer, DROP's F1",
        local=LocalFiles(
            "drop", dev=("validation.jsonl",), train=("train.jsonl",), hub_fallback=True
        ),
        hub=HubDataset("ucinlp/drop", None),
        fields=("passage", "question"),
        label_field="answers",
        labels=None,
        templates={REFERENCE: _drop},
        raw=_drop_raw,
        loss="lm",  # MeZO large_models/mezo.sh: DROP --train_as_classification False
        normalize=drop_rows,
        answers_field="answers",
        metric="drop_f1",  # MeZO large_models/tasks.py: DROPDataset.metric_name = "f1"
    ),
    TaskSpec(
        name="record",
        description="ReCoRD cloze over news (SuperGLUE): which entity fills @placeholder",
        local=LocalFiles("record", dev=("val.jsonl",), train=("train.jsonl",), hub_fallback=True),
        hub=HubDataset(_SUPERGLUE, "record"),
        fields=("passage", "query"),
        label_field="label",
        labels=None,
        templates={REFERENCE: _record},
        raw=_record_raw,
        loss="lm",  # MeZO large_models/mezo.sh: ReCoRD --train_as_classification False
        normalize=record_rows,
        correct_field="correct",
        calibration=_record_sfc,
    ),
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (*_SPECS, *_GENERATION_SPECS)}


def list_tasks() -> list[str]:
    """Task names, the paper's four first."""
    return list(TASKS)


def get_task(name: str) -> TaskSpec:
    """The spec of a task; ``"SST-2"`` and ``"sst2"`` name the same one, and a ``.yaml``
    path a task file (:mod:`zotune.tasks.taskfile`)."""
    from .taskfile import is_task_file, load_task_file

    if is_task_file(name):
        return load_task_file(name)
    spec = TASKS.get(name.lower().replace("-", ""))
    if spec is None:
        raise ValueError(f"Unknown task {name!r} (choose from {', '.join(TASKS)})")
    return spec
