"""Golden trajectory: zotune's HiZOO against the authors' step, written out from their code.

The reference is ``zo_Hessian_step_update`` of Yanjun-Zhao/HiZOO trainer.py (lines 482–515)
with ``efficient_Hessian_perturb_parameters`` (lines 475–480) and the Hessian initialised to
ones (lines 348–351): per step a numpy seed, ℓ₀ = f(θ), θ ± ε z/√H by a global
``torch.manual_seed`` and one ``torch.normal`` per trainable tensor, then per tensor
H ← (1 − α)H + |ℓ₊ + ℓ₋ − 2ℓ₀| · H z² · α/(2ε²) and θ ← θ − lr ((ℓ₊ − ℓ₋)/(2ε) · z/√H_new).
zotune draws the same z through its public ``distribution="mezo"`` (step t's seed is the
t-th ``np.random.RandomState(seed).randint(1000000000)``, one per step as here). The
reference's fourth forward pass (``loss_out``, after the update) only logs, so it is left
out. Weight decay is 0: the reference decays every tensor, zotune matrices only
(docs/results/fidelity.md).
"""

from __future__ import annotations

import numpy as np
import torch

from golden_helpers import SEED, batches, lm_loss, tiny_opt
from zotune.optim import create_optimizer

STEPS = 12
LR, EPS, ALPHA = 1e-3, 1e-3, 1e-4


@torch.no_grad()
def hizoo_reference(model, data, *, lr, eps, alpha) -> tuple[list, list]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hessian = {n: torch.ones(size=p.data.size(), dtype=p.data.dtype) for n, p in named}
    numpy_seeds = np.random.RandomState(SEED)

    def perturb(seed: int, scaling_factor: float) -> None:
        torch.manual_seed(seed)
        for name, param in named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
            param.data = param.data + scaling_factor / torch.sqrt(hessian[name]) * z * eps

    for ids in data:
        seed = int(numpy_seeds.randint(1_000_000_000))
        loss_original = lm_loss(model, ids)
        perturb(seed, 1)
        loss1 = lm_loss(model, ids)
        perturb(seed, -2)
        loss2 = lm_loss(model, ids)
        perturb(seed, 1)
        torch.manual_seed(seed)
        for name, param in named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
            hessian_temp = hessian[name] * z * z
            estimator = (
                torch.abs(loss1 + loss2 - 2 * loss_original) * hessian_temp * alpha
                / (2 * eps * eps)
            )
            hessian[name] = (1 - alpha) * hessian[name] + estimator
            grad = (loss1 - loss2) / (2 * eps) * z / torch.sqrt(hessian[name])
            param.data = param.data - lr * grad
    return [p.detach().clone() for _, p in named], [hessian[n] for n, _ in named]


def test_hizoo_follows_the_authors_step_for_12_steps():
    data = batches(STEPS)
    reference_model, zotune_model = tiny_opt(), tiny_opt()
    start = [p.detach().clone() for p in zotune_model.parameters()]
    theirs, their_hessian = hizoo_reference(
        reference_model, data, lr=LR, eps=EPS, alpha=ALPHA
    )
    params = [p for p in zotune_model.parameters() if p.requires_grad]
    optimizer = create_optimizer(
        "hizoo", zotune_model, lr=LR, eps=EPS, hessian_smooth=ALPHA, distribution="mezo",
        seed=SEED,
    )
    for ids in data:
        optimizer.step(lambda ids=ids: lm_loss(zotune_model, ids))
    moved = max((p - s).abs().max().item() for p, s in zip(params, start, strict=True))
    assert moved > 1e-4
    spread = max((h - 1).abs().max().item() for h in their_hessian)
    assert spread > 1e-2  # the Hessian estimate moved away from its initial ones
    for mine, reference in zip(params, theirs, strict=True):
        torch.testing.assert_close(mine.detach(), reference, rtol=1e-10, atol=1e-12)
    for param, reference in zip(params, their_hessian, strict=True):
        torch.testing.assert_close(optimizer.state[param]["hessian"], reference,
                                   rtol=1e-10, atol=1e-12)


def test_hizoo_without_smoothing_is_zo_sgd():
    """α = 0 keeps H = 1: the probes and the update are ZO-SGD's, seed for seed."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(40, 30, generator=gen, dtype=torch.float64)
    runs = []
    for name, extra in (("hizoo", {"hessian_smooth": 0.0}), ("zo-sgd", {})):
        x = torch.ones(30, dtype=torch.float64, requires_grad=True)
        optimizer = create_optimizer(name, [x], lr=1e-3, **extra)
        for _ in range(10):
            optimizer.step(lambda x=x: ((a @ x) ** 2).mean())
        runs.append(x.detach())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-12, atol=1e-12)
