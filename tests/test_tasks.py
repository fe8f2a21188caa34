"""The task suite: golden prompts for every task, loaders on fixture files and on the staged
data, the carving rule, and every error message. No model, no network."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from zotune.tasks import (
    DATA_DIR_ENV,
    Example,
    Splits,
    TaskDataError,
    get_task,
    list_tasks,
    load_splits,
)
from zotune.tasks.splits import carve

PAPER_TASKS = ["sst2", "copa", "winogrande", "multirc"]
ALL_TASKS = [*PAPER_TASKS, "rte", "cb", "boolq", "wsc", "wic"]
MEZO_TASKS = ["squad", "drop", "record"]  # MeZO's generation tasks and ReCoRD, after the nine


def quiet(_message: str) -> None:
    pass


# Golden prompts ----------------------------------------------------------------------------

WINO_SENTENCE = "Sarah was a much better surgeon than Maria so _ always got the harder cases."
WINO_CONTEXTS = (
    "Sarah was a much better surgeon than Maria so Sarah",
    "Sarah was a much better surgeon than Maria so Maria",
)
WINO_PARTIAL = {
    "context_options": list(WINO_CONTEXTS),
    "continuation": "always got the harder cases.",
    "gold": 0,
}
WSC_TEXT = "Mark told Pete many lies about himself. He believed them."
WIC_QUESTION = 'Does the word "bank" have the same meaning in these two sentences? Yes, No?'
MULTIRC_NESTED = {
    "idx": 0,
    "passage": {
        "text": "Tom has a dog. ",
        "questions": [
            {
                "question": "What does Tom have?",
                "answers": [{"text": "a dog", "label": 1}, {"text": "a cat", "label": 0}],
            }
        ],
    },
}

COPA_EFFECT = {
    "premise": "The man turned on the faucet.",
    "choice1": "The toilet filled with water.",
    "choice2": "Water flowed from the spout.",
    "question": "effect",
    "label": 1,
}
COPA_CASED = {
    "premise": "I went to the lab.",
    "choice1": "I'm a chemist.",
    "choice2": "DNA samples came in.",
    "question": "cause",
    "label": 0,
}
WINO_OFFICIAL = {"sentence": WINO_SENTENCE, "option1": "Sarah", "option2": "Maria", "answer": "1"}
WINO_SHARED = ("Sarah was a much better surgeon than Maria so",) * 2
WINO_REFERENCE = (" Sarah always got the harder cases.", " Maria always got the harder cases.")
RTE_ROW = {"premise": "A cat sat on the mat.", "hypothesis": "An animal sat.",
           "label": "entailment"}
CB_ROW = {"premise": "It rained.", "hypothesis": "the ground is wet", "label": "neutral"}
WSC_ROW = {"text": WSC_TEXT, "label": True,
           "target": {"span1_text": "Pete", "span1_index": 2, "span2_text": "He",
                      "span2_index": 7}}
WIC_ROW = {"word": "bank", "sentence1": "He sat on the river bank.",
           "sentence2": "She went to the bank.", "label": False}
V01 = "zotune-0.1"

# (id, task, raw row as a source ships it, template: a version name, or False for none,
#  contexts, continuations, label)
GOLDEN = [
    ("sst2", "sst2", {"sentence": "a gorgeous , witty movie . ", "label": "1"}, "reference",
     ("a gorgeous , witty movie . It was",) * 2, (" terrible", " great"), 1),
    ("sst2-raw", "sst2", {"sentence": "a gorgeous , witty movie . ", "label": 0}, False,
     ("a gorgeous , witty movie .",) * 2, (" terrible", " great"), 0),
    ("copa-effect", "copa", COPA_EFFECT, "reference",
     ("The man turned on the faucet so",) * 2,
     (" the toilet filled with water.", " water flowed from the spout."), 1),
    ("copa-cause-keeps-I", "copa",
     {"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
      "choice2": "I grew hair.", "question": "cause", "label": 0}, "reference",
     ("My body cast a shadow over the grass because",) * 2,
     (" the sun was rising.", " I grew hair."), 0),
    # CopaTemplate.capitalize lower-cases the whole first word unless it is exactly "I".
    ("copa-whole-first-word", "copa", COPA_CASED, "reference",
     ("I went to the lab because",) * 2, (" i'm a chemist.", " dna samples came in."), 0),
    ("copa-whole-first-word-0.1", "copa", COPA_CASED, V01,
     ("I went to the lab because",) * 2, (" I'm a chemist.", " dNA samples came in."), 0),
    ("copa-raw", "copa", COPA_EFFECT, False, ("The man turned on the faucet",) * 2,
     (" the toilet filled with water.", " water flowed from the spout."), 1),
    ("winogrande-official", "winogrande", WINO_OFFICIAL, "reference", WINO_SHARED,
     WINO_REFERENCE, 0),
    ("winogrande-partial-form", "winogrande", WINO_PARTIAL, "reference", WINO_SHARED,
     WINO_REFERENCE, 0),
    ("winogrande-official-0.1", "winogrande", WINO_OFFICIAL, V01, WINO_CONTEXTS,
     (" always got the harder cases.",) * 2, 0),
    ("winogrande-partial-form-0.1", "winogrande", WINO_PARTIAL, V01, WINO_CONTEXTS,
     (" always got the harder cases.",) * 2, 0),
    ("winogrande-partial-attached", "winogrande",
     {"context_options": ["The anger showed on Randy", "The anger showed on Nick"],
      "continuation": "'s face.", "gold": 1}, "reference",
     ("The anger showed on",) * 2, (" Randy's face.", " Nick's face."), 1),
    ("winogrande-partial-attached-0.1", "winogrande",
     {"context_options": ["The anger showed on Randy", "The anger showed on Nick"],
      "continuation": "'s face.", "gold": 1}, V01,
     ("The anger showed on Randy", "The anger showed on Nick"), ("'s face.", "'s face."), 1),
    ("winogrande-blank-first", "winogrande",
     {"sentence": "_ was faster than Kelly.", "option1": "Kevin", "option2": "Kelly",
      "answer": 2}, "reference",
     ("",) * 2, ("Kevin was faster than Kelly.", "Kelly was faster than Kelly."), 1),
    ("winogrande-raw", "winogrande", {**WINO_OFFICIAL, "answer": "2"}, False,
     (WINO_SENTENCE,) * 2, (" Sarah", " Maria"), 1),
    ("winogrande-partial-raw-shared-letters", "winogrande",
     {"context_options": ["Kevin beat Kelly because Kevin", "Kevin beat Kelly because Kelly"],
      "continuation": "was faster.", "gold": 0}, False,
     ("Kevin beat Kelly because _ was faster.",) * 2, (" Kevin", " Kelly"), 0),
    # The reference uses the paragraph as it comes (here with a trailing space).
    ("multirc", "multirc", MULTIRC_NESTED, "reference",
     ('Tom has a dog. \nQuestion: What does Tom have?\nI found this answer "a dog". '
      "Is that correct? Yes or No?\n",) * 2, ("No", "Yes"), 1),
    ("multirc-0.1", "multirc", MULTIRC_NESTED, V01,
     ('Tom has a dog.\nQuestion: What does Tom have?\nI found this answer "a dog". '
      "Is that correct? Yes or No?",) * 2, (" No", " Yes"), 1),
    ("multirc-raw", "multirc", MULTIRC_NESTED, False,
     ("Tom has a dog.\nWhat does Tom have?\na dog\n",) * 2, ("No", "Yes"), 1),
    ("multirc-hub-flat", "multirc",
     {"paragraph": "Tom has a dog.", "question": "What does Tom have?", "answer": "a cat",
      "label": 0}, "reference",
     ('Tom has a dog.\nQuestion: What does Tom have?\nI found this answer "a cat". '
      "Is that correct? Yes or No?\n",) * 2, ("No", "Yes"), 0),
    ("rte", "rte", RTE_ROW, "reference",
     ('A cat sat on the mat.\nDoes this mean that "An animal sat." is true? Yes or No?\n',) * 2,
     ("Yes", "No"), 0),
    ("rte-0.1", "rte", RTE_ROW, V01,
     ('A cat sat on the mat.\nDoes this mean that "An animal sat." is true? Yes or No?',) * 2,
     (" Yes", " No"), 0),
    ("rte-raw-hub-label", "rte",
     {"premise": "A cat sat on the mat.", "hypothesis": "A dog sat.", "label": 1}, False,
     ('A cat sat on the mat.\n"A dog sat."\n',) * 2, ("Yes", "No"), 1),
    ("cb", "cb", CB_ROW, "reference",
     ('Suppose It rained. Can we infer that "the ground is wet"? Yes, No, or Maybe?\n',) * 3,
     ("Yes", "No", "Maybe"), 2),
    ("cb-0.1", "cb", CB_ROW, V01,
     ('Suppose It rained. Can we infer that "the ground is wet"? Yes, No, or Maybe?',) * 3,
     (" Yes", " No", " Maybe"), 2),
    ("cb-raw", "cb",
     {"premise": "It rained.", "hypothesis": "the ground is dry", "label": "contradiction"},
     False, ("It rained.\nthe ground is dry\n",) * 3, ("Yes", "No", "Maybe"), 1),
    ("boolq", "boolq",
     {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "label": True},
     "reference", ("Sky -- The sky is blue. Is the sky blue?",) * 2, (" No", " Yes"), 1),
    ("boolq-raw", "boolq",
     {"question": "is the sky green", "passage": "Sky -- The sky is blue.", "label": False},
     False, ("Sky -- The sky is blue.\nis the sky green",) * 2, (" No", " Yes"), 0),
    ("wsc", "wsc", WSC_ROW, "reference",
     (f'{WSC_TEXT}\nIn the previous sentence, does the pronoun "he" refer to Pete? '
      "Yes or No?\n",) * 2, ("No", "Yes"), 1),
    ("wsc-0.1", "wsc", WSC_ROW, V01,
     (f'{WSC_TEXT}\nIn the previous sentence, does the pronoun "he" refer to Pete? '
      "Yes or No?",) * 2, (" No", " Yes"), 1),
    ("wsc-raw-hub-flat", "wsc",
     {"text": WSC_TEXT, "span1_text": "Mark", "span2_text": "He", "label": 0}, False,
     (f"{WSC_TEXT}\nHe\nMark\n",) * 2, ("No", "Yes"), 0),
    ("wic", "wic", WIC_ROW, "reference",
     (f"{WIC_QUESTION}\nHe sat on the river bank.\nShe went to the bank.\n",) * 2,
     ("No", "Yes"), 0),
    ("wic-0.1", "wic", WIC_ROW, V01,
     (f"{WIC_QUESTION}\nHe sat on the river bank.\nShe went to the bank.",) * 2,
     (" No", " Yes"), 0),
    ("wic-raw", "wic",
     {"word": "bank", "sentence1": "He sat on the river bank.",
      "sentence2": "They sat by the bank.", "label": True}, False,
     ("bank\nHe sat on the river bank.\nThey sat by the bank.\n",) * 2, ("No", "Yes"), 1),
]


def _examples(task: str, raw: dict, template: str | bool) -> list[Example]:
    if template is False:
        return get_task(task).examples(raw, False)
    return get_task(task).examples(raw, True, template)


@pytest.mark.parametrize(
    ("task", "raw", "template", "contexts", "continuations", "label"),
    [case[1:] for case in GOLDEN],
    ids=[case[0] for case in GOLDEN],
)
def test_golden_prompt(task, raw, template, contexts, continuations, label):
    assert _examples(task, raw, template)[0] == Example(contexts, continuations, label)


def test_golden_table_covers_every_task_with_and_without_template():
    covered = {(case[1], case[3]) for case in GOLDEN}
    assert covered >= {(task, flag) for task in ALL_TASKS for flag in ("reference", False)}
    versioned = {task for task in ALL_TASKS if len(get_task(task).templates) > 1}
    assert {task for task, flag in covered if flag == V01} == versioned


@pytest.mark.parametrize("case", GOLDEN, ids=[case[0] for case in GOLDEN])
def test_joined_text_has_no_space_at_either_end(case):
    """encode_prompt strips spaces from both ends of the prompt and of prompt + answer."""
    example = _examples(case[1], case[2], case[3])[0]
    for context, continuation in zip(example.contexts, example.continuations, strict=True):
        assert context == context.strip(" ") and continuation
        assert context + continuation == (context + continuation).strip(" ")


def test_unknown_template_version_is_refused():
    with pytest.raises(ValueError, match=r"unknown template version 'v2' \(choose from "):
        get_task("rte").examples(RTE_ROW, True, "v2")


@pytest.mark.parametrize(("task", "loss", "num_val"), [
    ("sst2", "ce", 500), ("copa", "lm", 100), ("winogrande", "lm", 100), ("multirc", "ce", 500),
    ("rte", "ce", 500), ("cb", "ce", 100), ("boolq", "ce", 500), ("wsc", "ce", 500),
    ("wic", "ce", 500),
])
def test_each_task_declares_its_paper_loss_and_val_size(task, loss, num_val):
    """zo-bench/sweeps (SST2, Copa, WinoGrande) and MeZO large_models/mezo.sh (the rest)."""
    assert (get_task(task).loss, get_task(task).num_val) == (loss, num_val)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_every_task_shares_one_context_but_partial_winogrande(task):
    """The scorer's one-forward fast path needs identical contexts across candidates."""
    raw = next(case[2] for case in GOLDEN if case[1] == task)
    for template in ("reference", V01, False):
        example = _examples(task, raw, template)[0]
        shared = len(set(example.contexts)) == 1
        assert shared == (task != "winogrande" or template != V01)


