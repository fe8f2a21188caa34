"""Step strategies: how a zeroth-order step is made from the estimator and the rule.

A strategy owns the shape of a step; the optimizer owns the estimate's plumbing. Strategies
use the optimizer's public interface only: ``trainable()``, ``step_seed()`` /
``finish_step()``, ``estimate()``, ``apply_estimate()``, ``apply_gradient()`` and ``move()``.

=============== ============================================================ ==============
strategy        one step                                                     forward passes
=============== ============================================================ ==============
plain           ĝ from all trainable tensors, θ ← θ − η rule(ĝ)              2q
block-wise      one estimate per block b, each from mix_seed(seed_t, b)      2q × blocks
hybrid          backprop for the deep layers, RGE for the shallow ones       2q + 1
conservative    the best of f(θ), f(θ − ηĝ), f(θ + ηĝ)                      2q + 3
hessian         HiZOO: probes along z/√H, H and θ updated in one pass        2q + 1
svrg            MeZO-SVRG: anchor estimate every P steps, control variates   amortised
=============== ============================================================ ==============

(hessian and svrg are registered by :mod:`zotune.optim.hessian` and :mod:`zotune.optim.svrg`
through :func:`register_strategy`; svrg's count is (2·A/B + 4(P − 1))/P passes over the
loop's batch of B examples for an anchor batch of A.)

(2q is the two-point RGE's count; one-sided RGE takes q + 1 and Forward-Grad q.) Which
strategies combine is stated once, in :data:`CONFLICTS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from ..enhance.blocks import BLOCK_MODES, partition
from ..enhance.hybrid import split_hybrid
from ..estimators import mix_seed
from ..estimators.base import as_loss, check_finite, evaluate, shift

# Pairs of strategies that cannot make one step together, and why.
CONFLICTS: dict[frozenset[str], str] = {
    frozenset({"block-wise", "hybrid"}): "blocks would split the ZO part only",
    frozenset({"conservative", "block-wise"}): (
        "its three-candidate step compares whole-model moves (sparsity works)"
    ),
    frozenset({"conservative", "hybrid"}): (
        "its three-candidate step compares whole-model moves (sparsity works)"
    ),
}


def _needs_module(params: Any, option: str) -> torch.nn.Module:
    if not isinstance(params, torch.nn.Module):
        raise TypeError(
            f"{option} needs the model's module tree: pass the model itself as params "
            f"(got {type(params).__name__})"
        )
    return params


class StepStrategy:
    """How one step is made. ``param_groups`` may regroup the parameters (blocks, parts).

    A strategy that keeps parameter-sized tensors of its own across steps declares them in
    ``state_init`` (name → initial value): the optimizer creates them beside the rule's state
    (``optimizer.state[param][name]``, fp32 for fp16/bf16 weights), saves and reloads them,
    and the memory model counts them. A strategy whose step needs another batch than the
    loop's says so in :meth:`examples_wanted`.
    """

    name = "plain"
    offload_refusal: str | None = None  # why offloaded (meta) weights cannot be trained
    state_init: Mapping[str, float] = MappingProxyType({})
    draws_chunks = False  # draws z chunks into scratch buffers (the memory model counts them)
    asks_for_batches = False  # examples_wanted may ask the loop for another batch

    def param_groups(self, params: Any) -> Any:
        return params

    def forward_passes(self, optimizer) -> float:
        return optimizer.estimator.forward_passes

    def planned_forward_passes(self, estimator_passes: int) -> float:
        """Forward passes per step (amortised over a period), from the estimator's count."""
        return estimator_passes

    def examples_wanted(self, optimizer, batch_size: int, available: int) -> int | None:
        """How many examples the next step's closure should cover; None: the loop's batch
        of ``batch_size`` (``available`` examples are in the training split)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the strategy keeps besides parameter-sized state (saved with the optimizer)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what :meth:`state_dict` gave."""

    def step(self, optimizer, closure) -> torch.Tensor:
        raise NotImplementedError


class PlainStep(StepStrategy):
    """ĝ from every trainable tensor at once, then the rule's update."""

    def step(self, optimizer, closure) -> torch.Tensor:
        entries = optimizer.trainable()
        estimate = optimizer.estimate(entries, closure, optimizer.step_seed())
        optimizer.finish_step()
        optimizer.apply_estimate(entries, estimate)
        return estimate.loss


