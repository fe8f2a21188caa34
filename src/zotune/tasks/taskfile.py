r"""Tasks declared in a YAML file, in the spirit of lm-evaluation-harness's task YAML.

``zotune train --task path/to/task.yaml`` trains on it, ``zotune tasks --check`` validates it.
A file builds the same :class:`~zotune.tasks.spec.TaskSpec` the built-in tasks are, so a
task is declared one way; what Python code adds for a built-in (a nested row's normalizer) a
file does not need, its rows being flat::

    name: reviews                       # optional: the file's stem
    data:
      dev: reviews/dev.jsonl            # labelled; test is drawn from it
      train: reviews/train.jsonl        # optional: else val and train are carved from dev
      # format: jsonl | csv | tsv       # optional: from the extension
      # hub: owner/name                 # instead of files (config, train, dev split names)
    template: "{review} It was"         # a format string over the row's fields
    candidates: [" terrible", " great"] # classification: the candidates, in index order
    label_field: label
    labels: {neg: 0, pos: 1}            # raw label → candidate index (default: the index)
    # answer_field: answer              # generation instead: the gold answer(s)
    # answer_template: " {answer}\n"    # what the model learns to write (default shown)
    # raw_template: "{review}"          # the no-template form (task.template=false)
    # loss: ce | lm     metric: accuracy | squad_f1 | drop_f1     num_val: 500
    # max_new_tokens: 50

Candidates may name fields too (``"{choice1}"``). Paths are relative to the file. The
prompt and each candidate are joined as the reference templates join them
(:func:`~zotune.tasks.templates.answered`: spaces stripped at both ends of the prompt and of
prompt + candidate).

Every mistake is one :class:`TaskFileError` line naming the file and the key (a data file's
mistakes: the data file and line): a missing or unknown key, an empty ``{}`` field in a
template, an unknown format, an unreadable file, a label outside the mapping, a field a row
lacks or leaves empty.
"""

from __future__ import annotations

import csv
import functools
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import TaskDataError
from .formats import Row, read_jsonl
from .spec import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_NUM_VAL,
    LOSSES,
    METRICS,
    REFERENCE,
    HubDataset,
    LocalFiles,
    TaskSpec,
)
from .templates import answered

TASK_FILE_SUFFIXES = (".yaml", ".yml")
FORMATS = ("jsonl", "csv", "tsv")
DEFAULT_ANSWER_TEMPLATE = " {answer}\n"  # MeZO's verbalize: "...Answer: {answer}\n"
KEYS = (
    "name", "description", "data", "template", "candidates", "label_field", "labels",
    "answer_field", "answer_template", "raw_template", "loss", "metric", "num_val",
    "max_new_tokens",
)
DATA_KEYS = ("dev", "train", "format", "hub", "config", "hub_train", "hub_dev")