REFERENCE_PROMPTS = json.loads(
    (Path(__file__).parent / "data" / "reference-prompts.json").read_text()
)["cases"]


@pytest.mark.parametrize(
    "case",
    REFERENCE_PROMPTS,
    ids=[f"{c['task']}-{c['template']}-{i}" for i, c in enumerate(REFERENCE_PROMPTS)],
)
def test_prompts_are_the_reference_templates_strings(case):
    """Real rows through ZO-Bench's own templates.py (tests/data/reference-prompts.json says
    which commit): every candidate's context + continuation is its verbalization."""
    aligned = case["template"] == "reference"
    example = get_task(case["task"]).example(case["row"], aligned)
    assert example.contexts == (case["prompt"],) * len(case["answers"])
    joined = [c + t for c, t in zip(example.contexts, example.continuations, strict=True)]
    assert joined == [case["prompt"] + answer for answer in case["answers"]]


def test_reference_prompts_cover_every_task_three_times():
    counts = {task: 0 for task in ALL_TASKS}
    for case in REFERENCE_PROMPTS:
        counts[case["task"]] += case["template"] == "reference"
    assert counts == {task: 3 for task in ALL_TASKS}


def test_multirc_yields_one_example_per_answer_option():
    examples = get_task("multirc").examples(MULTIRC_NESTED)
    assert [ex.label for ex in examples] == [1, 0]
    assert examples[1].contexts[0].endswith('"a cat". Is that correct? Yes or No?\n')