class ConservativeStep(StepStrategy):
    """ZO-SGD-Cons: keep the best of θ_t, θ_t − ηĝ and θ_t + ηĝ (three more forwards).

    With a stateful rule (``base="adamw"``) a candidate is only defined as a rule step, so
    the step follows ZO-LLM's ``zo_conserv_step`` (zo-bench/trainer.py:1251-1337): f(θ_t)
    first, then rule steps fed ĝ and −2ĝ, then ĝ or 2ĝ or nothing
    (:class:`zotune.optim.algorithms.ZOSGDConservative`).
    """

    name = "conservative"

    def forward_passes(self, optimizer) -> int:
        return optimizer.estimator.forward_passes + 3

    def planned_forward_passes(self, estimator_passes: int) -> int:
        return estimator_passes + 3

    def step(self, optimizer, closure) -> torch.Tensor:
        if optimizer.rule.state_names:
            return self._by_rule_steps(optimizer, closure)
        entries = optimizer.trainable()
        estimate = optimizer.estimate(entries, closure, optimizer.step_seed())
        optimizer.finish_step()
        optimizer.apply_estimate(entries, estimate)  # θ − ηĝ (also removes the probes' offset)
        loss_down = evaluate(closure)
        self._move_by_lr(optimizer, entries, estimate, 1, leg=1)  # θ
        loss_here = evaluate(closure)
        self._move_by_lr(optimizer, entries, estimate, 1, leg=2)  # θ + ηĝ
        loss_up = evaluate(closure)
        # Data-parallel processes each saw a shard: they pick the candidate on the batch mean.
        candidates = torch.stack([loss_down, loss_here, loss_up])
        down, here, up = optimizer.estimator.sharing.average(candidates)
        best = min((here, 0), (down, -1), (up, +1), key=lambda x: float(x[0]))
        self._move_by_lr(optimizer, entries, estimate, best[1] - 1, leg=3)
        return best[0]

    @staticmethod
    def _by_rule_steps(optimizer, closure) -> torch.Tensor:
        entries = optimizer.trainable()
        sharing = optimizer.estimator.sharing
        loss_here = sharing.average(evaluate(closure).reshape(1))[0]
        estimate = optimizer.estimate(entries, closure, optimizer.step_seed())
        optimizer.finish_step()

        def rule_step(scale: float, first: bool = False) -> None:
            scaled = tuple(scale * c for c in estimate.coeffs)
            moved = dataclasses.replace(estimate, coeffs=scaled)
            optimizer.apply_estimate(entries, moved if first else moved.without_offset())

        rule_step(1.0, first=True)  # also removes the probes' offset
        loss_one = sharing.average(evaluate(closure).reshape(1))[0]
        rule_step(-2.0)
        loss_two = sharing.average(evaluate(closure).reshape(1))[0]
        if loss_one > loss_here:
            if loss_here < loss_two:
                rule_step(1.0)
                return loss_here
            return loss_two
        if loss_one < loss_two:
            rule_step(2.0)
            return loss_one
        return loss_two

    @staticmethod
    def _move_by_lr(optimizer, entries, estimate, multiple: int, leg: int) -> None:
        """θ ← θ + multiple · η ĝ, each param group with its own η, in legs of ±η ĝ
        (fp16/bf16 under stochastic rounding: one rounding with the bits of ``leg``)."""
        if multiple == 0:
            return
        sign = 1.0 if multiple > 0 else -1.0
        for group in optimizer.param_groups:
            members = [(e, g) for e, g in entries if g is group]
            if members:
                optimizer.move(members, estimate, sign * group["lr"], abs(multiple), leg)


class BlockwiseStep(StepStrategy):
    """Block-wise ZO (ZO-Bench §5): one estimate per block, 2q forwards per block.

    The blocks are the optimizer's param groups (from :func:`zotune.enhance.partition`);
    block b draws its directions from ``mix_seed(step seed, b)``. ``mode="coordinate"``
    updates each block before the next is probed; ``"all"`` probes every block at θ_t and
    updates them together. The step's loss is the first block's mean probe loss.
    """

    name = "block-wise"

    def __init__(self, level: str, mode: str = "coordinate") -> None:
        self.level = level
        self.mode = mode

    def param_groups(self, params: Any) -> Any:
        """The model's blocks, or param groups that already carry a ``"block"`` key."""
        if isinstance(params, torch.nn.Module):
            return partition(params, self.level)
        groups = list(params)
        if groups and all(isinstance(g, dict) and "block" in g for g in groups):
            return groups
        raise TypeError(
            f"block_level={self.level!r} needs the model (pass it as params) or param groups "
            "with a 'block' key from zotune.enhance.blocks.partition"
        )

    def forward_passes(self, optimizer) -> int:
        return optimizer.estimator.forward_passes * len(optimizer.param_groups)

    def step(self, optimizer, closure) -> torch.Tensor:
        by_group: dict[int, list] = {}
        for item, group in optimizer.trainable():
            by_group.setdefault(id(group), []).append((item, group))
        base_seed = optimizer.step_seed()
        optimizer.finish_step()
        sampler = optimizer.estimator.sampler
        first_loss, pending = None, []
        for number, members in enumerate(by_group.values()):
            estimate = optimizer.estimate(members, closure, mix_seed(base_seed, number))
            first_loss = estimate.loss if first_loss is None else first_loss
            if self.mode == "coordinate":
                optimizer.apply_estimate(members, estimate)
                continue
            # Later blocks must be probed at θ_t: put this block back before moving on.
            shift([item for item, _ in members], sampler, estimate.restore)
            pending.append((members, dataclasses.replace(estimate, offset=0.0)))
        for members, estimate in pending:
            optimizer.apply_estimate(members, estimate)
        return first_loss


