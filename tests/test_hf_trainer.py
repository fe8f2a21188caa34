"""ZOTrainer: a Hugging Face Trainer making zotune steps; the README example runs here."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments

from zotune.integrations.hf import ZOTrainer
from zotune.models.random_shapes import random_model

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The code block of the README's "With the Hugging Face Trainer" section."""
    section = README.read_text().split("## With the Hugging Face Trainer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_and_lowers_the_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    assert namespace["after"] < namespace["before"]
    losses = [h["loss"] for h in namespace["trainer"].state.log_history if "loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert (tmp_path / "zo-trainer-out" / "checkpoint-20" / "optimizer.pt").is_file()


def lm_data():
    tokenizer = random_model("tiny-llama").tokenizer
    ids = tokenizer("the cat sat on the mat. " * 40, add_special_tokens=False)["input_ids"]
    rows = [ids[i : i + 32] for i in range(0, len(ids) - 32, 8)]
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


def make_trainer(out, optimizer="zo-sgd", options=None, **arguments):
    settings = {
        "output_dir": str(out), "max_steps": 6, "per_device_train_batch_size": 8,
        "learning_rate": 3e-3, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
        "use_cpu": True, "disable_tqdm": True, "max_grad_norm": 0.0, **arguments,
    }
    model = random_model("tiny-llama", seed=0).model
    return ZOTrainer(model=model, args=TrainingArguments(**settings), train_dataset=lm_data(),
                     zo_optimizer=optimizer, zo_options=options or {})


def step_losses(trainer):
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


@pytest.mark.parametrize("optimizer, options", [("zo-sgd", {}), ("zo-adam", {"q": 2})])
def test_a_resumed_run_continues_the_same_trajectory(tmp_path, optimizer, options):
    whole = make_trainer(tmp_path / "a", optimizer, options, save_strategy="steps", save_steps=3)
    whole.train()
    resumed = make_trainer(tmp_path / "a", optimizer, options)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    first, second = step_losses(whole), step_losses(resumed)
    assert sorted(second) == [1, 2, 3, 4, 5, 6]  # steps 1-3 come from the checkpoint's state
    assert [second[s] for s in (4, 5, 6)] == pytest.approx([first[s] for s in (4, 5, 6)],
                                                           rel=1e-6)
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed.zotune_optimizer.steps_taken == 6


def test_gradient_accumulation_accumulates_the_zo_loss(tmp_path):
    one = make_trainer(tmp_path / "one", max_steps=2)
    one.train()
    with pytest.warns(UserWarning, match="gradient_accumulation_steps=2 accumulates the loss"):
        parts = make_trainer(tmp_path / "parts", max_steps=2, per_device_train_batch_size=4,
                             gradient_accumulation_steps=2)
    parts.train()
    moved = max(float((a - b).abs().max()) for a, b in zip(
        one.model.parameters(), random_model("tiny-llama", seed=0).model.parameters(),
        strict=True))
    assert moved > 1e-5
    for a, b in zip(one.model.parameters(), parts.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-2 * moved)
    assert step_losses(parts) == pytest.approx(step_losses(one), rel=1e-5)


@pytest.mark.parametrize("optimizer", ["zo-sgd", "fo-sgd"])
def test_max_grad_norm_is_named_once_at_start_up(tmp_path, optimizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, optimizer, max_grad_norm=1.0)
    ours = [w for w in caught if "ZOTrainer" in str(w.message)]
    assert len(ours) == 1 and "max_grad_norm=1.0 is not applied" in str(ours[0].message)


def test_a_first_order_registry_optimizer_trains_too(tmp_path):
    trainer = make_trainer(tmp_path, "fo-sgd", learning_rate=1e-1)
    trainer.train()
    losses = step_losses(trainer)
    assert losses[6] < losses[1]


@pytest.mark.parametrize(
    "optimizer, options, message",
    [
        ("zo-sgd", {"lr": 1e-3}, "the learning rate is TrainingArguments.learning_rate"),
        ("zo-sgd", {"betas": (0.9, 0.99)}, "zo_options\\['betas'\\] does not apply to zo-sgd"),
        ("sgd", {}, "sgd"),
        ("mezo-svrg", {}, "mezo-svrg asks the training loop for batches of its own"),
    ],
)
def test_bad_optimizer_choices_are_refused(tmp_path, optimizer, options, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, optimizer, options)


def test_an_ignored_optim_is_named_and_no_grad_norm_is_logged(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, max_steps=2, optim="adafactor", max_grad_norm=1.0)
    ours = [str(w.message) for w in caught if "ZOTrainer" in str(w.message)]
    assert len(ours) == 1
    assert "optim='adafactor' is not used: the optimizer is zo_optimizer='zo-sgd'" in ours[0]
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and not any("grad_norm" in h for h in logged)


@pytest.mark.parametrize(
    ("saved", "resumed", "options", "message"),
    [
        ("zo-adam", "zo-sgd", {}, "class is 'ZOAdam', not 'ZOSGD'"),
        ("zo-sgd", "zo-adam", {}, "class is 'ZOSGD', not 'ZOAdam'"),
        ("zo-sgd", "zo-sgd", {"eps": 1e-2}, "eps is 0.001, not 0.01"),
    ],
)
def test_resuming_another_optimizers_state_is_refused_by_name(tmp_path, saved, resumed,
                                                              options, message):
    """Issue 31: the state went in (zo-sgd state in zo-adam then failed with KeyError 'betas',
    another ε trained on silently)."""
    first = make_trainer(tmp_path / "a", saved, {"eps": 1e-3}, max_steps=2,
                         save_strategy="steps", save_steps=2)
    first.train()
    other = make_trainer(tmp_path / "a", resumed, {"eps": 1e-3, **options}, max_steps=3)
    with pytest.raises(ValueError, match=re.escape(message)):
        other.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