# Registry ----------------------------------------------------------------------------------


def test_list_tasks_is_the_suite_paper_tasks_first():
    assert list_tasks() == [*ALL_TASKS, *MEZO_TASKS]


@pytest.mark.parametrize("task", ALL_TASKS)
def test_descriptions_are_one_line(task):
    spec = get_task(task)
    assert spec.name == task
    assert spec.description and "\n" not in spec.description


def test_task_names_forgive_case_and_hyphen():
    assert get_task("SST-2") is get_task("sst2")


# Fixture files -----------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_sst2(root: Path, header: str | None, n_train: int = 30, n_dev: int = 10) -> Path:
    folder = root / "sst2"
    folder.mkdir(parents=True, exist_ok=True)
    head = [header] if header is not None else []
    train = [f"train phrase {i} \t{i % 2}" for i in range(n_train)]
    dev = [f"dev sentence {i} .\t{i % 2}" for i in range(n_dev)]
    (folder / "train.tsv").write_text("\n".join([*head, *train]) + "\n")
    (folder / "dev.tsv").write_text("\n".join([*head, *dev]) + "\n")
    (folder / "test.tsv").write_text("text\tlabel\n0\tunlabelled .\n")
    return root


def rte_rows(n: int, tag: str) -> list[dict]:
    labels = ("entailment", "not_entailment")
    return [
        {"premise": f"{tag} premise {i}.", "hypothesis": f"{tag} hypothesis {i}.",
         "label": labels[i % 2], "idx": i}
        for i in range(n)
    ]