class HybridStep(StepStrategy):
    """Hybrid ZO/FO (ZO-Bench §5; see :mod:`zotune.enhance.hybrid`): shallow layers by ZO,
    deep layers by backprop, both through the optimizer's rule."""

    name = "hybrid"
    offload_refusal = "the hybrid first-order part needs gradients on the weights"

    def __init__(self, layers: int | float, fo_lr: float | None = None) -> None:
        self.layers = layers
        self.fo_lr = fo_lr

    def param_groups(self, params: Any) -> Any:
        return split_hybrid(_needs_module(params, "hybrid_layers"), self.layers, self.fo_lr)

    def forward_passes(self, optimizer) -> int:
        parts = {group["part"] for group in optimizer.param_groups}
        return optimizer.estimator.forward_passes * ("zo" in parts) + ("fo" in parts)

    def step(self, optimizer, closure) -> torch.Tensor:
        entries = optimizer.trainable()
        zeroth = [(e, g) for e, g in entries if g.get("part") == "zo"]
        first = [(e, g) for e, g in entries if g.get("part") != "zo"]
        loss = None
        sharing = optimizer.estimator.sharing
        if first:
            loss = sharing.average(_backprop_first_order_part(zeroth, first, closure))
            sharing.average_gradients([e.param.grad for e, _ in first if e.param.grad is not None])
        if zeroth:
            estimate = optimizer.estimate(zeroth, closure, optimizer.step_seed())
            optimizer.apply_estimate(zeroth, estimate)
            loss = estimate.loss if loss is None else loss
        optimizer.finish_step()
        optimizer.apply_gradient(first)
        _drop_gradients(first)
        return loss


def _backprop_first_order_part(zeroth, first, closure) -> torch.Tensor:
    """g_F = ∇_{θ_F} f into ``.grad``, with the ZO part frozen; returns f(θ)."""
    _drop_gradients(first)
    frozen = [item.param for item, _ in zeroth]
    for param in frozen:
        param.requires_grad_(False)
    try:
        with torch.enable_grad():
            value = closure()
            if value.requires_grad:  # else the closure backpropagated itself (micro-batches)
                value.backward()
    finally:
        for param in frozen:
            param.requires_grad_(True)
    loss = as_loss(value)
    check_finite([loss], lambda: _drop_gradients(first))
    return loss


def _drop_gradients(entries) -> None:
    for item, _ in entries:
        item.param.grad = None


# Steps of their own that methods register (name → factory from the entry's validated
# options): HiZOO's Hessian-scaled step, MeZO-SVRG's anchored step. Each is a whole-model step,
# so block-wise and hybrid steps refuse it.
STRATEGIES: dict[str, Any] = {}


def register_strategy(name: str, factory) -> None:
    """Make ``factory(options) -> StepStrategy`` the step an entry names with ``step=name``."""
    if name in STRATEGIES or name in ("plain", "conservative"):
        raise ValueError(f"step strategy {name!r} is already registered")
    STRATEGIES[name] = factory
    for other in ("block-wise", "hybrid"):
        CONFLICTS[frozenset({name, other})] = "its step moves the whole model at once"


def strategy_for(base: str, options: Mapping[str, Any]) -> StepStrategy:
    """The strategy an entry's ``step`` names, before enhancements."""
    if base == "plain":
        return PlainStep()
    if base == "conservative":
        return ConservativeStep()
    try:
        return STRATEGIES[base](options)
    except KeyError:
        raise ValueError(f"unknown step strategy {base!r}") from None


def make_step(
    base: str,
    block_level: str | None,
    block_mode: str,
    hybrid_layers: int | float | None,
    fo_lr: float | None = None,
    options: Mapping[str, Any] | None = None,
) -> StepStrategy:
    """The strategy for an optimizer whose own step is ``base`` ("plain", "conservative" or a
    registered one) with the enhancement options set; a combination in :data:`CONFLICTS` is
    refused."""
    wanted = [base] if base != "plain" else []
    if block_level is not None:
        wanted.append("block-wise")
    if hybrid_layers is not None:
        wanted.append("hybrid")
    for i, first in enumerate(wanted):
        for second in wanted[i + 1 :]:
            reason = CONFLICTS.get(frozenset({first, second}))
            if reason is not None:
                raise ValueError(f"{first} and {second} steps cannot be combined: {reason}")
    if block_level is not None:
        return BlockwiseStep(block_level, block_mode)
    if block_mode != BLOCK_MODES[0]:
        raise ValueError(
            f"block_mode={block_mode!r} applies to block-wise steps: set block_level too"
        )
    if fo_lr is not None and hybrid_layers is None:
        raise ValueError("fo_lr is the learning rate of a hybrid step's FO part: set hybrid_layers")
    if hybrid_layers is not None:
        return HybridStep(hybrid_layers, fo_lr)
    return strategy_for(base, options or {})