class TaskFileError(TaskDataError):
    """A task file, or a data file it names, is wrong; the message names file and key/line."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key repeated in one mapping (PyYAML keeps the
    last: ``labels: {neg: 0, pos: 1, neg: 1}`` would silently make every label 1)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice in one mapping",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def is_task_file(name: str) -> bool:
    return str(name).endswith(TASK_FILE_SUFFIXES)


def load_task_file(path: str | Path) -> TaskSpec:
    """The TaskSpec a task file declares (checked, its data files not yet read)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise TaskFileError(f"{path}: no such task file")
    return _cached(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _cached(path: Path, mtime: int) -> TaskSpec:
    return TaskFile(path).spec()


class TaskFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=UniqueKeyLoader)
        except (OSError, UnicodeDecodeError) as err:
            raise TaskFileError(f"{path}: cannot read it ({err})") from None
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            problem = getattr(err, "problem", None)
            reason = f" ({problem})" if problem else ""
            raise TaskFileError(f"{path}: not valid YAML{line}{reason}") from None
        if not isinstance(data, dict):
            raise TaskFileError(f"{path}: expected a mapping of keys (name, data, template, ...)")
        self.data = data

    def fail(self, key: str, message: str) -> TaskFileError:
        return TaskFileError(f"{self.path}: {key}: {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.data.get(key, default)
        if value is not None and not isinstance(value, kind):
            kinds = (kind,) if isinstance(kind, type) else kind
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(key, f"expected {names}, got {value!r:.60}")
        return value

    def spec(self) -> TaskSpec:
        for key in self.data:
            if key not in KEYS:
                raise self.fail(key, f"unknown key (keys: {', '.join(KEYS)})")
        template = self.get("template", str)
        if template is None:
            raise self.fail("template", "missing (a format string over the row's fields)")
        candidates = self.get("candidates", list)
        answer_field = self.get("answer_field", str)
        if (candidates is None) == (answer_field is None):
            raise self.fail(
                "candidates" if candidates is None else "answer_field",
                "give either candidates (classification) or answer_field (generation)",
            )
        generation = answer_field is not None
        if generation:
            answer_template = self.get("answer_template", str, DEFAULT_ANSWER_TEMPLATE)
            if "{answer}" not in answer_template:
                raise self.fail("answer_template", "must hold {answer}")
            candidates = [answer_template]
        elif not candidates or not all(isinstance(c, str) and c for c in candidates):
            raise self.fail("candidates", "expected a list of non-empty strings")
        elif len(candidates) < 2:
            raise self.fail("candidates", "needs at least two (one candidate is always chosen)")
        else:
            repeated = [c for i, c in enumerate(candidates) if c in candidates[:i]]
            if repeated:
                raise self.fail(
                    "candidates",
                    f"{repeated[0]!r} appears twice (the model cannot tell them apart)",
                )
        fields = self.fields("template", template)
        for candidate in candidates:
            fields += [f for f in self.fields("candidates", candidate) if f not in fields]
        if generation:
            fields.remove("answer")
        raw_template = self.get("raw_template", str)
        if raw_template is not None:
            fields += [f for f in self.fields("raw_template", raw_template) if f not in fields]
        label_field = answer_field if generation else self.get("label_field", str, "label")
        labels = None if generation else self.labels(len(candidates))
        metric = self.choice("metric", METRICS, "squad_f1" if generation else "accuracy")
        if generation == (metric == "accuracy"):
            kind = "generation" if generation else "classification"
            raise self.fail("metric", f"{metric} does not score a {kind} task")
        local, hub = self.sources()
        raw_prompt = raw_template or _lines(fields, template)
        render = Renderer(tuple(fields), template, tuple(candidates), answer_field)
        raw = Renderer(tuple(fields), raw_prompt, tuple(candidates), answer_field)
        return TaskSpec(
            name=self.get("name", str) or self.path.stem,
            description=self.get("description", str) or f"from {self.path.name}",
            local=local,
            hub=hub,
            fields=tuple(f for f in fields if f != label_field),
            label_field=label_field,
            labels=labels,
            templates={REFERENCE: render},
            raw=raw,
            loss=self.choice("loss", LOSSES, "lm" if generation else "ce"),
            num_val=self.count("num_val", DEFAULT_NUM_VAL),
            normalize=functools.partial(check_filled, tuple(fields)),
            answers_field=answer_field,
            metric=metric,
            max_new_tokens=self.count("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
            source=str(self.path),
        )

    def fields(self, key: str, text: str) -> list[str]:
        """The field names a format string reads, refusing ``{}`` and ``{0}``."""
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as err:
            raise self.fail(key, f"not a format string ({err}): {text!r:.60}") from None
        names = []
        for _, name, _, _ in parsed:
            if name is None:
                continue
            if not name or name.isdigit():
                raise self.fail(
                    key, f"empty template field {{{name}}}: name a data field, as {{text}}"
                )
            if not name.isidentifier():
                raise self.fail(key, f"field {{{name}}} is not a plain field name")
            if name not in names:
                names.append(name)
        return names

    def labels(self, count: int) -> dict[Any, int]:
        mapping = self.get("labels", dict)
        if mapping is None:
            return {**{i: i for i in range(count)}, **{str(i): i for i in range(count)}}
        for raw, index in mapping.items():
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
                raise self.fail(
                    "labels", f"{raw!r} maps to {index!r}, not a candidate index 0..{count - 1}"
                )
        # A CSV cell is text: "1" finds the label written 1 in YAML.
        return {**{str(k): v for k, v in mapping.items()}, **mapping}

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in allowed:
            raise self.fail(key, f"unknown value {value!r} (choose from {', '.join(allowed)})")
        return value

    def count(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if isinstance(value, bool) or value < 1:
            raise self.fail(key, f"expected a positive integer, got {value!r}")
        return value

    def sources(self) -> tuple[LocalFiles | None, HubDataset | None]:
        data = self.get("data", dict)
        if data is None:
            raise self.fail("data", "missing (dev: and train: files, or hub:)")
        for key in data:
            if key not in DATA_KEYS:
                raise self.fail(f"data.{key}", f"unknown key (keys: {', '.join(DATA_KEYS)})")
        if "hub" in data:
            return None, HubDataset(
                str(data["hub"]),
                data.get("config"),
                train=str(data.get("hub_train", "train")),
                dev=str(data.get("hub_dev", "validation")),
            )
        if "dev" not in data:
            raise self.fail("data.dev", "missing: the labelled file test is drawn from")
        paths = {}
        for key in ("dev", "train"):
            if data.get(key) is None:
                continue
            path = (self.path.parent / str(data[key])).resolve()
            if not path.is_relative_to(self.path.parent):
                raise self.fail(
                    f"data.{key}", f"{data[key]!r} is outside the task file's folder "
                    f"{self.path.parent} (a task file reads data beside it)"
                )
            if not path.is_file():
                raise self.fail(f"data.{key}", f"cannot read {path}: no such file")
            paths[key] = path
        reader = self.reader(data.get("format"), paths["dev"])
        return (
            LocalFiles(
                "/",
                dev=(str(paths["dev"]),),
                train=(str(paths["train"]),) if "train" in paths else (),
                reader=reader,
            ),
            None,
        )

    def reader(self, declared: Any, dev: Path):
        if declared is None:
            declared = dev.suffix.lstrip(".").lower()
            if declared not in FORMATS:
                raise self.fail(
                    "data.format",
                    f"unknown format of {dev.name} (set one of {', '.join(FORMATS)})",
                )
        if declared not in FORMATS:
            raise self.fail(
                "data.format", f"unknown format {declared!r} (choose from {', '.join(FORMATS)})"
            )
        if declared == "jsonl":
            return read_jsonl
        return functools.partial(read_delimited, delimiter="," if declared == "csv" else "\t")


def _lines(fields: list[str], template: str) -> str:
    """No template: the fields the template reads, one per line, and a line for the answer."""
    return "\n".join("{" + name + "}" for name in fields if "{" + name + "}" in template) + "\n"


class Renderer:
    """A task file's template: the prompt and candidate format strings filled from a row
    (for generation, ``{answer}`` is the row's first gold answer)."""

    def __init__(
        self,
        fields: tuple[str, ...],
        prompt: str,
        candidates: tuple[str, ...],
        answer_field: str | None,
    ) -> None:
        self.fields, self.prompt, self.candidates = fields, prompt, candidates
        self.answer_field = answer_field

    def __call__(self, row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
        values = {name: row.get(name) for name in self.fields}
        if self.answer_field is not None:
            gold = row[self.answer_field]
            values["answer"] = gold if isinstance(gold, str) else gold[0]
        return answered(
            self.prompt.format_map(values), [c.format_map(values) for c in self.candidates]
        )


def check_filled(fields: tuple[str, ...], raw: Row) -> list[Row]:
    """A task file's row: every field the templates read present and not empty."""
    for name in fields:
        if name == "answer":
            continue
        if name not in raw or raw[name] is None:
            raise TaskDataError(f"missing field {name!r}")
        if isinstance(raw[name], str) and not raw[name].strip():
            raise TaskDataError(f"field {name!r} is empty")
    return [raw]


def read_delimited(path: Path, delimiter: str) -> Iterator[tuple[int, Row]]:
    """CSV / TSV with a header line naming the fields; one row per record."""
    try:
        # utf-8-sig: a spreadsheet's CSV starts with a byte-order mark, which would otherwise
        # be part of the first column's name.
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as err:
        raise TaskDataError(f"{path}: cannot read it ({err.strerror})") from None
    with handle:
        reader = csv.DictReader(handle, delimiter=delimiter, restkey="\0extra")
        try:
            for row in reader:
                if "\0extra" in row or None in row.values():
                    width = len(reader.fieldnames or [])
                    raise TaskDataError(
                        f"{path} line {reader.line_num}: expected {width} columns as the header "
                        "has"
                    )
                yield reader.line_num, dict(row)
        except UnicodeDecodeError as err:
            raise TaskDataError(f"{path}: not UTF-8 text ({err.reason})") from None
        except csv.Error as err:
            raise TaskDataError(f"{path} line {reader.line_num}: {err}") from None
