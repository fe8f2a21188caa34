"""Golden trajectories: zotune's ZO-SGD and ZO-Adam against MeZO's Algorithm 1, written out.

The reference below is MeZO's step as princeton-nlp/MeZO large_models/trainer.py runs it
(``zo_step``, ``zo_perturb_parameters``, ``zo_update``) and ZO-LLM's ZO-Adam
(ZO-Bench/ZO-LLM zo-bench/trainer.py: the same probes, then ``torch.optim.Adam`` fed
ĝ = projected_grad · z): a global ``torch.manual_seed`` per pass, four passes over the
parameters (+εz, −2εz, +εz, update), projected_grad = (f(θ+εz) − f(θ−εz)) / (2ε) and, for SGD,
θ ← θ − lr (projected_grad · z + λθ) with no decay on biases and LayerNorms.

zotune draws its directions from its own seeded streams, never the global RNG, so the test
hands its optimizer a direction sampler that draws MeZO's stream (the hook: the optimizer's
``estimator.sampler``, a :class:`zotune.estimators.DirectionSampler` whose public ``draw`` and
``direction`` give z). Float64 keeps the comparison at rounding level.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zotune.estimators import DirectionSampler
from zotune.models import random_model
from zotune.optim import create_optimizer

STEPS = 20
NUMPY_SEED = 0  # MeZO's trainer draws each step's seed with np.random.randint(1000000000)


class MeZOStream(DirectionSampler):
    """z as MeZO draws it: ``torch.manual_seed(s)``, then one ``torch.normal`` per trainable
    tensor in order; s is the next value of MeZO's numpy seed stream for each new zotune seed."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__("gaussian", chunk_numel=1 << 30)  # one chunk per tensor
        self.params = params
        self.numpy_seeds = np.random.RandomState(NUMPY_SEED)
        self.by_seed: dict[int, list[torch.Tensor]] = {}

    def directions(self, seed: int) -> list[torch.Tensor]:
        if seed not in self.by_seed:
            torch.manual_seed(int(self.numpy_seeds.randint(1_000_000_000)))
            self.by_seed[seed] = [
                torch.normal(mean=0, std=1, size=p.size(), dtype=p.dtype) for p in self.params
            ]
        return self.by_seed[seed]

    def draw(self, like, seed, index, chunk, slot=0):
        return self.directions(seed)[index].view(like.shape).clone()  # callers may scale it

    def direction(self, param, seed, index):
        return self.directions(seed)[index].clone()


def tiny_opt() -> torch.nn.Module:
    model = random_model("tiny-opt").model.double()
    model.eval()  # MeZO's zo_forward: no dropout in the probes
    return model


def batches(count: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(5, 300, (4, 12), generator=gen) for _ in range(count)]


def lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy in float64 (transformers' own loss casts logits to float32,
    which would turn ulp-level parameter differences into 1e-7 ones in the estimate)."""
    logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    )


def no_decay(name: str) -> bool:
    return "bias" in name or "layer_norm" in name or "layernorm" in name


@torch.no_grad()
def mezo_trajectory(model, data, *, lr, eps, weight_decay=0.0, adam=False) -> list[torch.Tensor]:
    """MeZO's Algorithm 1 (or ZO-LLM's ZO-Adam), one step per batch."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    adam_opt = torch.optim.Adam([p for _, p in named], lr=lr) if adam else None
    numpy_seeds = np.random.RandomState(NUMPY_SEED)

    def perturb(seed: int, scaling_factor: float) -> None:
        torch.manual_seed(seed)
        for _, param in named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
            param.data = param.data + scaling_factor * z * eps

    for ids in data:
        seed = int(numpy_seeds.randint(1_000_000_000))
        perturb(seed, 1)
        loss1 = lm_loss(model, ids)
        perturb(seed, -2)
        loss2 = lm_loss(model, ids)
        projected_grad = ((loss1 - loss2) / (2 * eps)).item()
        perturb(seed, 1)
        torch.manual_seed(seed)
        for name, param in named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
            if adam:
                param.grad = projected_grad * z
            elif no_decay(name):
                param.data = param.data - lr * (projected_grad * z)
            else:
                param.data = param.data - lr * (projected_grad * z + weight_decay * param.data)
        if adam:
            with torch.enable_grad():
                adam_opt.step()
            adam_opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for _, p in named]


def zotune_trajectory(model, data, name, **options) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = create_optimizer(name, model, distribution="gaussian", **options)
    optimizer.estimator.sampler = MeZOStream(params)
    for ids in data:
        optimizer.step(lambda ids=ids: lm_loss(model, ids))
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize(
    ("name", "options", "adam"),
    [
        ("zo-sgd", {"lr": 1e-3, "eps": 1e-3}, False),
        ("zo-sgd", {"lr": 1e-3, "eps": 1e-3, "weight_decay": 0.1}, False),
        ("zo-adam", {"lr": 1e-3, "eps": 1e-3}, True),
    ],
    ids=["zo-sgd", "zo-sgd-weight-decay", "zo-adam"],
)
def test_zotune_follows_mezos_algorithm_for_20_steps(name, options, adam):
    data = batches(STEPS)
    reference_model, zotune_model = tiny_opt(), tiny_opt()
    start = [p.detach().clone() for p in zotune_model.parameters()]
    reference = mezo_trajectory(
        reference_model,
        data,
        lr=options["lr"],
        eps=options["eps"],
        weight_decay=options.get("weight_decay", 0.0),
        adam=adam,
    )
    ours = zotune_trajectory(zotune_model, data, name, **options)
    moved = max((a - s).abs().max().item() for a, s in zip(ours, start, strict=True))
    assert moved > 1e-4  # the trajectories went somewhere
    for theirs, mine in zip(reference, ours, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