def boolq_rows(n: int) -> list[dict]:
    return [
        {"question": f"is {i} even", "passage": f"Numbers -- {i}.", "label": i % 2 == 0}
        for i in range(n)
    ]


def contexts_of(examples: list[Example]) -> list[str]:
    return [ex.contexts[0] for ex in examples]


@pytest.mark.parametrize(
    "header", ["text\tlabel", "sentence\tlabel", None], ids=["renamed", "glue", "none"]
)
def test_sst2_tsv_with_any_header(tmp_path, header):
    root = write_sst2(tmp_path, header)
    notes: list[str] = []
    splits = load_splits("sst2", data_dir=root, num_train=8, num_val=4, num_test=20,
                         log=notes.append)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 10)
    assert sorted(contexts_of(splits.test)) == sorted(
        f"dev sentence {i} . It was" for i in range(10)
    )
    assert all(c.startswith("train phrase") for c in contexts_of(splits.train + splits.val))
    assert all(ex.label == int(ex.contexts[0].split()[2]) % 2 for ex in splits.test)
    assert notes == splits.notes
    assert notes[0] == (
        "sst2: test has no labels; test = 10 examples of dev.tsv (all there are; asked 20), "
        "val = 4 and train = 8 drawn disjointly from train.tsv"
    )


def test_repeated_inputs_never_straddle_splits(tmp_path):
    root = tmp_path
    folder = root / "sst2"
    folder.mkdir()
    train = ["same phrase\t0", "same phrase \t1", "dev sentence\t1", "other\t0", "more\t1"]
    (folder / "train.tsv").write_text("\n".join(train) + "\n")
    (folder / "dev.tsv").write_text("dev sentence\t1\n")
    splits = load_splits("sst2", data_dir=root, num_train=10, num_val=1, log=quiet)
    seen = contexts_of(splits.train + splits.val)
    assert sorted(seen) == ["more It was", "other It was", "same phrase It was"]
    assert "dropped 2 examples of train.tsv" in splits.notes[1]


def test_winogrande_official_files_with_a_train_split(tmp_path):
    folder = tmp_path / "winogrande"
    row = {"sentence": WINO_SENTENCE, "option1": "Sarah", "option2": "Maria", "answer": "1"}
    write_jsonl(folder / "dev.jsonl",
                [{**row, "sentence": WINO_SENTENCE.replace("harder", f"case {i}")}
                 for i in range(6)])
    write_jsonl(folder / "train_xl.jsonl",
                [{**row, "sentence": WINO_SENTENCE.replace("harder", f"train {i}")}
                 for i in range(12)])
    (folder / "test.jsonl").write_text('{"sentence": "_ x", "option1": "a", "option2": "b"}\n')
    splits = load_splits("winogrande", data_dir=tmp_path, num_train=5, num_val=3, num_test=4,
                         log=quiet)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (5, 3, 4)
    assert all("case" in ex.continuations[0] for ex in splits.test)
    assert all("train" in ex.continuations[0] for ex in splits.train + splits.val)
    assert "from train_xl.jsonl" in splits.notes[0]


def test_winogrande_partial_form_equals_the_official_form(tmp_path):
    """Both forms of the same rows give the same examples and the same draws."""
    official, partial = tmp_path / "official", tmp_path / "partial"
    rows = []
    for i in range(8):
        sentence = f"Ann gave Bea {i} coins because _ was generous."
        rows.append({"sentence": sentence, "option1": "A", "option2": "B",
                     "answer": str(1 + i % 2)})
    write_jsonl(official / "winogrande" / "dev.jsonl", rows)
    write_jsonl(
        partial / "winogrande" / "winogrande.jsonl",
        [
            {
                "context_options": [f"Ann gave Bea {i} coins because {who}" for who in "AB"],
                "continuation": "was generous.",
                "gold": i % 2,
            }
            for i in range(8)
        ],
    )
    for template in (True, False):
        kwargs = dict(num_train=3, num_val=1, num_test=4, template=template, log=quiet)
        a = load_splits("winogrande", data_dir=official, **kwargs)
        b = load_splits("winogrande", data_dir=partial, **kwargs)
        assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
        assert "no train split" in b.notes[0]


