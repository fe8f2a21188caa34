r"""The built-in tasks, declared as data: SST-2, COPA, WinoGrande, MultiRC (the paper's four),
RTE, CB, BoolQ, WSC, WiC, then SQuAD, DROP and ReCoRD.

Candidates are listed in label order: candidate i is label i of the hub's integer encoding
(SST-2 0 negative; RTE 0 entailment, 1 not_entailment; CB 0 entailment, 1 contradiction,
2 neutral; BoolQ, WSC, WiC, MultiRC 0 false; COPA 0 choice1; WinoGrande answer "1" → 0), and
the string / boolean labels of the local files map to the same indices. (ZO-Bench lists
BoolQ's candidates as Yes, No; the order only decides exact ties.)

MultiRC: every answer option of every question is one binary example (is this answer
correct?), as in MeZO, so one paragraph yields many examples.

Training loss (``loss``): the loss the paper's runs train each task with. ``lm`` (the LM
loss on the gold candidate, ``--train_as_classification False``) for COPA
(``zo-bench/sweeps/Copa_*``, MeZO ``large_models/mezo.sh``) and WinoGrande
(``zo-bench/sweeps/WinoGrande_*``); ``ce`` (cross-entropy over the candidates,
``--train_as_classification``) for SST-2 (``zo-bench/sweeps/SST2_opt-1.3b``) and MeZO's other
classification tasks (``large_models/mezo.sh``: "for others, set this flag to True").
"""

from __future__ import annotations

from .formats import (
    copa_rows,
    drop_rows,
    multirc_rows,
    read_glue_tsv,
    read_squad_json,
    record_rows,
    squad_rows,
    winogrande_rows,
    wsc_rows,
)
from .spec import REFERENCE, HubDataset, LocalFiles, TaskSpec
from .templates import (
    NO_YES,
    YES_NO,
    YES_NO_MAYBE,
    boolq,
    boolq_raw,
    cb,
    copa,
    copa_raw,
    copa_sfc,
    copa_v01,
    drop,
    drop_raw,
    fields_on_lines,
    multirc,
    prompt_of,
    question_v01,
    record,
    record_raw,
    record_sfc,
    rte,
    rte_raw,
    squad,
    squad_raw,
    sst2,
    sst2_raw,
    sst2_sfc,
    wic,
    winogrande,
    winogrande_partial,
    winogrande_raw,
    words_only,
    wsc,
)

