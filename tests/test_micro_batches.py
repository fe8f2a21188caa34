"""Micro-batches: the same step as one batch (ZO: the same estimate; FO: accumulated
gradients), the activations of one part."""

from __future__ import annotations

import json

import pytest
import torch

from zotune.config import ConfigError, build_config
from zotune.evaluation.scoring import Scorer
from zotune.optim import create_optimizer
from zotune.profiling.memory_model import estimate_memory
from zotune.training.micro_batches import MicroBatchLoss, batch_loss, parts
from zotune.training.run import load_task_splits, resolve_config
from zotune.training.train import finetune


@pytest.fixture(scope="module")
def examples(sst2_dir):
    config = build_config({"task": {"name": "sst2", "data_dir": str(sst2_dir), "num_train": 16,
                                    "num_val": 4, "num_test": 4}})
    return load_task_splits(config, log=lambda message: None).train[:8]


def one_step(tiny_model, examples, optimizer, loss, micro, **options):
    """The update and loss of one step from the same start, the batch whole or in parts."""
    attention = "eager" if optimizer == "forward-grad" else None  # forward-mode AD
    model, loaded = tiny_model("tiny-llama", attn_implementation=attention)
    start = [p.detach().clone() for p in model.parameters()]
    scorer = Scorer(model, loaded.tokenizer, loss=loss)
    opt = create_optimizer(optimizer, model, lr=1e-2, **options)
    if optimizer.startswith("fo"):
        model.train()
    value = opt.step(batch_loss(scorer, examples, micro))
    after = model.parameters()
    update = torch.cat([(p.detach() - s).flatten() for p, s in zip(after, start, strict=True)])
    return update, float(value)


# Linear updates (θ ← θ − lr·ĝ), where the update is the estimate scaled. A ZO estimate
# divides a loss difference by 2ε, so the losses' fp32 rounding (≈1e-7 of f) shows in it
# at ≈1e-7·f / |f(θ+εz) − f(θ−εz)| of its size: ≈1e-3 on a random model's flat loss.
@pytest.mark.parametrize(
    "optimizer, options, tolerance",
    [
        ("zo-sgd", {"seed": 3}, 1e-2),
        ("zo-sgd", {"seed": 3, "q": 3, "eps": 1e-2}, 1e-2),
        ("forward-grad", {"seed": 3}, 1e-4),
        ("zo-sgd", {"seed": 3, "hybrid_layers": 1}, 1e-2),
        ("fo-sgd", {}, 1e-4),
    ],
)
@pytest.mark.parametrize("loss", ["ce", "lm"])
@pytest.mark.parametrize("micro", [1, 3])
def test_a_step_in_micro_batches_is_the_one_batch_step(
    tiny_model, examples, optimizer, options, tolerance, loss, micro
):
    whole, whole_loss = one_step(tiny_model, examples, optimizer, loss, None, **options)
    split, split_loss = one_step(tiny_model, examples, optimizer, loss, micro, **options)
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    size = float(whole.abs().max())
    assert size > 1e-5  # the step did something to compare
    assert float((split - whole).abs().max()) <= tolerance * size


@pytest.mark.parametrize("loss", ["ce", "lm"])
def test_the_loss_is_the_weighted_mean_of_the_parts(tiny_model, examples, loss):
    model, loaded = tiny_model("tiny-llama")
    scorer = Scorer(model, loaded.tokenizer, loss=loss)
    closure = MicroBatchLoss(scorer, examples, 3)
    assert [len(batch.labels) for batch in closure.batches] == [3, 3, 2]
    assert sum(closure.fractions) == pytest.approx(1.0)
    with torch.no_grad():
        whole = scorer.loss(scorer.encode_for_loss(examples))
        assert float(closure()) == pytest.approx(float(whole), rel=1e-6)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_bad_micro_batch_sizes_are_refused(examples, size):
    with pytest.raises(ValueError, match="micro-batch size must be an int >= 1"):
        parts(examples, size)