def test_multirc_loader_expands_answer_options(tmp_path):
    paragraph = {
        "idx": 0,
        "passage": {
            "text": "A text.",
            "questions": [
                {"question": "Q1?", "answers": [{"text": f"a{i}", "label": i % 2}
                                                for i in range(3)]},
                {"question": "Q2?", "answers": [{"text": f"b{i}", "label": 1} for i in range(2)]},
            ],
        },
    }
    other = {"idx": 1, "passage": {"text": "B text.", "questions": [
        {"question": "Q3?", "answers": [{"text": "c", "label": 0}]}]}}
    write_jsonl(tmp_path / "multirc" / "val.jsonl", [paragraph, other])
    write_jsonl(tmp_path / "multirc" / "train.jsonl", [other])
    splits = load_splits("multirc", data_dir=tmp_path, num_train=0, num_val=0, num_test=100,
                         log=quiet)
    assert len(splits.test) == 6
    assert sorted(ex.label for ex in splits.test) == [0, 0, 0, 1, 1, 1]
    # The one train row repeats a val (test) example, so nothing is left for val / train.
    assert splits.train == [] and splits.val == []


def test_boolq_without_train_carves_everything_from_val(tmp_path):
    write_jsonl(tmp_path / "boolq" / "val.jsonl", boolq_rows(20))
    splits = load_splits("boolq", data_dir=tmp_path, num_train=5, num_val=3, num_test=10,
                         log=quiet)
    sizes = (len(splits.train), len(splits.val), len(splits.test))
    assert sizes == (5, 3, 10)
    groups = [set(contexts_of(s)) for s in (splits.train, splits.val, splits.test)]
    assert sum(map(len, groups)) == len(set.union(*groups)) == 18
    assert splits.notes == [
        "boolq: test has no labels and there is no train split; test = 10 examples of "
        "val.jsonl, val = 3 and train = 5 drawn disjointly from the rest of val.jsonl"
    ]


def test_short_pool_gives_val_its_size_and_train_the_rest(tmp_path):
    """zo-bench/run.py takes dev from the end of the num_train + num_dev draw."""
    write_jsonl(tmp_path / "rte" / "train.jsonl", rte_rows(12, "train"))
    write_jsonl(tmp_path / "rte" / "val.jsonl", rte_rows(5, "val"))
    splits = load_splits("rte", data_dir=tmp_path, num_train=20, num_val=10, num_test=8,
                         log=quiet)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2, 10, 5)
    assert splits.notes[0].endswith(
        "(all there are; asked 8), val = 10 and train = 2 drawn disjointly from train.jsonl "
        "(asked 10 + 20; val first, train the rest)"
    )


def test_val_that_leaves_no_train_is_refused(tmp_path):
    write_jsonl(tmp_path / "rte" / "train.jsonl", rte_rows(12, "train"))
    write_jsonl(tmp_path / "rte" / "val.jsonl", rte_rows(5, "val"))
    with pytest.raises(TaskDataError, match=r"rte: val takes all 12 examples left in "
                       r"train.jsonl \(num_val=12\), none are left for train"):
        load_splits("rte", data_dir=tmp_path, num_train=5, num_val=12, log=quiet)


@pytest.mark.parametrize(
    ("train_rows", "expected_val", "note"),
    [
        (12, 2, "rte: val = 2 of the 12 examples in train.jsonl (the default num_val=500 "
                "does not fit; --num-val sets it)"),
        (501, 500, None),  # train keeps one: the paper's rule, val at its full size
    ],
)
def test_a_default_val_that_leaves_no_train_scales_down(tmp_path, train_rows, expected_val,
                                                        note):
    write_jsonl(tmp_path / "rte" / "train.jsonl", rte_rows(train_rows, "train"))
    write_jsonl(tmp_path / "rte" / "val.jsonl", rte_rows(5, "val"))
    splits = load_splits("rte", data_dir=tmp_path, num_train=1000, log=quiet)
    assert len(splits.val) == expected_val
    assert len(splits.train) == train_rows - expected_val
    assert (note in splits.notes) if note else len(splits.notes) == 1


def test_data_dir_from_the_environment(tmp_path, monkeypatch):
    write_sst2(tmp_path, "text\tlabel")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    splits = load_splits("sst2", num_train=2, num_val=2, num_test=2, log=quiet)
    assert isinstance(splits, Splits) and len(splits.test) == 2


