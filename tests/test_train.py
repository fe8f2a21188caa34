"""The fine-tuning loop and the ``zotune`` command line, end to end on tiny random models."""

from __future__ import annotations

import json
import shlex

import pytest
import torch

from zotune import cli
from zotune.config import build_config, command_line
from zotune.optim import OPTIMIZERS
from zotune.recipes.demo import demo_config
from zotune.training.train import batch_for_step, finetune
from zotune.tuning import scheme_keys
from zotune.utils.files import atomic_write


def run_cli(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


LR = {"fo-sgd": 1e-2, "fo-adam": 1e-3, "zo-adam": 1e-3, "zo-sgd-sign": 1e-3}


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("scheme", scheme_keys())
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_every_optimizer_and_scheme_trains_from_the_command_line(
    optimizer, scheme, shape, sst2_dir, tmp_path, capsys
):
    argv = [
        "train", f"--model=random:{shape}", "--task=sst2", f"--data-dir={sst2_dir}",
        "--num-train=16", "--num-val=6", "--num-test=8", f"--tuning={scheme}",
        f"--optimizer={optimizer}", f"--lr={LR.get(optimizer, 1e-4)}", "--steps=2",
        "--batch-size=4", "--eval-every=1", "--eval-batch-size=8", "--no-progress",
        f"--output-dir={tmp_path}",
    ]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "test accuracy" in out
    result = json.loads((tmp_path / "result.json").read_text())
    assert 0 <= result["test_accuracy"] <= 1
    assert result["steps"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert {"step", "loss", "lr", "step_seconds", "peak_memory_mb"} <= set(records[1])


def test_best_checkpoint_is_chosen_on_validation(sst2_dir, tmp_path, tiny_run_config):
    config = tiny_run_config(sst2_dir, tmp_path, train__steps=6, optimizer__lr=2e-2,
                             train__seed=2)
    result = finetune(config)
    vals = [(r["val_accuracy"], -r["step"]) for r in result.history if "val_accuracy" in r]
    best_val, negative_step = max(vals)
    assert result.best_val_accuracy == best_val
    assert result.best_step == -negative_step
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best, "the best checkpoint holds the trainable tensors"
    # best.pt must hold θ at best_step: replay the same run, stopped there, and compare.
    assert result.best_step > 0, "this seed's validation accuracy improves after step 0"
    stopped = tmp_path / "stopped"
    finetune(tiny_run_config(sst2_dir, stopped, train__steps=result.best_step,
                             optimizer__lr=2e-2, train__seed=2))
    at_best = torch.load(stopped / "last.pt", weights_only=False)
    assert at_best["step"] == result.best_step
    assert best.keys() == at_best["trainable"].keys()
    for name, value in best.items():
        torch.testing.assert_close(value, at_best["trainable"][name], rtol=0, atol=0)


def _trainable_after(path):
    return torch.load(path / "last.pt", weights_only=False)["trainable"]


@pytest.mark.parametrize("optimizer", ["zo-sgd", "zo-adam", "fo-adam"])
def test_resume_continues_the_same_trajectory(optimizer, sst2_dir, tmp_path, tiny_run_config):
    straight, split = tmp_path / "straight", tmp_path / "split"
    finetune(tiny_run_config(sst2_dir, straight, train__steps=4, optimizer__name=optimizer))
    finetune(tiny_run_config(sst2_dir, split, train__steps=2, optimizer__name=optimizer))
    finetune(tiny_run_config(sst2_dir, split, train__steps=4, optimizer__name=optimizer,
                             train__resume=True))
    expected, resumed = _trainable_after(straight), _trainable_after(split)
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("stopped_at", [2, 4])  # mid-training; after training, before the test
def test_a_resumed_run_reports_the_whole_runs_step_times(stopped_at, sst2_dir, tmp_path,
                                                        tiny_run_config):
    """A run killed after its last step resumes only to be tested: its s/step, training time,
    history and peak memory are those of all its steps, not of the zero it ran after resuming."""
    finetune(tiny_run_config(sst2_dir, tmp_path, train__steps=stopped_at))
    first = torch.load(tmp_path / "last.pt", weights_only=False)
    result = finetune(tiny_run_config(sst2_dir, tmp_path, train__steps=4, train__resume=True))
    times = [r["step_seconds"] for r in result.history if "step_seconds" in r]
    assert len(times) == 4, "every step's record, the ones before the resume included"
    assert result.seconds_per_step == sorted(times)[len(times) // 2] > 0
    assert result.train_seconds >= first["train_seconds"] > 0
    assert result.peak_memory_mb >= max(r["peak_memory_mb"] for r in result.history
                                        if "peak_memory_mb" in r)


def test_zero_shot_accuracy_is_measured_before_training(sst2_dir, tiny_run_config):
    result = finetune(tiny_run_config(sst2_dir, train__eval_test_before=True))
    assert result.test_accuracy_before is not None
    assert "before training" in result.summary()


@pytest.mark.parametrize("every", [False, True])
def test_test_accuracy_joins_the_curve_only_when_asked(every, sst2_dir, tiny_run_config):
    result = finetune(tiny_run_config(sst2_dir, train__steps=4, train__eval_every=2,
                                      train__eval_test_every=every))
    evaluations = [r for r in result.history if "val_accuracy" in r]
    assert [r["step"] for r in evaluations] == [0, 2, 4]
    assert all(("test_accuracy" in r) is every for r in evaluations)
    if every:
        # The curve's point at the chosen step is the test score the run reports.
        at_best = next(r for r in evaluations if r["step"] == result.best_step)
        assert at_best["test_accuracy"] == pytest.approx(result.test_accuracy, abs=1e-6)


def test_a_run_records_the_class_it_gave_each_test_example(sst2_dir, tiny_run_config):
    """What lets the report tell a constant predictor (one class throughout) from a model."""
    result = finetune(tiny_run_config(sst2_dir))
    predictions = result.test_predictions
    assert len(predictions) == result.test_examples == len(result.test_scores)
    assert set(predictions) <= {0, 1}  # SST-2's two candidates


def test_batches_are_a_pure_function_of_seed_and_step():
    examples = list(range(10))
    first = [batch_for_step(examples, s, 4, seed=1) for s in range(5)]
    again = [batch_for_step(examples, s, 4, seed=1) for s in range(5)]
    assert first == again
    epoch = [x for b in first[:2] for x in b] + first[2][:2]
    assert sorted(epoch) == examples  # each epoch visits every example once
    assert first != [batch_for_step(examples, s, 4, seed=2) for s in range(5)]


def test_atomic_write_leaves_nothing_behind_on_a_crash(tmp_path):
    target = tmp_path / "last.pt"

    def crash(path):
        path.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert list(tmp_path.iterdir()) == []


def test_a_diverging_run_stops_with_a_one_line_error(sst2_dir, capsys):
    argv = [
        "train", "--model=random:tiny-llama", f"--data-dir={sst2_dir}", "--num-train=16",
        "--num-val=6", "--num-test=8", "--optimizer=zo-sgd", "--lr=1e12", "--steps=40",
        "--batch-size=4", "--eval-every=100", "--no-progress",
    ]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert "zotune: error:" in err and "lower optimizer.lr" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--task=sst3"], "sst3"),
        (["--optimizer=zo-sgdd"], "unknown optimizer 'zo-sgdd'"),
        (["--tuning=adapter"], "adapter"),
        (["--model=random:tiny-gpt"], "tiny-gpt"),
        (["optimizer.learning_rate=1"], "unknown config key: optimizer.learning_rate"),
        (["--momentum=0.9"], "optimizer.momentum does not apply to zo-sgd"),
        (["--schedule=step"], "unknown schedule 'step' (constant, linear, cosine)"),
        (["--steps=-1"], "train.steps: invalid value -1"),
        (["--warmup-steps=5"], "optimizer.warmup_steps: 5 must be between 0 and train.steps (1)"),
        (["--lora-dropout=0.1"], "tuning.lora_dropout=0.1 applies to lora tuning"),
        (["--tuning=lora", "--lora-target-modules=q_proj,nope"],
         "tuning.lora_target_modules: 'nope' names no linear layer of the model"),
    ],
)
def test_bad_input_gives_one_line_errors(flags, message, sst2_dir, capsys):
    argv = ["train", "--model=random:tiny-llama", f"--data-dir={sst2_dir}", "--num-train=8",
            "--num-val=4", "--num-test=4", "--steps=1", "--no-progress", *flags]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("zotune: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_missing_data_dir_is_named(tmp_path, capsys):
    code, _, err = run_cli(
        ["train", "--model=random:tiny-llama", f"--data-dir={tmp_path / 'nowhere'}",
         "--no-progress"],
        capsys,
    )
    assert code == 2 and "nowhere" in err


def test_eval_reports_a_runs_best_checkpoint(sst2_dir, tmp_path, capsys, tiny_run_config):
    finetune(tiny_run_config(sst2_dir, tmp_path))
    code, out, err = run_cli(["eval", str(tmp_path), "--split=val"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["split"] == "val" and 0 <= report["accuracy"] <= 1


def test_tasks_lists_the_suite(capsys):
    code, out, _ = run_cli(["tasks"], capsys)
    assert code == 0
    names = {line.split()[0] for line in out.splitlines()}
    assert {"sst2", "copa", "winogrande", "multirc"} <= names


@pytest.mark.parametrize(
    ("config", "flags"),
    [
        (demo_config(), ["--model smollm2-135m", "--dtype bfloat16", "--num-val 200",
                         "--lr 3e-05", "--eps 0.001", "--steps 250", "--eval-test-before"]),
        # a frontier suite run: switches on and off, a scheme's options, lists, an optimizer
        # option declared by one entry
        (build_config({
            "model": {"dtype": "bfloat16"},
            "task": {"num_val": 500, "num_test": 872},
            "tuning": {"scheme": "lora", "lora_r": 4,
                       "lora_target_modules": "q_proj,v_proj"},
            "optimizer": {"name": "lozo-m", "lr": 1e-3, "eps": 1e-2, "lozo_rank": 4},
            "train": {"steps": 480, "eval_every": 120, "eval_test_every": True,
                      "progress": False}}),
         ["--tuning lora", "--lora-r 4", "--lora-target-modules q_proj,v_proj",
          "--optimizer lozo-m", "--lr 0.001", "--eval-test-every", "--no-progress",
          "--lozo-rank 4"]),
        (build_config({"model": {"device_map": {"lm_head": "cpu"}},
                       "optimizer": {"name": "zo-adam", "betas": [0.8, 0.99],
                                     "stochastic_rounding": False}}),
         ["'model.device_map={lm_head: cpu}'", "--betas 0.8,0.99",
          "--no-stochastic-rounding"]),
    ],
    ids=["demo", "lozo-m-lora", "override-and-switch-off"],
)
def test_a_configs_command_line_builds_it_again(config, flags):
    """command_line names only what differs from the defaults, and `zotune train` given it
    builds the same config (the demo prints its own; the recipes page shows the suite's)."""
    line = command_line(config)
    assert line.startswith("zotune train ") and all(f" {flag}" in line for flag in flags)
    args = cli.build_parser().parse_args(shlex.split(line)[1:])
    assert cli._config_from(args, args.items) == config
    assert "--output-dir" not in command_line(config, omit=("train.output_dir",))


@pytest.mark.parametrize(
    ("schedule", "warmup", "factors"),
    [
        ("constant", 0, [1, 1, 1, 1, 1]),
        ("constant", 2, [0, 0.5, 1, 1, 1]),
        ("linear", 0, [1, 0.75, 0.5, 0.25, 0]),
        ("linear", 2, [0, 0.5, 1, 0.5, 0]),
        ("cosine", 0, [1, (1 + 2**-0.5) / 2, 0.5, (1 - 2**-0.5) / 2, 0]),
        ("cosine", 2, [0, 0.5, 1, 0.5, 0]),
    ],
)
def test_schedules_with_warmup(schedule, warmup, factors):
    """lr multiples over 4 steps (step 4 is the end): linear warmup from 0, then the schedule
    over the remaining steps, as transformers' get_*_schedule_with_warmup."""
    from zotune.training.run import lr_factor

    got = [lr_factor(schedule, step, 4, warmup) for step in range(5)]
    assert got == pytest.approx(factors, abs=1e-12)


def test_cosine_warmup_and_lora_flags_reach_the_run(sst2_dir, tmp_path):
    from zotune.config import load_config
    from zotune.training.run import setup

    args = cli.build_parser().parse_args([
        "train", "--model=random:tiny-llama", f"--data-dir={sst2_dir}", "--num-train=8",
        "--num-val=4", "--num-test=4", "--steps=4", "--schedule=cosine", "--warmup-steps=2",
        "--tuning=lora", "--lora-target-modules=q_proj,k_proj,v_proj", "--lora-dropout=0.1",
        "--lr=1e-3",
    ])
    config = load_config(None, dict(cli._overrides(args, args.items)[1]))
    run = setup(config)
    lora = run.model.peft_config["default"]
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj"}
    assert lora.lora_dropout == 0.1
    lrs = []
    for _ in range(4):
        lrs.append(run.optimizer.param_groups[0]["lr"])
        run.scheduler.step()
    assert lrs == pytest.approx([0, 5e-4, 1e-3, 5e-4])


def test_a_run_without_an_output_dir_says_nothing_is_saved_and_returns_the_model(
    sst2_dir, tiny_run_config, capsys
):
    result = finetune(tiny_run_config(sst2_dir))
    err = capsys.readouterr().err
    assert "warning: no --output-dir, so nothing of this run is saved" in err
    assert result.run_dir is None and result.summary().startswith("test accuracy")
    assert isinstance(result.model, torch.nn.Module)
    assert "model" not in result.record() and "history" not in result.record()


def test_peft_wrapping_leaks_no_third_party_future_warning():
    import warnings

    from zotune.models.random_shapes import random_model
    from zotune.tuning.schemes import apply_tuning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_tuning(random_model("tiny-llama").model, "lora")
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
