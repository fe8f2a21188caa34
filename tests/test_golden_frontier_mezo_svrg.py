"""Golden trajectories: zotune's MeZO-SVRG against the authors' step and the paper's.

``control_at="current"`` is amazon-science/mezo_svrg models/llm_module.py as
finetune_llm.py runs it (``training_step_MeZO_SVRG``, lines 382–434): every q-th step
``central_difference_grad_est`` (lines 448–481) on the full batch, kept as
full_grad = projected_grad · z, then θ ← θ − η₁ full_grad; between, two calls of
``central_difference_grad_est_me`` (lines 483–509), each with its own numpy seed, the
first moving θ by −η₂ ĝ (line 422), the second, on ``self.parameters`` (line 415: a copy of
the list of the same tensors; line 423), by +η₂ ĝ at the moved weights, then
θ ← θ − η₂ full_grad. Each estimate draws its own ``np.random.randint(1000000000, size=1)``
(lines 449 and 485: one draw per anchor step, two per control step) and then z by a global
``torch.manual_seed`` and one ``torch.normal`` per tensor: MeZO's stream, which zotune draws
with ``distribution="mezo"``, estimate n taking the n-th numpy draw. The lr annealing of
lines 393–403 (a loss plateau rule read from a logging forward pass, line 433) is not part of
zotune's step; it acts only after 4 · (batches per epoch) steps, so it is off in the
reference too.

``control_at="anchor"`` is the paper's algorithm (Gautam et al., ICML 2024, Algorithm 1):
θ̄ stored at the anchor step, θ_{t+1} = θ_t − η₂ (ĝ_B(θ_t) − ĝ_B(θ̄) + g).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from golden_helpers import SEED, batches, lm_loss, tiny_opt
from zotune.optim import create_optimizer
from zotune.optim.svrg import estimate_index

STEPS, PERIOD, BATCH, ANCHOR = 12, 3, 4, 16
LR, ANCHOR_LR, EPS = 1e-4, 1e-3, 1e-3


def data() -> tuple[list[torch.Tensor], torch.Tensor]:
    drawn = batches(STEPS + ANCHOR // BATCH, BATCH)
    return drawn[:STEPS], torch.cat(drawn[STEPS:])


@torch.no_grad()
def svrg_reference(model, minibatches, anchor_batch, *, paper: bool) -> list[torch.Tensor]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    numpy_seeds = np.random.RandomState(SEED)

    def perturb(seed, scaling_factor) -> None:
        torch.manual_seed(seed)
        for _, param in named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
            param.data = param.data + scaling_factor * z * EPS

    def estimate(batch) -> dict[str, torch.Tensor]:
        seed = int(numpy_seeds.randint(1_000_000_000, size=1)[0])
        perturb(seed, 1)
        loss1 = lm_loss(model, batch)
        perturb(seed, -2)
        loss2 = lm_loss(model, batch)
        proj_grad = (loss1 - loss2) / (2 * EPS)
        perturb(seed, 1)
        torch.manual_seed(seed)
        return {
            name: proj_grad * torch.normal(mean=0, std=1, size=p.data.size(), dtype=p.data.dtype)
            for name, p in named
        }

    def move(step: dict[str, torch.Tensor], scale: float) -> None:
        for name, param in named:
            param.data = param.data + scale * step[name]

    full_grad, anchor = {}, {}
    for t, batch in enumerate(minibatches):
        if t % PERIOD == 0:
            full_grad = estimate(anchor_batch)
            anchor = {name: p.data.clone() for name, p in named}
            move(full_grad, -ANCHOR_LR)
        elif not paper:
            move(estimate(batch), -LR)  # scale=-1
            move(estimate(batch), LR)  # scale=+1, on the same (moved) tensors
            move(full_grad, -LR)
        else:
            here = estimate(batch)
            now = {name: p.data.clone() for name, p in named}
            for name, param in named:
                param.data = anchor[name].clone()
            there = estimate(batch)
            for name, param in named:
                param.data = now[name]
            move(here, -LR)
            move(there, LR)
            move(full_grad, -LR)
    return [p.detach().clone() for _, p in named]


@pytest.mark.parametrize("control_at", ["current", "anchor"])
def test_mezo_svrg_follows_the_reference_for_12_steps(control_at):
    minibatches, anchor_batch = data()
    reference_model, zotune_model = tiny_opt(), tiny_opt()
    start = [p.detach().clone() for p in zotune_model.parameters()]
    theirs = svrg_reference(reference_model, minibatches, anchor_batch,
                            paper=control_at == "anchor")
    params = [p for p in zotune_model.parameters() if p.requires_grad]
    optimizer = create_optimizer(
        "mezo-svrg", zotune_model, lr=LR, anchor_lr=ANCHOR_LR, eps=EPS, anchor_every=PERIOD,
        anchor_batch_size=ANCHOR, control_at=control_at, distribution="mezo", seed=SEED,
    )
    anchor_steps = 0
    for batch in minibatches:
        wanted = optimizer.examples_wanted(BATCH, ANCHOR)
        anchor_steps += wanted is not None
        ids = anchor_batch if wanted == ANCHOR else batch
        optimizer.step(lambda ids=ids: lm_loss(zotune_model, ids))
    assert anchor_steps == STEPS // PERIOD
    # Per period: 2 passes over 16 examples (8 batches of 4) and 2 × 4 over the batch.
    assert optimizer.forward_passes_per_step == pytest.approx((8 + 8) / 3)
    moved = max((p - s).abs().max().item() for p, s in zip(params, start, strict=True))
    assert moved > 1e-4
    for mine, reference in zip(params, theirs, strict=True):
        torch.testing.assert_close(mine.detach(), reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("period", "indices"), [(3, [0, 1, 3, 5, 6, 8, 10]), (1, [0, 1, 2, 3]), (2, [0, 1, 3, 4, 6])]
)
def test_estimates_are_counted_one_per_anchor_step_two_per_control_step(period, indices):
    assert [estimate_index(t, period) for t in range(len(indices))] == indices


def test_the_anchor_estimate_survives_a_save_and_load():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(40, 30, generator=gen, dtype=torch.float64)
    runs = []
    for reload in (False, True):
        x = torch.ones(30, dtype=torch.float64, requires_grad=True)
        optimizer = create_optimizer("mezo-svrg", [x], lr=1e-3, anchor_lr=1e-2)
        for step in range(5):
            if reload and step == 3:
                saved = optimizer.state_dict()
                optimizer = create_optimizer("mezo-svrg", [x], lr=1e-3, anchor_lr=1e-2)
                optimizer.load_state_dict(saved)
            optimizer.step(lambda x=x: ((a @ x) ** 2).mean())
        runs.append(x.detach())
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
