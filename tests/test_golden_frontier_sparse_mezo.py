"""Golden trajectory: zotune's Sparse-MeZO against the paper's algorithm, written out.

No public code of the authors was found (Liu et al., 2024, *Sparse MeZO: Less Parameters for
Better Performance in Zeroth-Order LLM Fine-Tuning*, arXiv 2402.15751), so the reference is
the paper's algorithm: MeZO's step (a numpy seed per step, a global ``torch.manual_seed`` and
one ``torch.normal`` per trainable tensor, which zotune's ``distribution="mezo"`` draws) with
every direction masked by m = [|θ_t| ≤ h_i], m taken from the weights at the start of the
step, h_i the (1 − s)-quantile of tensor i's |θ| before training; probes θ ± ε m⊙z, update
θ ← θ − lr · (f(θ + εm⊙z) − f(θ − εm⊙z))/(2ε) · m⊙z.
"""

from __future__ import annotations

import numpy as np
import torch

from golden_helpers import SEED, batches, lm_loss, tiny_opt
from zotune.optim import create_optimizer

STEPS = 12
LR, EPS, SPARSITY = 1e-3, 1e-3, 0.8


def thresholds(named) -> dict[str, float]:
    """h_i: the k-th smallest |θ| of tensor i, k = round((1 − s) · numel)."""
    found = {}
    for name, param in named:
        values = param.detach().abs().flatten().sort().values
        found[name] = float(values[max(1, round((1 - SPARSITY) * values.numel())) - 1])
    return found


@torch.no_grad()
def sparse_mezo_reference(model, data, *, lr, eps) -> list[torch.Tensor]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    h = thresholds(named)
    numpy_seeds = np.random.RandomState(SEED)
    for ids in data:
        seed = int(numpy_seeds.randint(1_000_000_000))
        masks = {n: (p.data.abs() <= h[n]).to(p.dtype) for n, p in named}

        def perturb(scaling_factor: float, seed=seed, masks=masks) -> None:
            torch.manual_seed(seed)
            for name, param in named:
                z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
                param.data = param.data + scaling_factor * masks[name] * z * eps

        perturb(1)
        loss1 = lm_loss(model, ids)
        perturb(-2)
        loss2 = lm_loss(model, ids)
        projected_grad = ((loss1 - loss2) / (2 * eps)).item()
        perturb(1)
        torch.manual_seed(seed)
        for name, param in named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
            param.data = param.data - lr * projected_grad * masks[name] * z
    return [p.detach().clone() for _, p in named]


def test_sparse_mezo_follows_the_papers_algorithm_for_12_steps():
    data = batches(STEPS)
    reference_model, zotune_model = tiny_opt(), tiny_opt()
    start = [p.detach().clone() for p in zotune_model.parameters()]
    theirs = sparse_mezo_reference(reference_model, data, lr=LR, eps=EPS)
    params = [p for p in zotune_model.parameters() if p.requires_grad]
    optimizer = create_optimizer("sparse-mezo", zotune_model, lr=LR, eps=EPS,
                                 sparsity=SPARSITY, distribution="mezo", seed=SEED)
    for ids in data:
        optimizer.step(lambda ids=ids: lm_loss(zotune_model, ids))
    moved = [(p - s).ne(0).float().mean().item() for p, s in zip(params, start, strict=True)]
    # About a fifth of each matrix moved (tied tensors, zero biases and unit norms, move whole).
    matrices = [m for m, p in zip(moved, params, strict=True) if p.ndim == 2]
    assert matrices and all(0.19 < m < 0.3 for m in matrices)
    for mine, reference in zip(params, theirs, strict=True):
        torch.testing.assert_close(mine.detach(), reference, rtol=1e-10, atol=1e-12)


def test_the_mask_follows_the_weights_and_keeps_one_bit_per_value():
    """m is recomputed from θ_t at each step: a weight that grows past h stops moving."""
    x = torch.tensor([0.1, -0.2, 0.3, 2.0, -3.0], dtype=torch.float64, requires_grad=True)
    optimizer = create_optimizer("sparse-mezo", [x], lr=1e-3, sparsity=0.4)
    sampler = optimizer.estimator.sampler
    assert sampler.thresholds == {0: 0.3}
    optimizer.step(lambda: (x**2).sum().detach())
    assert sampler.packed[(0, 0)].numel() == 1  # five values in one byte
    assert x[3].item() == 2.0 and x[4].item() == -3.0
    with torch.no_grad():
        x[0] = 5.0
    before = x.detach().clone()
    optimizer.step(lambda: (x**2).sum().detach())
    assert x[0].item() == before[0].item() and not torch.equal(x[1:3], before[1:3])


def test_the_per_step_threshold_keeps_zero_initialised_tensors_moving():
    """h = 0 from an all-zero start freezes a tensor after one step (the paper's fixed
    thresholds); ``small-magnitude-step`` perturbs half of it at every step."""
    moving = []
    for mode in ("small-magnitude", "small-magnitude-step"):
        x = torch.zeros(8, dtype=torch.float64, requires_grad=True)
        optimizer = create_optimizer("sparse-mezo", [x], lr=1e-2, sparsity=0.5,
                                     sparsity_mode=mode)
        optimizer.step(lambda x=x: ((x - 1) ** 2).sum().detach())
        before = x.detach().clone()
        optimizer.step(lambda x=x: ((x - 1) ** 2).sum().detach())
        moving.append(int(x.detach().ne(before).sum()))
    assert moving == [0, 4]