def test_config_refuses_a_zero_micro_batch():
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size: must be at least 1, got 0"):
        resolve_config({"train": {"micro_batch_size": 0}})


def test_a_run_in_micro_batches_logs_the_same_losses(tmp_path, sst2_dir, tiny_run_config):
    losses = {}
    for micro in (None, 2):
        out = tmp_path / f"run-{micro}"
        finetune(tiny_run_config(sst2_dir, out, train__micro_batch_size=micro))
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[micro] = [r["loss"] for r in records if "loss" in r]
    assert losses[2] == pytest.approx(losses[None], rel=1e-5)


@pytest.mark.parametrize("optimizer", ["zo-sgd", "fo-sgd"])
def test_memory_estimate_takes_micro_batches(tiny_model, optimizer):
    model, _ = tiny_model("tiny-llama")
    sizes = {"batch_size": 16, "seq_len": 64}
    whole = estimate_memory(model, optimizer, **sizes)
    split = estimate_memory(model, optimizer, micro_batch_size=4, **sizes)
    quarter = estimate_memory(model, optimizer, batch_size=4, seq_len=64)
    assert split.notes["micro_batch_size"] == 4
    if optimizer == "zo-sgd":
        assert split.activations == quarter.activations < whole.activations
        assert split.total < whole.total
    else:  # the accumulated gradients stay while the next part's activations are kept
        trainable = split.notes["all_gradients"]
        kept = quarter.notes["kept_activations"]
        assert split.gradients + split.activations == max(
            kept + split.notes["head_gradient"] + trainable, trainable
        )


# zotune profile --micro-batch-size ---------------------------------------------------------


@pytest.mark.parametrize("micro", [1, 2, 3])
def test_the_profiled_loss_in_micro_batches_is_the_one_batch_loss(micro):
    """The profiler's synthetic batch in parts: the same loss and the same accumulated
    gradient as the batch at once (backpropagated part by part, as in training)."""
    from zotune.profiling.build import build_model, last_position_loss, synthetic_batch
    from zotune.profiling.spec import ProfileSpec

    model = build_model(ProfileSpec(model="random:tiny-llama", batch_size=5, seq_len=8))
    batch = synthetic_batch(model.config.vocab_size, 5, 8, seed=0, device="cpu")
    whole = last_position_loss(model, batch, keep=True)()
    whole.backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    value = last_position_loss(model, batch, keep=True, micro_batch_size=micro)()
    assert not value.requires_grad, "each part was backpropagated as it was computed"
    assert float(value) == pytest.approx(float(whole), rel=1e-5)
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        forward = last_position_loss(model, batch, keep=True, micro_batch_size=micro)()
    assert float(forward) == pytest.approx(float(whole), rel=1e-5)


def test_profile_takes_micro_batches_into_its_estimate_and_labels(tmp_path, capsys):
    from zotune.cli import main
    from zotune.profiling.results import load_results

    out = tmp_path / "profile.json"
    argv = ["profile", "--model", "random:tiny-llama", "--optimizers", "fo-sgd",
            "--batch-size", "4", "--seq-len", "16", "--steps", "1", "--warmup", "0",
            "--micro-batch-size", "2", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "B=4 T=16 micro=2" in printed.err and "4×16 /2" in printed.out
    (result,) = load_results(out)
    assert result.spec.micro_batch_size == 2
    assert result.estimate["notes"]["micro_batch_size"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--micro-batch-size", "0"], "--micro-batch-size must be at least 1, got 0"),
        (["--micro-batch-size", "2", "--from-json", "x.json"],
         "--micro-batch-size shapes a measurement; --from-json renders the file as it is"),
    ],
)
def test_profile_refuses_a_bad_micro_batch_size_in_one_line(extra, message, capsys):
    from zotune.cli import main

    assert main(["profile", "--model", "random:tiny-llama", *extra]) == 2
    assert capsys.readouterr().err.strip() == f"zotune: error: {message}"