# Label encodings: SuperGLUE JSONL spells labels as strings or JSON booleans, the hub as
# integers; Python's True == 1 lets the integer keys cover booleans.
_BINARY = {0: 0, 1: 1}
_SUPERGLUE = "aps/super_glue"


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
        templates={REFERENCE: sst2},
        raw=sst2_raw,
        loss="ce",  # zo-bench/sweeps/SST2_opt-1.3b: --train_as_classification
        num_val=500,  # zo-bench/sweeps/SST2_opt-1.3b: --num_dev=500
        calibration=sst2_sfc,
    ),
    TaskSpec(
        name="copa",
        description="COPA causal reasoning (SuperGLUE): premise + so / because + alternative",
        local=_superglue("copa"),
        hub=HubDataset(_SUPERGLUE, "copa"),
        fields=("premise", "choice1", "choice2", "question"),
        label_field="label",
        labels=_BINARY,
        templates={REFERENCE: copa, "zotune-0.1": copa_v01},
        raw=copa_raw,
        loss="lm",  # zo-bench/sweeps/Copa_*: --train_as_classification=False
        num_val=100,  # zo-bench/sweeps/Copa_*: --num_dev=100 (MeZO large_models/mezo.sh DEV=100)
        normalize=copa_rows,
        calibration=copa_sfc,
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
        templates={REFERENCE: winogrande, "zotune-0.1": winogrande_partial},
        raw=winogrande_raw,
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
        templates={REFERENCE: multirc, "zotune-0.1": question_v01(prompt_of(multirc), NO_YES)},
        raw=fields_on_lines("paragraph", "question", "answer", answers=NO_YES),
        loss="ce",  # MeZO large_models/mezo.sh: --train_as_classification
        normalize=multirc_rows,
        calibration=words_only(NO_YES),
    ),
    TaskSpec(
        name="rte",
        description="RTE entailment (SuperGLUE): does the premise mean the hypothesis? Yes / No",
        local=_superglue("rte"),
        hub=HubDataset(_SUPERGLUE, "rte"),
        fields=("premise", "hypothesis"),
        label_field="label",
        labels={"entailment": 0, "not_entailment": 1, **_BINARY},
        templates={REFERENCE: rte, "zotune-0.1": question_v01(prompt_of(rte), YES_NO)},
        raw=rte_raw,
        loss="ce",  # MeZO large_models/mezo.sh: --train_as_classification
        calibration=words_only(YES_NO),
    ),
    TaskSpec(
        name="cb",
        description="CommitmentBank (SuperGLUE): can we infer the hypothesis? Yes / No / Maybe",
        local=_superglue("cb"),
        hub=HubDataset(_SUPERGLUE, "cb"),
        fields=("premise", "hypothesis"),
        label_field="label",
        labels={"entailment": 0, "contradiction": 1, "neutral": 2, **_BINARY, 2: 2},
        templates={REFERENCE: cb, "zotune-0.1": question_v01(prompt_of(cb), YES_NO_MAYBE)},
        raw=fields_on_lines("premise", "hypothesis", answers=YES_NO_MAYBE),
        loss="ce",  # MeZO large_models/mezo.sh: --train_as_classification
        num_val=100,  # MeZO large_models/mezo.sh: CB) DEV=100
        calibration=words_only(YES_NO_MAYBE),
    ),
    TaskSpec(
        name="boolq",
        description="BoolQ (SuperGLUE): yes / no questions about a Wikipedia passage",
        local=_superglue("boolq"),
        hub=HubDataset(_SUPERGLUE, "boolq"),
        fields=("passage", "question"),
        label_field="label",
        labels=_BINARY,
        templates={REFERENCE: boolq},
        raw=boolq_raw,
        loss="ce",  # MeZO large_models/mezo.sh: --train_as_classification
        calibration=words_only(NO_YES),
    ),
    TaskSpec(
        name="wsc",
        description="Winograd Schema (SuperGLUE): does the pronoun refer to this noun? Yes / No",
        local=_superglue("wsc"),
        hub=HubDataset(_SUPERGLUE, "wsc.fixed"),
        fields=("text", "span1_text", "span2_text"),
        label_field="label",
        labels=_BINARY,
        templates={REFERENCE: wsc, "zotune-0.1": question_v01(prompt_of(wsc), NO_YES)},
        raw=fields_on_lines("text", "span2_text", "span1_text", answers=NO_YES),
        loss="ce",  # MeZO large_models/mezo.sh: --train_as_classification
        normalize=wsc_rows,
        calibration=words_only(NO_YES),
    ),
    TaskSpec(
        name="wic",
        description="Word-in-Context (SuperGLUE): one meaning of a word in two sentences? Yes / No",
        local=_superglue("wic"),
        hub=HubDataset(_SUPERGLUE, "wic"),
        fields=("word", "sentence1", "sentence2"),
        label_field="label",
        labels=_BINARY,
        templates={REFERENCE: wic, "zotune-0.1": question_v01(prompt_of(wic), NO_YES)},
        raw=fields_on_lines("word", "sentence1", "sentence2", answers=NO_YES),
        loss="ce",  # MeZO large_models/mezo.sh: --train_as_classification
        calibration=words_only(NO_YES),
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
        templates={REFERENCE: squad},
        raw=squad_raw,
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
        templates={REFERENCE: drop},
        raw=drop_raw,
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
        templates={REFERENCE: record},
        raw=record_raw,
        loss="lm",  # MeZO large_models/mezo.sh: ReCoRD --train_as_classification False
        normalize=record_rows,
        correct_field="correct",
        calibration=record_sfc,
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
