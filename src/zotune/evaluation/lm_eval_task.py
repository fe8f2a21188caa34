"""A run's test examples as an lm-evaluation-harness task, so an exported model can be scored
by an evaluator zotune does not control: ``zotune export RUN --out DIR --lm-eval-task``.

Two files go into ``DIR/lm_eval/``: ``zotune_<task>.jsonl``, the run's test split as zotune
renders it (one line per example: ``context``, ``choices``, ``label``: the prompt with its
template and demonstrations, the candidates as zotune scores them, the gold index), and
``zotune_<task>.yaml``, a ``multiple_choice`` task over that file::

    lm_eval --model hf --model_args pretrained=DIR --tasks zotune_sst2 \\
        --include_path DIR/lm_eval

The choices are written with their leading space and the task's ``target_delimiter`` is
empty, so lm-eval scores the same continuation zotune does; both split a candidate's tokens
off the jointly tokenized context + candidate (lm-eval's ``_encode_pair``, zotune's
:meth:`zotune.evaluation.scoring.Scorer._pair_ids`). lm-eval's ``acc`` ranks candidates by
the *sum* of their token log-probabilities: at the same precision it equals zotune's test
accuracy where every candidate is one token (SST-2 and the other one-word verbalizers) or the
run scores by the sum (``task.reduction: sum``); with zotune's default mean over tokens,
multi-token candidates may rank otherwise (:func:`agreement_note` says which holds).
Half-precision weights are scored in float32 (:data:`FLOAT32_NOTE`). zotune tokenizes with the
tokenizer's special tokens; where that adds a BOS token, lm-eval needs ``add_bos_token=True``
(:func:`lm_eval_command` adds it).

Generation tasks (SQuAD, DROP) and tasks whose candidates each have their own context
(WinoGrande) are refused by name: lm-eval's ``multiple_choice`` shares one context.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..tasks.example import Example

FOLDER = "lm_eval"


class LMEvalTaskError(ValueError):
    """The run's task cannot be written as an lm-evaluation-harness task."""


def task_name(task: str) -> str:
    """``zotune_sst2``: lm-eval task names are identifiers."""
    return "zotune_" + "".join(c if c.isalnum() else "_" for c in task)


def rows(examples: Sequence[Example], task: str) -> list[dict]:
    """One ``{"context", "choices", "label"}`` per example; refuses what lm-eval's
    ``multiple_choice`` cannot hold."""
    out = []
    for number, example in enumerate(examples):
        if example.generation:
            raise LMEvalTaskError(
                f"{task}: a generation task (answers scored by F1/EM) is not a multiple-choice "
                "lm-eval task; no task file written")
        if len(set(example.contexts)) != 1:
            raise LMEvalTaskError(
                f"{task}: example {number} gives each candidate its own context (as "
                "WinoGrande does); lm-eval's multiple_choice shares one: no task file written")
        if example.correct:
            raise LMEvalTaskError(
                f"{task}: example {number} counts several candidates right; lm-eval's acc "
                "takes one gold index: no task file written")
        out.append({"context": example.contexts[0], "choices": list(example.continuations),
                    "label": example.label})
    return out


def task_yaml(name: str, data_file: Path) -> str:
    """The lm-eval task reading ``data_file`` (an absolute path: lm-eval reads relative
    ones against its working folder)."""
    spec = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "written_by": "zotune export --lm-eval-task"},
    }
    return yaml.safe_dump(spec, sort_keys=False)


