"""Head tuning (linear probing): only the output head trains, untied from the inputs."""

from __future__ import annotations

import pytest
import torch

from zotune.bench.suite import expand_suite
from zotune.evaluation.scoring import Scorer
from zotune.optim import create_optimizer
from zotune.tuning import untie_output_embeddings

# (shape, tied to the input embeddings in its config, the head's trainable tensors)
SHAPES = [
    ("tiny-llama", False, ["lm_head.weight"]),
    ("tiny-opt", True, ["lm_head.weight"]),
    ("tiny-roberta", True, ["lm_head.bias", "lm_head.decoder.weight"]),
]


@pytest.mark.parametrize("shape, tied, trainable", SHAPES)
def test_only_the_head_is_trainable_and_untied(tiny_model, shape, tied, trainable):
    plain, _ = tiny_model(shape)
    was_tied = plain.get_output_embeddings().weight is plain.get_input_embeddings().weight
    assert was_tied == tied
    model, _ = tiny_model(shape, "head")
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == trainable
    head, inputs = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head is not inputs and not inputs.requires_grad
    assert torch.equal(head, inputs) == tied  # an untied copy starts from the shared values
    assert model.config.tie_word_embeddings is False or not tied
    assert untie_output_embeddings(model) is False  # nothing left to untie


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("optimizer", ["zo-sgd", "fo-sgd"])
def test_a_step_moves_the_head_and_nothing_else(tiny_model, sst2_dir, shape, optimizer):
    from zotune.config import build_config
    from zotune.training.run import load_task_splits

    config = build_config({"task": {"name": "sst2", "data_dir": str(sst2_dir), "num_train": 8,
                                    "num_val": 2, "num_test": 2}})
    examples = load_task_splits(config, log=lambda message: None).train
    model, loaded = tiny_model(shape, "head")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scorer = Scorer(model, loaded.tokenizer)
    batch = scorer.encode_for_loss(examples)
    options = {"seed": 0} if optimizer == "zo-sgd" else {}
    create_optimizer(optimizer, model, lr=1e-1, **options).step(lambda: scorer.loss(batch))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"lm_head.weight"}


def test_head_is_a_bench_grid_scheme(tiny_suite):
    suite = expand_suite(tiny_suite(grid={"tuning": ["full", "head"], "optimizer": ["zo-sgd"]},
                                    sweep={"zo-sgd": {"lr": [1e-3]}}, seeds=[0]))
    assert sorted(run.config["tuning"]["scheme"] for run in suite.runs) == ["full", "head"]