def test_sampling_is_seeded_nested_and_local(tmp_path):
    import random

    write_jsonl(tmp_path / "rte" / "train.jsonl", rte_rows(200, "train"))
    write_jsonl(tmp_path / "rte" / "val.jsonl", rte_rows(50, "val"))

    def draw(seed, num_train=40):
        return load_splits("rte", data_dir=tmp_path, num_train=num_train, num_val=20,
                           num_test=30, seed=seed, log=quiet)

    random.seed(123)
    before = random.random()
    random.seed(123)
    a = draw(0)
    assert random.random() == before, "load_splits must not touch the global RNG"
    assert (a.train, a.val, a.test) == ((b := draw(0)).train, b.val, b.test)
    c = draw(1)
    assert a.train != c.train and a.val != c.val and a.test != c.test
    small = draw(0, num_train=10)
    assert small.test == a.test and small.train == a.train[:10]
    assert small.val != a.val, "val follows train in the draw, as in zo-bench/run.py"


def test_carve_draws_disjoint_indices():
    carving = carve(100, None, num_train=50, num_val=20, num_test=30, seed=0)
    drawn = carving.test + carving.val + carving.train
    assert carving.shared and len(drawn) == len(set(drawn)) == 100
    short = carve(100, 400, num_train=1000, num_val=100, num_test=1000, seed=0)
    assert (len(short.test), len(short.val), len(short.train)) == (100, 100, 300)
    assert not short.shared and len(set(short.val + short.train)) == 400
    assert carve(10, 10, num_train=0, num_val=0, num_test=0, seed=0) == carve(
        10, 10, num_train=0, num_val=0, num_test=0, seed=0
    )


def test_carve_is_zo_bench_draw():
    """numpy.random.seed(s); numpy.random.permutation(n) (zo-bench/tasks.py::sample_subset):
    train is the head of the train draw, val the next num_val, test the head of dev's."""
    import numpy as np

    order = np.random.RandomState(7).permutation(50).tolist()
    dev_order = np.random.RandomState(7).permutation(20).tolist()
    carving = carve(20, 50, num_train=30, num_val=10, num_test=5, seed=7)
    assert carving.train == order[:30] and carving.val == order[30:40]
    assert carving.test == dev_order[:5]


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_bad_data_seed_is_refused(tmp_path, seed):
    with pytest.raises(ValueError, match=r"data seed must be an integer in \[0, 2\*\*32\)"):
        load_splits("rte", data_dir=tmp_path, seed=seed, log=quiet)


# The hub -----------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch):
    """A stand-in ``datasets`` module; ``calls`` records (path, config, split)."""
    module = types.ModuleType("datasets")
    module.calls = []
    module.rows = {}

    def load_dataset(path, config=None, *, split):
        module.calls.append((path, config, split))
        if isinstance(module.rows, Exception):
            raise module.rows
        return module.rows[split]

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    return module


def test_hub_is_the_fallback_and_its_train_split_is_used(fake_hub):
    hub_rows = [{"question": r["question"], "passage": r["passage"], "label": int(r["label"]),
                 "idx": i} for i, r in enumerate(boolq_rows(30))]
    fake_hub.rows = {"train": hub_rows[:20], "validation": hub_rows[20:]}
    splits = load_splits("boolq", num_train=6, num_val=4, num_test=100, log=quiet)
    assert set(fake_hub.calls) == {("aps/super_glue", "boolq", "validation"),
                                   ("aps/super_glue", "boolq", "train")}
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 4, 10)
    assert "drawn disjointly from train" in splits.notes[0]


def test_hub_failure_says_how_to_read_local_files(fake_hub):
    fake_hub.rows = ConnectionError("Couldn't reach 'aps/super_glue' on the Hub\n(offline)")
    with pytest.raises(TaskDataError) as caught:
        load_splits("rte", log=quiet)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("rte: cannot load aps/super_glue (rte) from the Hugging Face hub")
    assert "ConnectionError" in message and f"set {DATA_DIR_ENV}" in message
    assert "--data-dir" in message


# Errors ------------------------------------------------------------------------------------


def _rte(tmp_path, val_lines: list[str], train: bool = True) -> Path:
    folder = tmp_path / "rte"
    folder.mkdir()
    if train:
        write_jsonl(folder / "train.jsonl", rte_rows(3, "train"))
    (folder / "val.jsonl").write_text("\n".join(val_lines) + "\n")
    return tmp_path


GOOD_RTE = json.dumps({"premise": "p.", "hypothesis": "h.", "label": "entailment"})


def case_missing_data_dir(tmp_path):
    return "rte", tmp_path / "nowhere", r"data directory .*nowhere \(from --data-dir\) does not"


def case_missing_task_folder(tmp_path):
    return "rte", tmp_path, rf"rte: no folder {tmp_path / 'rte'} in the data directory"


def case_missing_dev_file(tmp_path):
    write_jsonl(tmp_path / "rte" / "train.jsonl", rte_rows(3, "train"))
    return "rte", tmp_path, rf"rte: missing {tmp_path / 'rte' / 'val.jsonl'} \(looked for"


def case_missing_winogrande_dev(tmp_path):
    write_jsonl(tmp_path / "winogrande" / "train_xl.jsonl", [WINO_PARTIAL])
    return "winogrande", tmp_path, "looked for dev.jsonl, val.jsonl, winogrande.jsonl"


def case_bad_json(tmp_path):
    root = _rte(tmp_path, [GOOD_RTE, '{"premise": "p.", '])
    return "rte", root, r"rte/val\.jsonl line 2: not valid JSON"


