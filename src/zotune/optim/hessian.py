"""HiZOO's step: a diagonal Hessian estimate from a third forward pass scales the directions.

HiZOO (Zhao et al., *Second-Order Fine-Tuning without Pain for LLMs: a Hessian Informed
Zeroth-Order Optimizer*, ICLR 2025) keeps a diagonal estimate H of the Hessian per trainable
value, initialised to 1, and probes along Σ^{1/2} z with Σ = H⁻¹. With ℓ₀ = f(θ),
ℓ± = f(θ ± ε z/√H) (z ~ the direction sampler, α = ``hessian_smooth``)::

    H ← (1 − α) H + α |ℓ₊ + ℓ₋ − 2ℓ₀| / (2ε²) · H ⊙ z²
    θ ← θ − η ((ℓ₊ − ℓ₋)/(2ε) · z/√H + λθ)

The update divides by the *new* H while the probes used the old one, as the authors' code
does (HiZOO trainer.py, ``zo_Hessian_step_update``: lines 503–513). Three forward passes per
step (ℓ₀, ℓ₊, ℓ₋) and one parameter-sized state tensor (H, fp32 for fp16/bf16 weights).

The passes over the parameters are chunked like every zotune pass: z is regenerated per
chunk from the step's seed (the first query seed of an RGE step, so that with α = 0 HiZOO
is ZO-SGD step for step; with ``distribution="mezo"`` that is the step seed itself, drawn
from MeZO's numpy stream, as the authors' trainer, built on MeZO's, draws it) and divided
by the chunk of √H in a scratch buffer. fp16/bf16 tensors move by legs of ±ε z/√H, each
rounded once (−2 as two legs), as the RGE probes do
(:func:`zotune.estimators.base.rounds_coarsely`), and take the update stochastically rounded
unless that is switched off. The restore (+ε z/√H with the step's H) is the first leg of
the update's pass. bf16 CPU tensors take each pass as one sweep of a fused kernel
(:func:`zotune.kernels.passes.fused_hessian_pass_`: the same operations, in registers),
which made the embedded model's full bf16 step alone on one core 1.4–1.7× faster in two
profiles (docs/results/cpu-frontier/profile.md, before and after).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from ..estimators.base import check_finite, evaluate, rounds_coarsely
from ..kernels.passes import HessianUpdate, fused_hessian_pass_, split_hessian
from .steps import StepStrategy, register_strategy
from .stochastic_rounding import rounding_seed, rounding_table, rounds_stochastically

HESSIAN = "hessian"


class HessianStep(StepStrategy):
    """One HiZOO step (module docstring): ℓ₀, ℓ₊, ℓ₋, then H and θ in one pass."""

    name = "hessian"
    state_init = MappingProxyType({HESSIAN: 1.0})
    draws_chunks = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        del options  # α is a hyperparameter: read from the param groups at every step

    def forward_passes(self, optimizer) -> int:
        return optimizer.estimator.forward_passes + 1

    def planned_forward_passes(self, estimator_passes: int) -> int:
        return estimator_passes + 1

    @torch.no_grad()
    def step(self, optimizer, closure) -> torch.Tensor:
        entries = optimizer.trainable()
        states = [optimizer.state_for(item.param) for item, _ in entries]
        sampler = optimizer.estimator.sampler
        # The first query seed of an RGE step (so α = 0 is ZO-SGD), declared to the sampler
        # like an estimator's: distribution="mezo" draws the step's z from MeZO's stream.
        (seed,) = sampler.query_seeds(optimizer.step_seed(), 1)
        sampler.cover([item for item, _ in entries], [seed])
        eps = optimizer.estimator.eps
        moved = 0.0  # θ now sits at θ_t + moved · ε z/√H

        def restore() -> None:
            self._move(entries, states, sampler, seed, eps, [-moved])

        try:
            base = evaluate(closure)
            self._move(entries, states, sampler, seed, eps, [1.0])
            moved = 1.0
            plus = evaluate(closure)
            self._move(entries, states, sampler, seed, eps, [-1.0, -1.0])
            moved = -1.0
            minus = evaluate(closure)
            losses = optimizer.estimator.sharing.average(torch.stack([base, plus, minus]))
        except BaseException:
            if moved:
                restore()
            raise
        check_finite(losses, restore)
        base, plus, minus = (float(v) for v in losses)
        optimizer.finish_step()
        slope = (plus - minus) / (2 * eps)
        curvature = abs(plus + minus - 2 * base) / (2 * eps * eps)
        # The restore is the first leg of the update's pass (one sweep where it was two).
        self._update(optimizer, entries, states, seed, slope, curvature, eps * -moved)
        return losses[0]

    @staticmethod
    def _move(entries, states, sampler, seed, eps, legs) -> None:
        """θ ← θ + Σ legs · ε z/√H; fp32/fp64 tensors take the legs' sum as one move, bf16
        CPU ones one sweep of the fused kernel (:mod:`zotune.kernels`)."""
        items = [item for item, _ in entries]
        fused, rest = split_hessian(items, sampler, [s[HESSIAN].view(-1) for s in states])
        fused_hessian_pass_([items[k] for k in fused], [states[k][HESSIAN] for k in fused],
                            sampler, seed, [leg * eps for leg in legs])
        for k in rest:
            (item, _), state = entries[k], states[k]
            param = item.param
            steps = legs if rounds_coarsely(param.dtype) else [sum(legs)]
            hessian = state[HESSIAN].view(-1)
            for chunk, view in sampler.views(param):
                start = chunk * sampler.chunk_numel
                scaled = _scaled_direction(sampler, view, hessian, start, seed, item.index, chunk)
                for leg in steps:
                    view.add_(scaled, alpha=leg * eps)

    @staticmethod
    def _update(optimizer, entries, states, seed, slope, curvature, restore) -> None:
        """H and θ from the step's losses, after the leg ``restore`` · z/√H (old H) brings θ
        back to θ_t: in one sweep of the fused kernel for bf16 CPU tensors under stochastic
        rounding and a linear rule (:mod:`zotune.kernels`), else as a pass of its own first."""
        sampler = optimizer.estimator.sampler
        rounding = rounding_seed(seed) if optimizer.stochastic_rounding else None
        items = [item for item, _ in entries]
        hessians = [state[HESSIAN].view(-1) for state in states]
        fused, rest = [], list(range(len(entries)))
        if rounding is not None and optimizer.rule.is_linear:
            fused, rest = split_hessian(items, sampler, hessians)
        buckets: dict[tuple[float, float, float], list[int]] = {}
        for k in fused:
            item, group = entries[k]
            decay = optimizer.rule.linear_decay(group, item.param.ndim)
            buckets.setdefault((group["lr"], decay, group["hessian_smooth"]), []).append(k)
        bits = (rounding_table(torch.device("cpu")), rounding)
        for (lr, decay, alpha), chosen in buckets.items():
            update = HessianUpdate(alpha, curvature, slope, lr, decay, bits)
            fused_hessian_pass_([items[k] for k in chosen], [hessians[k] for k in chosen],
                                sampler, seed, [restore], update)
        entries, states = [entries[k] for k in rest], [states[k] for k in rest]
        HessianStep._move(entries, states, sampler, seed, restore, [1.0])
        for (item, group), state in zip(entries, states, strict=True):
            param = item.param
            alpha = group["hessian_smooth"]
            hessian = state[HESSIAN].view(-1)
            rounded = rounding is not None and rounds_stochastically(param.dtype)
            for chunk, view in sampler.views(param):
                start = chunk * sampler.chunk_numel
                h = hessian[start : start + view.numel()].view(view.shape)
                z = sampler.draw(view, seed, item.index, chunk)
                factor = sampler.scratch(view, slot=1, dtype=h.dtype)
                factor.copy_(z).square_().mul_(alpha * curvature).add_(1 - alpha)
                h.mul_(factor)
                g = torch.sqrt(h, out=factor).reciprocal_().mul_(z).mul_(slope)
                ctx_args = (param.ndim, state["step"], group)
                optimizer.apply_rule(
                    view, g, state, ctx_args, start,
                    (rounding, item.index, chunk) if rounded else None,
                )


def _scaled_direction(sampler, view, hessian, start, seed, index, chunk) -> torch.Tensor:
    """z/√H for one chunk, in the weights' dtype (scratch slots 1 and 2)."""
    h = hessian[start : start + view.numel()].view(view.shape)
    z = sampler.draw(view, seed, index, chunk)
    scaled = sampler.scratch(view, slot=1, dtype=h.dtype)
    torch.sqrt(h, out=scaled).reciprocal_().mul_(z)
    if scaled.dtype == view.dtype:
        return scaled
    # Legs of fp16/bf16 weights move by an amount in their own dtype: an add_ of a wider
    # tensor does not round like one of the same dtype, and the legs must land back on θ.
    return sampler.scratch(view, slot=2).copy_(scaled)


register_strategy(HessianStep.name, HessianStep)