def write_task(examples: Sequence[Example], task: str, folder: Path,
               data_folder: Path | None = None) -> Path:
    """Write ``zotune_<task>.yaml`` and ``.jsonl`` into ``folder``; returns the YAML's path.
    ``data_folder`` is where the YAML says the data is (default: ``folder``; an export
    assembled in a staging folder names its final place)."""
    name = task_name(task)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows(examples, task))
    folder.mkdir(parents=True, exist_ok=True)
    data = (data_folder or folder).resolve() / f"{name}.jsonl"
    (folder / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    path = folder / f"{name}.yaml"
    path.write_text(task_yaml(name, data), encoding="utf-8")
    return path


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts special tokens before a text (zotune tokenizes with them,
    lm-eval's hf model without them unless ``add_bos_token=True``)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(special) > len(plain) and special[-len(plain):] == plain


def lm_eval_command(model_args: str, task: str, folder: str, bos: bool,
                    half_precision: bool = False) -> str:
    """The ``lm_eval`` line that scores the written task; ``half_precision`` weights are
    scored in float32 (:data:`FLOAT32_NOTE`)."""
    args = model_args + (",add_bos_token=True" if bos else "")
    args += ",dtype=float32" if half_precision else ""
    return (f"lm_eval --model hf --model_args {args} --tasks {task_name(task)} "
            f"--include_path {folder}")


# Why the command scores half-precision weights in float32.
FLOAT32_NOTE = (
    "The command scores the half-precision weights in float32 (`dtype=float32`: the values "
    "upcast exactly), where lm-eval and zotune rank alike. The test accuracy above was measured "
    "in the weights' dtype, and the forward's precision alone moves near-tied examples (about a "
    "point on SST-2 for zotune's demo run: docs/results/demo/lm-eval.md in zotune's "
    "repository). In bfloat16 lm-eval would take its log-softmax in bfloat16, whose steps (1/16 "
    "for log-probabilities near -10) tie candidates that float32 tells apart.")


def agreement_note(examples: Sequence[Example], tokenizer, reduction: str) -> str:
    """Whether lm-eval's ``acc`` must equal the run's test accuracy, and why."""
    if reduction == "sum":
        return ("The run scored candidates by the sum of their token log-probabilities, as "
                "lm-eval's `acc` does: at the same precision the two accuracies agree up to "
                "floating-point ties.")
    single = all(
        len(tokenizer(e.contexts[0] + c, add_special_tokens=False)["input_ids"])
        - len(tokenizer(e.contexts[0], add_special_tokens=False)["input_ids"]) == 1
        for e in examples for c in e.continuations)
    if single:
        return ("Every candidate is one token, so lm-eval's `acc` (sum of token "
                "log-probabilities) ranks as the run's mean did: at the same precision the two "
                "accuracies agree up to floating-point ties.")
    return ("The run ranked candidates by the mean of their token log-probabilities; lm-eval's "
            "`acc` sums them, so on multi-token candidates the two may differ.")


def read_samples(output_dir: Path, task: str) -> list[list[float]]:
    """Each example's (in the task file's order) candidate log-likelihoods, from the samples
    file ``lm_eval ... --output_path output_dir --log_samples`` wrote."""
    name = task_name(task)
    files = sorted(Path(output_dir).rglob(f"samples_{name}_*.jsonl"))
    if len(files) != 1:
        raise FileNotFoundError(
            f"{output_dir}: {len(files)} lm-eval samples files for {name} (expected one)")
    samples = [json.loads(line) for line in files[0].read_text().splitlines() if line]
    samples.sort(key=lambda sample: sample["doc_id"])
    return [[float(choice[0]) for choice in sample["filtered_resps"]] for sample in samples]


def summed_loglikelihoods(run_dir: Path, dtype: str | None = None,
                          batch_size: int | None = None) -> list[list[float]]:
    """The run's kept checkpoint scored by zotune on its test split, each candidate's token
    log-probabilities summed (what lm-eval's ``acc`` ranks by, whatever reduction the run
    used); ``dtype`` loads the weights in another precision (``float32``: exact upcast)."""
    import torch

    from ..config import load_config
    from ..training.checkpoints import (
        BEST_FILE,
        load_trainable_checkpoint,
        load_trainable_state,
    )
    from ..training.run import setup
    from ..training.run_folder import CONFIG_FILE

    config = load_config(Path(run_dir) / CONFIG_FILE)
    config.task.reduction = "sum"
    if dtype is not None:
        config.model.dtype = dtype
    run = setup(config, for_training=False)
    load_trainable_state(run.model, load_trainable_checkpoint(Path(run_dir) / BEST_FILE))
    test, size = run.splits.test, batch_size or config.train.eval_batch_size
    scores: list[list[float]] = []
    with torch.no_grad():
        for start in range(0, len(test), size):
            batch = run.scorer.encode(test[start : start + size])
            scores += run.scorer.scores(batch).tolist()
    return scores


def ranked_accuracy(scores: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """The accuracy of ranking by ``scores`` (the first of tied candidates wins, as lm-eval's
    argmax)."""
    right = [max(range(len(s)), key=s.__getitem__) == label
             for s, label in zip(scores, labels, strict=True)]
    return sum(right) / len(right)


__all__ = ["FLOAT32_NOTE", "FOLDER", "LMEvalTaskError", "adds_bos", "agreement_note",
           "lm_eval_command", "ranked_accuracy", "read_samples", "rows",
           "summed_loglikelihoods", "task_name", "task_yaml", "write_task"]