def case_not_an_object(tmp_path):
    return "rte", _rte(tmp_path, ["[1, 2]"]), r"val\.jsonl line 1: expected a JSON object"


def case_missing_field(tmp_path):
    root = _rte(tmp_path, [GOOD_RTE, json.dumps({"premise": "p.", "label": "entailment"})])
    return "rte", root, r"val\.jsonl line 2: missing field 'hypothesis'"


def case_missing_label(tmp_path):
    root = _rte(tmp_path, [json.dumps({"premise": "p.", "hypothesis": "h."})])
    return "rte", root, r"val\.jsonl line 1: missing field 'label'"


def case_field_not_text(tmp_path):
    root = _rte(tmp_path, [json.dumps({"premise": None, "hypothesis": "h.", "label": 0})])
    return "rte", root, r"line 1: field 'premise' should be text, got None"


def case_rte_label_out_of_range(tmp_path):
    root = _rte(tmp_path, [GOOD_RTE, GOOD_RTE, GOOD_RTE.replace("entailment", "maybe")])
    return "rte", root, r"val\.jsonl line 3: label 'maybe' is not one of 'entailment'"


def case_sst2_label_out_of_range(tmp_path):
    write_sst2(tmp_path, "sentence\tlabel")
    with (tmp_path / "sst2" / "train.tsv").open("a") as f:
        f.write("a bad row\t2\n")
    return "sst2", tmp_path, r"train\.tsv line 32: label '2' is not one of '0', '1'"


def case_sst2_row_without_tab(tmp_path):
    write_sst2(tmp_path, None)
    with (tmp_path / "sst2" / "dev.tsv").open("a") as f:
        f.write("no tab here\n")
    return "sst2", tmp_path, r"dev\.tsv line 11: expected text<TAB>label"


def case_copa_label_out_of_range(tmp_path):
    row = {"premise": "p.", "choice1": "a", "choice2": "b", "question": "effect", "label": 2}
    write_jsonl(tmp_path / "copa" / "val.jsonl", [row])
    return "copa", tmp_path, r"val\.jsonl line 1: label 2 is not one of 0, 1"


def case_copa_bad_question(tmp_path):
    row = {"premise": "p.", "choice1": "a", "choice2": "b", "question": "why", "label": 0}
    write_jsonl(tmp_path / "copa" / "val.jsonl", [row])
    return "copa", tmp_path, r"line 1: question 'why' is neither 'cause' nor 'effect'"


def case_winogrande_gold_out_of_range(tmp_path):
    write_jsonl(tmp_path / "winogrande" / "winogrande.jsonl", [WINO_PARTIAL, {**WINO_PARTIAL,
                                                                              "gold": 3}])
    return "winogrande", tmp_path, r"winogrande\.jsonl line 2: label \(gold\) 3 is not one of"


def case_winogrande_answer_out_of_range(tmp_path):
    row = {"sentence": WINO_SENTENCE, "option1": "Sarah", "option2": "Maria", "answer": "3"}
    write_jsonl(tmp_path / "winogrande" / "dev.jsonl", [row])
    return "winogrande", tmp_path, r"dev\.jsonl line 1: label '3' is not one of '1', '2'"


def case_winogrande_without_blank(tmp_path):
    row = {"sentence": "No blank here.", "option1": "a", "option2": "b", "answer": "1"}
    write_jsonl(tmp_path / "winogrande" / "dev.jsonl", [row])
    return "winogrande", tmp_path, r"line 1: sentence should hold one blank '_', found 0"


def case_not_utf8(tmp_path):
    root = _rte(tmp_path, [GOOD_RTE])
    (root / "rte" / "val.jsonl").write_bytes(b'{"premise": "caf\xe9"}\n')
    return "rte", root, r"rte/val\.jsonl: not UTF-8 text"


def case_multirc_missing_answers(tmp_path):
    row = {"passage": {"text": "t", "questions": [{"question": "q"}]}}
    write_jsonl(tmp_path / "multirc" / "val.jsonl", [row])
    return "multirc", tmp_path, r"val\.jsonl line 1: missing field 'answers'"


ERROR_CASES = [
    case_missing_data_dir,
    case_missing_task_folder,
    case_missing_dev_file,
    case_missing_winogrande_dev,
    case_bad_json,
    case_not_an_object,
    case_missing_field,
    case_missing_label,
    case_field_not_text,
    case_rte_label_out_of_range,
    case_sst2_label_out_of_range,
    case_sst2_row_without_tab,
    case_copa_label_out_of_range,
    case_copa_bad_question,
    case_winogrande_gold_out_of_range,
    case_winogrande_answer_out_of_range,
    case_winogrande_without_blank,
    case_not_utf8,
    case_multirc_missing_answers,
]


@pytest.mark.parametrize("make", ERROR_CASES, ids=[f.__name__[5:] for f in ERROR_CASES])
def test_errors_are_one_line_and_name_the_culprit(tmp_path, make):
    task, data_dir, pattern = make(tmp_path)
    with pytest.raises(TaskDataError, match=pattern) as caught:
        load_splits(task, data_dir=data_dir, log=quiet)
    assert "\n" not in str(caught.value)


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"Unknown task 'nope' \(choose from sst2, copa, ") as e:
        get_task("nope")
    assert "\n" not in str(e.value) and all(name in str(e.value) for name in ALL_TASKS)
    with pytest.raises(ValueError, match="Unknown task 'nope'"):
        load_splits("nope", log=quiet)


