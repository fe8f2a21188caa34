"""File formats: raw rows out of GLUE TSV and JSONL files, and per-task row normalizers.

Readers yield ``(line_number, raw_row)``. Normalizers turn one raw row, in whichever form a
source ships it (local JSONL, the Hugging Face hub), into the flat *canonical* rows the task
templates read; they raise :class:`TaskDataError` with a message that the caller prefixes
with the row's location.

WinoGrande comes in two forms and both normalize to the official one
(``sentence`` with one ``_``, ``option1``, ``option2``, ``answer`` "1"/"2"):

* official (``train_*.jsonl``, ``dev.jsonl``, the hub);
* llm-foundry's partial-scoring form (``context_options``: the sentence up to the blank with
  each option in place, ``continuation``: the text after the blank, ``gold``: 0/1). The
  sentence is rebuilt as the options' common prefix, cut back to a word boundary, + ``_`` +
  the continuation; the space that the reformatting stripped before the continuation is put
  back unless the continuation starts with punctuation (``.``, ``'s``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import TaskDataError

Row = dict[str, Any]

# A continuation that starts with one of these attaches to the blank without a space ("_'s").
_ATTACHED = ".,;:!?'’)"
_SST2_LABELS = ("0", "1")
_SST2_TEXT_COLUMNS = ("sentence", "text")


def read_jsonl(path: Path) -> Iterator[tuple[int, Row]]:
    """One JSON object per non-blank line (a byte-order mark before the first is skipped)."""
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in _numbered(path, lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskDataError(
                    f"{path} line {number}: not valid JSON ({err.msg} at column {err.colno})"
                ) from None
            if not isinstance(row, dict):
                raise TaskDataError(
                    f"{path} line {number}: expected a JSON object, got {type(row).__name__}"
                )
            yield number, row


def read_glue_tsv(path: Path) -> Iterator[tuple[int, Row]]:
    """GLUE single-sentence TSV: the text and label (0/1) columns, found by the header's names.

    The text column is ``sentence`` or ``text`` (one shipped copy of SST-2 renamed it), the
    label column ``label``; names are matched without case or surrounding spaces, and other
    columns (an index) are ignored. A first line whose last column is not 0/1 is the header;
    a file without one must have exactly two columns, text then label. A header that lacks
    either name is refused, naming the file and the column.
    """
    columns: tuple[int, int] | None = None  # (text, label) positions
    width = 0
    with path.open(encoding="utf-8") as lines:
        for number, line in _numbered(path, lines):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cells = line.split("\t")
            if columns is None:
                if cells[-1].strip() not in _SST2_LABELS:
                    columns, width = _tsv_columns(path, cells), len(cells)
                    continue
                if len(cells) != 2:
                    raise TaskDataError(
                        f"{path}: no header, and {len(cells)} columns: give the file a header "
                        "naming its sentence and label columns (or two columns: text, label)"
                    )
                columns, width = (0, 1), 2
            if len(cells) != width:
                raise TaskDataError(
                    f"{path} line {number}: expected text<TAB>label in {width} columns, found "
                    f"{len(cells)} in {line!r:.60}"
                )
            text, label = columns
            yield number, {"sentence": cells[text], "label": cells[label].strip()}


def _tsv_columns(path: Path, header: list[str]) -> tuple[int, int]:
    """The positions of the text and label columns named in a TSV header."""
    names = [name.strip().lower() for name in header]
    text = next((names.index(n) for n in _SST2_TEXT_COLUMNS if n in names), None)
    if text is None:
        raise TaskDataError(
            f"{path}: the header lacks a 'sentence' (or 'text') column (it has "
            f"{', '.join(map(repr, header))})"
        )
    if "label" not in names:
        raise TaskDataError(
            f"{path}: the header lacks a 'label' column (it has {', '.join(map(repr, header))})"
        )
    return text, names.index("label")


def _numbered(path: Path, lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    try:
        yield from enumerate(lines, 1)
    except UnicodeDecodeError as err:
        raise TaskDataError(f"{path}: not UTF-8 text ({err.reason})") from None


# Normalizers -------------------------------------------------------------------------------


def as_is(raw: Row) -> list[Row]:
    return [raw]


def copa_rows(raw: Row) -> list[Row]:
    question = raw.get("question")
    if question not in ("cause", "effect"):
        raise TaskDataError(f"question {question!r} is neither 'cause' nor 'effect'")
    return [raw]


def multirc_rows(raw: Row) -> list[Row]:
    """SuperGLUE's nested paragraph → questions → answers, one flat row per answer option.

    The hub already ships flat rows (paragraph, question, answer, label); they pass through.
    """
    passage = raw.get("passage")
    if not isinstance(passage, dict):
        return [raw]
    paragraph = _field(passage, "text", "passage.text")
    rows = []
    for question in _field(passage, "questions", "passage.questions"):
        for answer in _field(question, "answers", "answers"):
            row = {
                "paragraph": paragraph,
                "question": _field(question, "question", "question"),
                "answer": _field(answer, "text", "answers[].text"),
            }
            if "label" in answer:
                row["label"] = answer["label"]
            rows.append(row)
    return rows


def wsc_rows(raw: Row) -> list[Row]:
    """SuperGLUE JSONL nests the spans under ``target``; the hub has them at the top level."""
    target = raw.get("target")
    if not isinstance(target, dict):
        return [raw]
    row = {key: value for key, value in raw.items() if key != "target"}
    row["span1_text"] = _field(target, "span1_text", "target.span1_text")
    row["span2_text"] = _field(target, "span2_text", "target.span2_text")
    return [row]


def winogrande_rows(raw: Row) -> list[Row]:
    """Either WinoGrande form → the official one (see the module docstring)."""
    if "context_options" in raw:
        raw = _winogrande_from_partial(raw)
    sentence = raw.get("sentence")
    if isinstance(sentence, str):
        blanks = sentence.count("_")
        if blanks != 1:
            raise TaskDataError(f"sentence should hold one blank '_', found {blanks}: {sentence!r}")
        if not sentence.split("_")[1].strip():
            raise TaskDataError(f"sentence has no text after the blank to score: {sentence!r}")
    return [raw]


def _winogrande_from_partial(raw: Row) -> Row:
    options = raw["context_options"]
    continuation = _field(raw, "continuation", "continuation")
    if not (
        isinstance(options, list) and len(options) == 2 and all(isinstance(o, str) for o in options)
    ):
        raise TaskDataError(f"context_options should be two strings, got {options!r:.80}")
    if not isinstance(continuation, str):
        raise TaskDataError(f"continuation should be text, got {continuation!r:.60}")
    gold = _field(raw, "gold", "gold")
    if gold not in (0, 1) or isinstance(gold, bool):
        raise TaskDataError(f"label (gold) {gold!r} is not one of 0, 1")
    prefix = os.path.commonprefix(options)  # noqa: RUF071 - a string prefix is what is wanted
    # Options may share leading letters ("Kevin"/"Kelly"): cut back to the word boundary.
    cut = prefix.rfind(" ") + 1
    option1, option2 = options[0][cut:].strip(), options[1][cut:].strip()
    if not option1 or not option2 or option1 == option2:
        raise TaskDataError(f"context_options do not differ in an option: {options!r:.80}")
    continuation = continuation.strip()
    space = "" if continuation[:1] in _ATTACHED else " "
    return {
        "sentence": f"{options[0][:cut]}_{space}{continuation}",
        "option1": option1,
        "option2": option2,
        "answer": str(gold + 1),
    }


def _field(container: Row, key: str, name: str) -> Any:
    if not isinstance(container, dict) or key not in container:
        raise TaskDataError(f"missing field {name!r}")
    return container[key]


def read_squad_json(path: Path) -> Iterator[tuple[str, Row]]:
    """SQuAD v1.1's nested JSON (data → paragraphs → qas), one flat row per question,
    located by its question id: ``{title, context, question, answers: [texts], id}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TaskDataError(f"{path}: not SQuAD JSON ({err})") from None
    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list):
        raise TaskDataError(f"{path}: missing field 'data' (SQuAD's list of articles)")
    for article in articles:
        for paragraph in _field(article, "paragraphs", "paragraphs"):
            for qa in _field(paragraph, "qas", "paragraphs[].qas"):
                yield f"question {qa.get('id')}", {
                    "title": _field(article, "title", "title"),
                    "context": _field(paragraph, "context", "paragraphs[].context"),
                    "question": _field(qa, "question", "qas[].question"),
                    "answers": [a.get("text") for a in _field(qa, "answers", "qas[].answers")],
                    "id": qa.get("id"),
                }


