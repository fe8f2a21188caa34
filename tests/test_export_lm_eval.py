"""An export scored by lm-evaluation-harness, an evaluator zotune does not control: the
command the model card gives, run as written, finds the log-likelihoods and the test accuracy
zotune measured (issue 33)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from zotune.evaluation.lm_eval_task import (
    LMEvalTaskError,
    ranked_accuracy,
    read_samples,
    rows,
    summed_loglikelihoods,
    task_name,
)
from zotune.models.export import CARD_FILE, ExportError, export_run
from zotune.tasks.example import Example
from zotune.training.train import finetune


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (Example(("Q:",), (" A",), 0, answers=("A",)), "a generation task"),
        (Example(("Ann left.", "Bob left."), (" He ran", " He ran"), 1),
         "gives each candidate its own context"),
        (Example(("Q:",) * 3, (" a", " b", " c"), 0, correct=(2,)),
         "counts several candidates right"),
    ],
)
def test_what_lm_eval_s_multiple_choice_cannot_hold_is_refused_by_name(example, message):
    with pytest.raises(LMEvalTaskError, match=message):
        rows([Example(("ok",) * 2, (" a", " b"), 1), example], "mytask")


def test_a_row_is_the_rendered_context_choices_and_gold_index():
    assert rows([Example(("It was",) * 2, (" terrible", " great"), 1)], "sst2") == [
        {"context": "It was", "choices": [" terrible", " great"], "label": 1}]
    assert task_name("my-task.v2") == "zotune_my_task_v2"


def card_command(folder: Path) -> list[str]:
    card = (folder / CARD_FILE).read_text()
    (line,) = [line for line in card.splitlines() if line.startswith("lm_eval ")]
    return shlex.split(line)


@pytest.mark.parametrize(("scheme", "optimizer", "merge"),
                         [("full", "fo-sgd", False), ("lora", "zo-sgd", True)])
def test_lm_eval_scores_an_export_as_zotune_did(tmp_path, sst2_dir, tiny_run_config, scheme,
                                               optimizer, merge):
    """The card's lm_eval line, run as written (offline, on CPU), gives each test example's
    candidate log-likelihoods within fp32 rounding of zotune's token log-probabilities summed
    (what lm-eval's acc ranks by), and the accuracy of that ranking. The tiny model's byte
    tokenizer makes every candidate several tokens and the run ranks by their mean, so the
    card says the two accuracies may differ."""
    pytest.importorskip("lm_eval")
    run_dir = tmp_path / "run"
    finetune(tiny_run_config(sst2_dir, run_dir, tuning__scheme=scheme, optimizer__name=optimizer,
                             optimizer__lr=1e-1, train__steps=4))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["best_step"] > 0, "a trained checkpoint, so the adapter is not the base"
    folder = export_run(run_dir, tmp_path / "export", lm_eval_task=True, merge=merge)
    spec = yaml.safe_load((folder / "lm_eval" / "zotune_sst2.yaml").read_text())
    assert spec["dataset_kwargs"]["data_files"]["test"] == str(
        (folder / "lm_eval" / "zotune_sst2.jsonl").resolve())
    command = card_command(folder)
    assert command[:2] == ["lm_eval", "--model"]
    samples_dir = tmp_path / "lm-eval-out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "lm_eval", *command[1:], "--device", "cpu", "--batch_size", "1",
         "--output_path", str(samples_dir), "--log_samples"],
        capture_output=True, text=True, env=env, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = samples_dir.rglob("results_*.json")
    accuracy = json.loads(results_file.read_text())["results"]["zotune_sst2"]["acc,none"]
    theirs = read_samples(samples_dir, "sst2")
    ours = summed_loglikelihoods(run_dir)
    assert torch.tensor(theirs) == pytest.approx(torch.tensor(ours), abs=1e-4)
    labels = [json.loads(line)["label"] for line in
              (folder / "lm_eval" / "zotune_sst2.jsonl").read_text().splitlines()]
    assert accuracy == pytest.approx(ranked_accuracy(ours, labels))
    assert "on multi-token candidates the two may differ" in (folder / CARD_FILE).read_text()


def test_an_adapter_lm_eval_would_resize_is_flagged_in_its_card(tmp_path, sst2_dir,
                                                                 tiny_run_config):
    """lm-eval resizes a base's embeddings to the tokenizer's length before loading an adapter
    (the random shapes' 320-row vocabulary against their byte tokenizer's length), which
    changes every score: the adapter's card says so and points to --merge."""
    run_dir = tmp_path / "run"
    finetune(tiny_run_config(sst2_dir, run_dir, tuning__scheme="lora", train__steps=1))
    folder = export_run(run_dir, tmp_path / "export", lm_eval_task=True, allow_untrained=True)
    card = (folder / CARD_FILE).read_text()
    assert "**lm-eval will not score this adapter as trained:**" in card
    assert "(`zotune export --merge`)" in card
    (line,) = [line for line in card.splitlines() if line.startswith("lm_eval ")]
    assert f"peft={folder.resolve()},tokenizer={folder.resolve()}" in line


class OneTokenPerWord:
    """A tokenizer with a token per space-separated word, and a BOS when asked for one."""

    def __call__(self, text, add_special_tokens=True):
        ids = [hash(word) % 1000 for word in text.split(" ") if word]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


@pytest.mark.parametrize(
    ("continuations", "reduction", "said"),
    [
        ((" terrible", " great"), "mean", "Every candidate is one token"),
        ((" not good", " great"), "mean", "on multi-token candidates the two may differ"),
        ((" not good", " great"), "sum", "scored candidates by the sum"),
    ],
)
def test_the_card_says_when_lm_eval_s_accuracy_must_equal_the_run_s(continuations, reduction,
                                                                   said):
    from zotune.evaluation.lm_eval_task import adds_bos, agreement_note

    examples = [Example(("It was",) * 2, continuations, 0)]
    assert said in agreement_note(examples, OneTokenPerWord(), reduction)
    assert adds_bos(OneTokenPerWord())


def test_a_task_lm_eval_cannot_hold_is_refused_before_the_model_is_built(
        tmp_path, sst2_dir, tiny_run_config, monkeypatch):
    run_dir = tmp_path / "run"
    finetune(tiny_run_config(sst2_dir, run_dir, train__steps=1))
    monkeypatch.setattr("zotune.evaluation.lm_eval_task.rows", _refuse)
    with pytest.raises(ExportError, match="--lm-eval-task: sst2: refused here"):
        export_run(run_dir, tmp_path / "export", lm_eval_task=True, allow_untrained=True)
    assert not (tmp_path / "export").exists()


def _refuse(examples, task):
    raise LMEvalTaskError(f"{task}: refused here")


@pytest.mark.parametrize(("run_dtype", "export_dtype", "float32"),
                         [("bfloat16", None, True), ("bfloat16", "float32", False),
                          ("float32", None, False)])
def test_half_precision_weights_are_scored_in_float32(tmp_path, sst2_dir, tiny_run_config,
                                                      run_dtype, export_dtype, float32):
    """lm-eval's bf16 log-softmax ties candidates: the card's command asks for float32."""
    from zotune.evaluation.lm_eval_task import FLOAT32_NOTE

    run_dir = tmp_path / "run"
    finetune(tiny_run_config(sst2_dir, run_dir, model__dtype=run_dtype, train__steps=1))
    folder = export_run(run_dir, tmp_path / "export", lm_eval_task=True, allow_untrained=True,
                        dtype=export_dtype)
    card = (folder / CARD_FILE).read_text()
    assert ("dtype=float32" in " ".join(card_command(folder))) is float32
    assert (FLOAT32_NOTE in card) is float32