@pytest.mark.parametrize("what", ["num_train", "num_val", "num_test"])
def test_negative_sizes_are_refused(tmp_path, what):
    with pytest.raises(ValueError, match=rf"{what} must be a non-negative integer, got -1"):
        load_splits("rte", data_dir=tmp_path, log=quiet, **{what: -1})


# The staged data -----------------------------------------------------------------------------


def _staged_data() -> Path | None:
    candidates = [os.environ.get(DATA_DIR_ENV), Path(__file__).resolve().parents[2] / "shared"
                  / "datasets"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "sst2" / "dev.tsv").is_file():
            return Path(candidate)
    return None


STAGED = _staged_data()
needs_staged = pytest.mark.skipif(STAGED is None, reason="staged datasets not found")

# What the defaults (1000 train, the task's val, 1000 test) get from the staged files (the
# splits.py table).
STAGED_SIZES = {
    "sst2": (1000, 500, 872),
    "copa": (300, 100, 100),
    "winogrande": (167, 100, 1000),
    "multirc": (1000, 500, 1000),
    "rte": (1000, 500, 277),
    "cb": (150, 100, 56),
    "boolq": (1000, 500, 1000),
    "wsc": (25, 500, 104),
    "wic": (1000, 500, 638),
}


@pytest.fixture(scope="module")
def staged_splits():
    cache: dict[tuple[str, int], Splits] = {}

    def get(task: str, seed: int = 0) -> Splits:
        if (task, seed) not in cache:
            cache[task, seed] = load_splits(task, data_dir=STAGED, seed=seed, log=quiet)
        return cache[task, seed]

    return get


@needs_staged
@pytest.mark.parametrize("task", ALL_TASKS)
def test_staged_data(task, staged_splits):
    splits = staged_splits(task)
    parts = (splits.train, splits.val, splits.test)
    assert tuple(map(len, parts)) == STAGED_SIZES[task]
    for examples in parts:
        assert all(0 <= ex.label < ex.num_candidates for ex in examples)
        assert len({ex.label for ex in examples}) > 1
    inputs = [{(ex.contexts, ex.continuations) for ex in examples} for examples in parts]
    assert not (inputs[0] & inputs[1] or inputs[0] & inputs[2] or inputs[1] & inputs[2])
    again = load_splits(task, data_dir=STAGED, seed=0, log=quiet)
    assert (again.train, again.val, again.test) == parts
    other = staged_splits(task, seed=1)
    assert other.train != splits.train and other.val != splits.val
    if len(splits.test) == 1000:
        assert other.test != splits.test


@needs_staged
def test_staged_sst2_test_is_all_of_dev(staged_splits):
    splits = staged_splits("sst2")
    assert splits.notes[0].startswith(
        "sst2: test has no labels; test = 872 examples of dev.tsv (all there are; asked 1000)"
    )
    assert any("dropped 371 examples of train.tsv" in note for note in splits.notes)


@needs_staged
def test_staged_winogrande_partial_form_round_trips():
    """zotune-0.1 examples rebuild the staged file's own context_options and continuation;
    the reference joins the same text per option."""
    spec = get_task("winogrande")
    lines = (STAGED / "winogrande" / "winogrande.jsonl").read_text().splitlines()
    for line in lines:
        raw = json.loads(line)
        partial = spec.examples(raw, True, "zotune-0.1")[0]
        assert list(partial.contexts) == raw["context_options"]
        assert partial.continuations[0].strip() == raw["continuation"].strip()
        assert partial.label == raw["gold"]
        reference = spec.examples(raw)[0]
        joined = [c + t for c, t in zip(reference.contexts, reference.continuations, strict=True)]
        assert joined == [c + t for c, t in zip(partial.contexts, partial.continuations,
                                                 strict=True)]


@needs_staged
@pytest.mark.parametrize("draw", json.loads(
    (Path(__file__).parent / "data" / "copa-zo-bench-draw.json").read_text())["draws"],
    ids=lambda draw: f"data_seed={draw['data_seed']}")
def test_staged_copa_draws_zo_bench_examples(draw):
    """The default COPA split is the paper's: the 300 / 100 / 100 examples, in order, that
    ZO-Bench's own sampling code draws with train_set_seed = data_seed."""
    spec = get_task("copa")

    def by_idx(name: str) -> dict[int, Example]:
        lines = (STAGED / "copa" / name).read_text().splitlines()
        return {row["idx"]: spec.example(row) for row in map(json.loads, lines)}

    train, dev = by_idx("train.jsonl"), by_idx("val.jsonl")
    splits = load_splits("copa", data_dir=STAGED, seed=draw["data_seed"], log=quiet)
    assert splits.train == [train[i] for i in draw["train_idx"]]
    assert splits.val == [train[i] for i in draw["val_idx"]]
    assert splits.test == [dev[i] for i in draw["test_idx"]]