def squad_rows(raw: Row) -> list[Row]:
    """The hub's SQuAD (``answers: {text: [...], answer_start: [...]}``) → a list of texts."""
    answers = raw.get("answers")
    if isinstance(answers, dict):
        raw = {**raw, "answers": list(_field(answers, "text", "answers.text"))}
    return [raw]


def drop_rows(raw: Row) -> list[Row]:
    """The hub's DROP (ucinlp/drop) → ``{passage, question, answers}``: the gold answers are
    ``answers_spans.spans``, as MeZO's ``large_models/tasks.py::DROPDataset.build_sample``
    takes them."""
    if "answers" in raw:
        return [raw]
    spans = _field(_field(raw, "answers_spans", "answers_spans"), "spans", "answers_spans.spans")
    return [{**raw, "answers": list(spans)}]


def record_rows(raw: Row) -> list[Row]:
    """ReCoRD in either form → one row per query: ``{passage, query, entities, answers,
    label, correct}``, the candidates being the entities (MeZO's
    ``large_models/tasks.py::ReCoRDDataset``: ``candidates=entities``,
    ``correct_candidate=answers``, trained on ``answers[0]``).

    The hub (super_glue/record) ships flat rows; SuperGLUE's JSONL nests ``passage{text,
    entities[{start, end}]}`` and ``qas[{query, answers[{text}]}]``, turned into the hub's
    form as its loader does: the entities are the distinct passage spans (``end`` inclusive)
    and the answers the distinct answer texts, each sorted.
    """
    passage = raw.get("passage")
    if isinstance(passage, dict):
        text = _field(passage, "text", "passage.text")
        entities = sorted(
            {text[e["start"] : e["end"] + 1] for e in _field(passage, "entities", "entities")}
        )
        return [
            _record_row(
                {
                    "passage": text,
                    "query": _field(qa, "query", "qas[].query"),
                    "entities": entities,
                    "answers": sorted({a["text"] for a in qa.get("answers", [])}),
                }
            )
            for qa in _field(raw, "qas", "qas")
        ]
    return [_record_row(raw)]


def _record_row(row: Row) -> Row:
    entities = list(_field(row, "entities", "entities"))
    answers = list(_field(row, "answers", "answers"))
    correct = [entities.index(answer) for answer in answers if answer in entities]
    if not answers or not correct or answers[0] not in entities:
        raise TaskDataError(f"answers {answers!r:.60} are not among the entities")
    return {**row, "entities": entities, "label": entities.index(answers[0]), "correct": correct}
