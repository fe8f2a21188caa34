"""MeZO-SVRG's step: a large-batch anchor estimate every few steps, control variates between.

MeZO-SVRG (Gautam et al., *Variance-reduced Zeroth-Order Methods for Fine-Tuning Language
Models*, ICML 2024). With ĝ_B(θ; s) the two-point estimate on batch B along z(s), P =
``anchor_every``, η₁ = ``anchor_lr`` and η₂ = ``lr``:

* anchor step (t mod P = 0), on the anchor batch A (``anchor_batch_size`` examples, which the
  loop supplies, :meth:`MeZOSVRGStep.examples_wanted`)::

      g = ĝ_A(θ_t; s_a),   θ̄ = θ_t,   θ_{t+1} = θ_t − η₁ g

* control-variate step, on the loop's batch B, with two fresh directions s₁, s₂:

  - ``control_at="current"`` (the authors' code, models/llm_module.py
    ``training_step_MeZO_SVRG``, lines 382–434): the estimates are taken one after the other
    at the moving weights, θ' = θ_t − η₂ ĝ_B(θ_t; s₁), then
    θ_{t+1} = θ' + η₂ ĝ_B(θ'; s₂) − η₂ g. Its "anchor parameters" (line 415,
    ``self.parameters = parameters.copy()``) are a copy of the list of tensors, so line 423's
    second estimate runs on the current weights: nothing parameter-sized is kept;
  - ``control_at="anchor"`` (the paper's algorithm)::

        θ_{t+1} = θ_t − η₂ (ĝ_B(θ_t; s₁) − ĝ_B(θ̄; s₂) + g)

    with θ̄ kept as one parameter-sized state tensor (``anchor``, fp32 for fp16/bf16
    weights) and swapped in for the second estimate.

Each estimate takes a fresh seed, as the authors' code draws one
``np.random.randint(1000000000)`` per estimate (``central_difference_grad_est`` and
``central_difference_grad_est_me``, first line of each): estimate n of the run (one per anchor
step, two per control step, in the order above) uses the direction sampler's n-th step seed,
so ``distribution="mezo"`` gives the n-th draw of MeZO's numpy stream, the authors' seed
sequence (:func:`estimate_index`).

g is a seed and a scalar (ĝ = c·z(s)), regenerated when needed, so the anchor estimate costs
no memory here, where the authors' code keeps it as a parameter-sized dict (line 414).
Forward passes: two on the anchor batch per anchor step, four on the loop's batch per control
step; counted in passes over the loop's batch, amortised over the period
(:meth:`MeZOSVRGStep.forward_passes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..estimators import DirectionalEstimate
from ..estimators.base import shift
from .steps import StepStrategy, register_strategy

ANCHOR = "anchor"
CONTROL_POINTS = ("current", "anchor")


def estimate_index(step: int, period: int) -> int:
    """How many estimates the steps before ``step`` took: one per anchor step (t mod P = 0),
    two per control step."""
    anchors = -(-step // period)
    return anchors + 2 * (step - anchors)


class MeZOSVRGStep(StepStrategy):
    """One MeZO-SVRG step (module docstring); the anchor estimate is kept as (seed, c)."""

    name = "svrg"
    asks_for_batches = True

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.period = options["anchor_every"]
        self.anchor_batch_size = options["anchor_batch_size"]
        self.control_at = options["control_at"]
        self.state_init = {ANCHOR: 0.0} if self.control_at == "anchor" else {}
        self.draws_chunks = self.control_at == "anchor"  # the swap's scratch chunk
        self.anchor_terms: tuple[tuple[int, float], ...] = ()
        self.batch_size: int | None = None
        self.available: int | None = None

    def is_anchor_step(self, optimizer) -> bool:
        return optimizer.steps_taken % self.period == 0

    def examples_wanted(self, optimizer, batch_size: int, available: int) -> int | None:
        self.batch_size, self.available = batch_size, available
        if self.is_anchor_step(optimizer):
            return min(self.anchor_batch_size, available)
        return None

    def anchor_passes(self) -> float:
        """An anchor step's passes in passes over the loop's batch (2 until it is known)."""
        if self.batch_size is None:
            return 2.0
        return 2.0 * min(self.anchor_batch_size, self.available) / self.batch_size

    def forward_passes(self, optimizer) -> float:
        return self.planned_forward_passes(optimizer.estimator.forward_passes)

    def planned_forward_passes(self, estimator_passes: int) -> float:
        anchor = self.anchor_passes() * estimator_passes / 2
        return (anchor + 2 * estimator_passes * (self.period - 1)) / self.period

    def state_dict(self) -> dict[str, Any]:
        return {"anchor_terms": [list(term) for term in self.anchor_terms]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.anchor_terms = tuple((int(s), float(c)) for s, c in state["anchor_terms"])

    @torch.no_grad()
    def step(self, optimizer, closure) -> torch.Tensor:
        entries = optimizer.trainable()
        if self.is_anchor_step(optimizer):
            return self._anchor_step(optimizer, entries, closure, *self._seeds(optimizer, 1))
        if not self.anchor_terms:
            raise RuntimeError("MeZO-SVRG: a control-variate step before any anchor step")
        seeds = self._seeds(optimizer, 2)
        if self.control_at == "anchor":
            return self._paper_step(optimizer, entries, closure, seeds)
        return self._code_step(optimizer, entries, closure, seeds)

    def _seeds(self, optimizer, count: int) -> list[int]:
        """The seeds of this step's ``count`` estimates (module docstring)."""
        first = estimate_index(optimizer.steps_taken, self.period)
        sampler = optimizer.estimator.sampler
        return [sampler.step_seed(optimizer.seed, first + k) for k in range(count)]

    def _anchor_step(self, optimizer, entries, closure, seed) -> torch.Tensor:
        sampler = optimizer.estimator.sampler
        if self.control_at == "anchor":
            for item, _ in entries:
                state = optimizer.state_for(item.param)
                state[ANCHOR].copy_(item.param)
        estimate = optimizer.estimate(entries, closure, seed)
        optimizer.finish_step()
        self.anchor_terms = estimate.terms
        shift([item for item, _ in entries], sampler, estimate.restore)
        for group in optimizer.param_groups:
            members = [(e, g) for e, g in entries if g is group]
            if members:
                optimizer.move(members, estimate, -group["anchor_lr"])
        return estimate.loss

    def _code_step(self, optimizer, entries, closure, seeds) -> torch.Tensor:
        first = optimizer.estimate(entries, closure, seeds[0])
        optimizer.apply_estimate(entries, first)
        second = optimizer.estimate(entries, closure, seeds[1])
        optimizer.finish_step()
        terms = [(s, -c) for s, c in second.terms] + list(self.anchor_terms)
        optimizer.apply_estimate(entries, _combined(terms, second.offset, second.displaced_seed,
                                                    second.loss))
        return first.loss

    def _paper_step(self, optimizer, entries, closure, seeds) -> torch.Tensor:
        sampler = optimizer.estimator.sampler
        items = [item for item, _ in entries]
        first = optimizer.estimate(entries, closure, seeds[0])
        shift(items, sampler, first.restore)
        self._swap_anchor(optimizer, entries)
        try:
            second = optimizer.estimate(entries, closure, seeds[1])
            shift(items, sampler, second.restore)
        finally:
            self._swap_anchor(optimizer, entries)
        optimizer.finish_step()
        terms = list(first.terms) + [(s, -c) for s, c in second.terms] + list(self.anchor_terms)
        optimizer.apply_estimate(entries, _combined(terms, 0.0, None, first.loss))
        return first.loss

    @staticmethod
    def _swap_anchor(optimizer, entries) -> None:
        """θ ↔ θ̄ in place, chunk by chunk (the anchor is fp32 for fp16/bf16 weights: the
        swap is exact both ways)."""
        sampler = optimizer.estimator.sampler
        for item, _ in entries:
            anchor = optimizer.state[item.param][ANCHOR].view(-1)
            for chunk, view in sampler.views(item.param):
                start = chunk * sampler.chunk_numel
                stored = anchor[start : start + view.numel()].view(view.shape)
                held = sampler.scratch(view, slot=2, dtype=stored.dtype)
                held.copy_(view)
                view.copy_(stored)
                stored.copy_(held)


def _combined(terms, offset, displaced, loss) -> DirectionalEstimate:
    seeds, coeffs = zip(*terms, strict=True)
    return DirectionalEstimate(
        seeds=tuple(seeds), coeffs=tuple(coeffs), offset=offset, loss=loss,
        forward_passes=0, displaced=displaced,
    )


register_strategy(MeZOSVRGStep.name, MeZOSVRGStep)
