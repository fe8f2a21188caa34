"""Baselines beside fine-tuning: in-context demonstrations (--demos), surface-form
calibration (--calibrate), and zero-shot / icl rows of a suite, reported above the rest."""

from __future__ import annotations

import json

import pytest
import torch

from zotune.cli import main
from zotune.evaluation.baselines import (
    calibrated_predictions,
    demonstration_text,
    with_demonstrations,
)
from zotune.evaluation.scoring import Scorer
from zotune.tasks import Example, get_task


def test_demonstrations_are_gold_verbalizations_before_the_prompt():
    demos = [Example(("a It was",) * 2, (" terrible", " great"), 1),
             Example(("b It was",) * 2, (" terrible", " great"), 0)]
    assert demonstration_text(demos) == "a It was great\n\nb It was terrible"
    (example,) = with_demonstrations([Example(("c It was",) * 2, (" bad", " good"), 0)], demos)
    assert example.contexts == ("a It was great\n\nb It was terrible\n\nc It was",) * 2
    assert example.continuations == (" bad", " good")


def test_generation_demonstrations_end_at_their_answer():
    demo = Example(("Q: x\nAnswer:",), (" y\n",), 0, answers=("y",))
    assert demonstration_text([demo]) == "Q: x\nAnswer: y"


@pytest.mark.parametrize(
    "task,row,context,candidates",
    [
        ("sst2", {"sentence": "fine", "label": 1}, "It was", (" terrible", " great")),
        ("rte", {"premise": "p", "hypothesis": "h", "label": 0}, "", ("Yes", "No")),
        ("copa", {"premise": "p.", "choice1": "He left", "choice2": "I stayed",
                  "question": "effect", "label": 0}, "so", (" he left", " I stayed")),
    ],
)
def test_calibration_prompts_are_mezos_encode_sfc(task, row, context, candidates):
    calibration = get_task(task).example(row).calibration
    assert calibration == ((context,) * len(candidates), candidates)


def test_calibrated_scores_subtract_the_candidates_prior(tiny_model):
    """argmax_i [Σ log p(c_i | input) − Σ log p(c_i | calibration prompt)], checked against
    the two sums taken separately."""
    model, loaded = tiny_model()
    spec = get_task("sst2")
    examples = [spec.example({"sentence": f"movie {i}", "label": i % 2}) for i in range(6)]
    summed = Scorer(model, loaded.tokenizer, reduction="sum")
    plain = summed.scores(summed.encode(examples))
    prior = summed.scores(summed.encode([Example(*e.calibration, e.label) for e in examples]))
    expected = (plain - prior).argmax(-1)
    scorer = Scorer(model, loaded.tokenizer)
    assert torch.equal(calibrated_predictions(scorer, examples, batch_size=4), expected)


@pytest.mark.parametrize(
    "flags,problem",
    [
        (["--task", "winogrande", "--calibrate"], "winogrande has no calibration prompt"),
        (["--demos", "20"], "task.demos: 20 demonstrations"),
        (["--demos", "2", "--split", "train"], "--demos are drawn from the train split"),
    ],
)
def test_baselines_that_cannot_apply_are_refused(flags, problem, sst2_dir, capsys, data_dir):
    folder = data_dir if "winogrande" in flags else sst2_dir
    code = main(["eval", "--model", "random:tiny-llama", "--data-dir", str(folder),
                 "--num-train", "8", "--num-val", "4", "--num-test", "4", *flags])
    assert code == 2
    assert problem in capsys.readouterr().err


def test_eval_with_demos_and_calibration_prints_the_metric(sst2_dir, capsys):
    code = main(["eval", "--model", "random:tiny-llama", "--data-dir", str(sst2_dir),
                 "--num-train", "8", "--num-val", "4", "--num-test", "6", "--demos", "4",
                 "--calibrate"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == {"task", "split", "accuracy"}


def test_a_suite_with_zero_shot_and_icl_rows_reports_them_first(sst2_dir, tmp_path, capsys,
                                                                write_suite):
    suite = write_suite(
        tmp_path / "baselines.yaml",
        grid={"tuning": ["full"], "optimizer": ["zo-sgd", "zero-shot", "icl"]},
        sweep={"default": {"lr": [1e-3, 1e-4]}},
        overrides={"icl": {"task": {"demos": 4}}},
        seeds=[0],
    )
    results = tmp_path / "results"
    code = main(["bench", str(suite), f"task.data_dir={sst2_dir}", "--results", str(results)])
    out = capsys.readouterr().out
    assert code == 0 and "4 runs: 4 done" in out, "zo-sgd's two lrs; one run per baseline"
    assert main(["report", str(results), "--no-plots"]) == 0
    markdown = (results / "report" / "report.md").read_text()
    table = markdown.split("### Test accuracy (%)", 1)[1]
    rows = [line.split("|")[1].strip() for line in table.splitlines()
            if line.startswith("| ")][2:5]  # after the header and its rule
    assert rows == ["zero-shot", "icl", "zo-sgd"]
