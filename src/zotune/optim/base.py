"""The two optimizer kinds every zotune method is assembled from.

* :class:`ZerothOrderOptimizer` wires a directional estimator (RGE or forward-mode) to an
  update rule through a step strategy (plain, block-wise, hybrid, conservative; see
  :mod:`zotune.optim.steps`);
* :class:`FirstOrderOptimizer` feeds backprop gradients through the same rules.

Both are ``torch.optim.Optimizer`` subclasses: LR schedulers, param groups and
``state_dict`` work as in torch; the state dict also carries the seed stream, so a resumed
run draws the same directions. Strategies speak to an optimizer through four public
methods: :meth:`RuleOptimizer.trainable`, :meth:`RuleOptimizer.step_seed` /
:meth:`RuleOptimizer.finish_step`, :meth:`ZerothOrderOptimizer.apply_estimate` and
:meth:`RuleOptimizer.apply_gradient`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..enhance.sparse import (
    THRESHOLD_MODES,
    MaskedDirectionSampler,
    ThresholdMaskedSampler,
    magnitude_thresholds,
    recomputed_each_period,
    tensor_sparsities,
)
from ..estimators import (
    BackpropEstimator,
    DirectionalEstimate,
    DirectionSampler,
    ForwardGradientEstimator,
    IndexedParam,
    RandomGradientEstimator,
    mix_seed,
)
from ..estimators.base import check_finite, rounds_coarsely, shift
from ..models.offload import OffloadError, substitute_offloaded
from .options import ZOOptions
from .rules import Rule, TensorContext, state_dtype
from .steps import PlainStep, StepStrategy
from .stochastic_rounding import (
    adam_rounded_,
    add_rounded_,
    apply_update_,
    rounding_seed,
    rounds_stochastically,
)

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]] | torch.nn.Module
Entries = list[tuple[IndexedParam, dict[str, Any]]]
# Builds an optimizer's own direction sampler from the estimator's, the trainable tensors and
# the seed (LOZO's and SubZero's low-rank directions: zotune.estimators.low_rank).
DirectionsFactory = Callable[[DirectionSampler, list[IndexedParam], int], DirectionSampler]

SEED_STREAM_KEY = "zotune_seed_stream"
DIRECTIONS_KEY = "zotune_directions"
IDENTITY_KEY = "zotune_optimizer"  # what made a state dict (RuleOptimizer.identity)
STRATEGY_KEY = "zotune_step_strategy"


def _as_params(params: Params) -> Any:
    if isinstance(params, torch.nn.Module):
        return [p for p in params.parameters() if p.requires_grad]
    return params


def _resolve_offloaded(
    param_groups: list[dict], module: torch.nn.Module | None, refusal: str | None, owner: str
) -> None:
    """Point the groups at the CPU storage of weights accelerate offloaded
    (:mod:`zotune.models.offload`)."""
    if not any(p.device.type == "meta" for g in param_groups for p in g["params"]):
        return
    if refusal is not None:
        raise OffloadError(f"{owner} cannot train offloaded (meta-device) weights: {refusal}")
    if module is None:
        raise OffloadError(
            f"{owner} got parameters on the meta device: pass the model itself as params, so "
            "that the values accelerate offloaded to CPU memory can be found"
        )
    substitute_offloaded(param_groups, module)


class RuleOptimizer(torch.optim.Optimizer):
    """Shared plumbing: a rule, a seed stream, indexed trainable tensors, rule application.

    The rule's state tensors have dtype :func:`zotune.optim.rules.state_dtype`: float32 for
    fp16/bf16 parameters (the rule then gets g in fp32 and its fp32 update is rounded once into
    the half weight), the parameter's dtype otherwise; ``load_state_dict`` keeps them so (torch
    would cast them to the parameter's dtype). Adam on bf16 weights thus holds 2 × 4 bytes of state
    per trainable value. Stateless rules (SGD, sign) compute in the parameter's dtype.

    The constructors take validated values (:meth:`zotune.optim.registry.OptimizerEntry.
    resolve`, which ``create_optimizer`` and the public classes call): they check nothing
    again.
    """

    rule: Rule

    def __init__(
        self,
        params: Params,
        defaults: dict[str, Any],
        rule: Rule,
        seed: int,
        *,
        module: torch.nn.Module | None = None,
        offload_refusal: str | None = None,
    ) -> None:
        super().__init__(_as_params(params), defaults)
        _resolve_offloaded(self.param_groups, module, offload_refusal, type(self).__name__)
        self.rule = rule
        self.seed = seed
        self.steps_taken = 0
        # Parameter-sized tensors a step strategy keeps besides the rule's (name → initial
        # value), e.g. HiZOO's Hessian estimate; created, saved and reloaded like the rule's.
        self.strategy_state: dict[str, float] = {}

    def trainable(self) -> Entries:
        """Trainable tensors with a stable global index (frozen ones keep their number)."""
        entries, index = [], 0
        for group in self.param_groups:
            for param in group["params"]:
                if param.requires_grad:
                    entries.append((IndexedParam(index, param), group))
                index += 1
        return entries

    def step_seed(self) -> int:
        """The seed of the step being made (directions of step t come from it)."""
        return mix_seed(self.seed, self.steps_taken)

    def finish_step(self) -> None:
        """Advance the seed stream: the next step draws new directions."""
        self.steps_taken += 1

    @torch.no_grad()
    def apply_gradient(self, entries: Entries) -> None:
        """θ ← θ − lr · rule(θ.grad) for every entry that has a gradient."""
        for item, group in entries:
            grad = item.param.grad
            if grad is not None:
                state = self._state_for(item.param)
                context = (item.param.ndim, state["step"], group)
                self._apply_rule(item.param, grad, state, context, 0)

    def _state_for(self, param: torch.Tensor) -> dict[str, Any]:
        state = self.state[param]
        if "step" not in state:
            state["step"] = 0
            for name in self.rule.state_names:
                state[name] = torch.zeros_like(
                    param, dtype=state_dtype(param.dtype), memory_format=torch.preserve_format
                )
        for name, initial in self.strategy_state.items():
            if name not in state:
                state[name] = torch.full_like(
                    param, initial, dtype=state_dtype(param.dtype),
                    memory_format=torch.contiguous_format,
                )
        state["step"] += 1
        return state

    def state_for(self, param: torch.Tensor) -> dict[str, Any]:
        """The state of ``param`` for the update being made (its step count advanced)."""
        return self._state_for(param)

    def apply_rule(
        self, view: torch.Tensor, g: torch.Tensor, state: dict, ctx_args: tuple, start: int,
        rounding: tuple[int, int, int] | None = None,
    ) -> None:
        """θ_slice ← θ_slice − lr · rule(g_slice) for a step strategy that builds g itself
        (``ctx_args`` = (ndim, step, group); see :meth:`_apply_rule`)."""
        self._apply_rule(view, g, state, ctx_args, start, rounding)

    def rule_dtype(self, param_dtype: torch.dtype) -> torch.dtype:
        """The dtype the rule computes in for a parameter of ``param_dtype``: its state's
        (fp32 for fp16/bf16) if it has state, the parameter's if it has none."""
        return state_dtype(param_dtype) if self.rule.state_names else param_dtype

    def _apply_rule(
        self,
        view: torch.Tensor,
        g: torch.Tensor,
        state: dict,
        ctx_args: tuple,
        start: int,
        rounding: tuple[int, int, int] | None = None,
    ) -> None:
        """θ_slice ← θ_slice − lr · rule(g_slice), with the rule's state sliced alike;
        stochastically rounded with the bits of ``rounding`` = (seed, index, chunk) if given.

        ``g`` is widened to the rule's dtype (:meth:`rule_dtype`) first; a wider update is
        added to the narrower slice with one rounding."""
        ndim, step, group = ctx_args
        g = g.to(self.rule_dtype(view.dtype))
        sliced = {}
        for name in self.rule.state_names:
            full = state[name]
            sliced[name] = (
                full if full.shape == view.shape else full.view(-1)[start : start + view.numel()]
            )
        if rounding is not None and self.rule.is_adam and adam_rounded_(
            view, g, sliced["exp_avg"], sliced["exp_avg_sq"], lr=group["lr"],
            betas=group["betas"], eps=group["adam_eps"], step=step,
            decay=self.rule.decoupled_decay(group, ndim), seed=rounding[0],
            index=rounding[1], chunk=rounding[2],
        ):
            return
        u = self.rule(g, sliced, TensorContext(view, ndim, step, group))
        if rounding is None:
            view.add_(u, alpha=-group["lr"])
        else:
            add_rounded_(view, u, -group["lr"], *rounding)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state[SEED_STREAM_KEY] = {"seed": self.seed, "steps_taken": self.steps_taken}
        state[IDENTITY_KEY] = self.identity()
        return state

    def identity(self) -> dict[str, Any]:
        """What a state dict must have been made by to load into this optimizer: its class,
        rule, estimator and ε (plain values, so a checkpoint holding them loads with
        ``weights_only=True``)."""
        estimator = getattr(self, "estimator", None)
        return {
            "class": type(self).__name__,
            "rule": repr(self.rule),
            "estimator": type(estimator).__name__,
            "eps": getattr(estimator, "eps", None),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, refusing a state another optimizer (or this one with
        another ε) made, naming what differs: torch would take its param groups as they are
        and fail later (``KeyError: 'betas'``) or silently train on with them."""
        state_dict = dict(state_dict)
        stream = state_dict.pop(SEED_STREAM_KEY, None)
        self._check_identity(state_dict.pop(IDENTITY_KEY, None), state_dict)
        super().load_state_dict(state_dict)
        self._reload_wide_state(state_dict)
        if stream is not None:
            self.seed = int(stream["seed"])
            self.steps_taken = int(stream["steps_taken"])

    def _check_identity(self, saved: Any, state_dict: dict[str, Any]) -> None:
        ours = self.identity()
        if isinstance(saved, dict):
            for key, value in ours.items():
                if saved.get(key) != value:
                    raise ValueError(
                        f"{type(self).__name__}.load_state_dict: the state is of an optimizer "
                        f"whose {key} is {saved.get(key)!r}, not {value!r}: it belongs to "
                        "another optimizer or other settings"
                    )
            return
        # A state from before the identity was saved (zotune 0.2): its groups must hold
        # every hyperparameter ours do, and its tensors the rule's state.
        for group in state_dict.get("param_groups", []):
            lacking = [key for key in self.defaults if key not in group]
            if lacking:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: the state lacks "
                    f"{', '.join(map(repr, lacking))}: it belongs to another optimizer"
                )
        for saved_state in state_dict.get("state", {}).values():
            foreign = [k for k in saved_state if k != "step" and k not in self.rule.state_names]
            if foreign:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: the state holds "
                    f"{foreign[0]!r}, which {self.rule!r} does not keep: it belongs to "
                    "another optimizer"
                )

    def _reload_wide_state(self, state_dict: dict[str, Any]) -> None:
        """Take the rule state of fp16/bf16 parameters from ``state_dict`` again, as copies
        in :func:`zotune.optim.rules.state_dtype`: torch's loader has cast it to the parameter's
        dtype, which would lose bits (or overflow) and stop a resumed run from matching."""
        saved_ids = (i for group in state_dict["param_groups"] for i in group["params"])
        params = (p for group in self.param_groups for p in group["params"])
        for saved_id, param in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(saved_id, {})
            wide = state_dtype(param.dtype)
            for name in (*self.rule.state_names, *self.strategy_state):
                if wide != param.dtype and name in saved:
                    self.state[param][name] = saved[name].to(
                        device=param.device, dtype=wide, copy=True
                    )


def check_estimator_agrees(
    options: ZOOptions, estimator: RandomGradientEstimator | ForwardGradientEstimator
) -> None:
    """Refuse an estimator whose ε, q or probe differ from ``options``' (Forward-Grad's has no
    ε or probe: its estimate has no finite difference)."""
    for name in ("eps", "q", "probe"):
        if not hasattr(estimator, name):
            continue
        held, stated = getattr(estimator, name), getattr(options, name)
        if held != stated:
            raise ValueError(
                f"the estimator's {name} is {held!r} but options.{name} is {stated!r}: build "
                "the estimator from the options (create_optimizer does)")


class ZerothOrderOptimizer(RuleOptimizer):
    """Any directional estimator (RGE, Forward-Grad) wired to any rule by a step strategy::

        ZerothOrderOptimizer(params, lr, options=ZOOptions(eps=1e-3),
                             estimator=RandomGradientEstimator(eps=1e-3),
                             rule=rules.momentum(), momentum=0.9, dampening=0.0,
                             nesterov=False)

    which is what :meth:`zotune.optim.registry.OptimizerEntry.assemble` hands it from
    validated options (``create_optimizer("zo-sgd-mmt", params, lr=...)`` builds it so). An
    estimator that disagrees with ``options`` on ε, q or the probe is refused: its values
    would run while the options recorded others.
    Hyperparameters (``lr`` and the rule's, e.g. ``momentum``) go into the param groups, where
    the rule reads them at every step. ``options`` holds the shared ZO options
    (:class:`zotune.optim.options.ZOOptions`): the seed, the sparse mask, stochastic
    rounding; the estimator and the step strategy were built from the rest. ``step``
    decides how a step is made (:class:`zotune.optim.steps.PlainStep` by default);
    ``options.sparsity`` > 0 masks the directions
    (:class:`zotune.enhance.sparse.MaskedDirectionSampler`), so every pass (probe, restore,
    update, the conservative candidates) sees the same m ⊙ z. ``directions`` builds
    the method's own sampler from the estimator's (LOZO's and SubZero's low-rank directions,
    :mod:`zotune.estimators.low_rank`): it is told the step count before each step, may
    replace the probed terms by the ones the update applies, and its state is part of this
    optimizer's ``state_dict``.

    The update pass regenerates each z chunk once, removes the displacement the probes left
    and applies the update in the same pass; for linear rules (SGD ± weight decay) that is a
    single axpy per chunk, so a q = 1 ZO-SGD step makes three passes over the parameters
    (+εz, −2εz, restore-and-update) where MeZO makes four.

    Half precision: the update of an fp16/bf16 tensor is computed chunk-wise in fp32 and
    stochastically rounded (unbiased, bits seeded by the step), so updates far below one ulp
    are kept in expectation; ``stochastic_rounding=False`` rounds to nearest instead. The
    probes keep their exact-restore legs. See :mod:`zotune.optim.stochastic_rounding`. A rule with
    state (momentum, Adam) keeps it in fp32 and gets ĝ = Σ c_k z_k summed in fp32 from the
    half-precision z_k the probes used (see :class:`RuleOptimizer`).
    """

    def __init__(
        self,
        params: Params,
        lr: float,
        *,
        estimator: RandomGradientEstimator | ForwardGradientEstimator,
        rule: Rule,
        options: ZOOptions | None = None,
        step: StepStrategy | None = None,
        directions: DirectionsFactory | None = None,
        **hyperparameters: Any,
    ) -> None:
        if options is None:
            options = ZOOptions()
        else:
            check_estimator_agrees(options, estimator)
        seed, sparsity, mask_every = options.seed, options.sparsity, options.mask_every
        sparsity_mode = options.sparsity_mode
        step = step or PlainStep()
        module = params if isinstance(params, torch.nn.Module) else None
        refusal = step.offload_refusal
        if isinstance(estimator, ForwardGradientEstimator):
            refusal = "forward-mode tangents do not survive accelerate's copy to the device"
        super().__init__(
            step.param_groups(params),
            {"lr": lr, **hyperparameters},
            rule,
            seed,
            module=module,
            offload_refusal=refusal,
        )
        self.estimator = estimator
        self.step_strategy = step
        self.strategy_state = dict(step.state_init)
        self.stochastic_rounding = options.stochastic_rounding
        if directions is not None:
            if sparsity:
                raise ValueError("a sparse mask needs the plain direction sampler: set sparsity 0")
            trainable = [e for e, _ in self.trainable()]
            estimator.sampler = directions(estimator.sampler, trainable, seed)
        if sparsity and sparsity_mode in THRESHOLD_MODES:
            trainable = [e for e, _ in self.trainable()]
            thresholds = magnitude_thresholds(trainable, sparsity, sparsity_mode)
            estimator.sampler = ThresholdMaskedSampler(
                estimator.sampler, trainable, thresholds, mask_every,
                sparsity if recomputed_each_period(sparsity_mode) else None,
            )
        elif sparsity:
            trainable = [e for e, _ in self.trainable()]
            sparsities = tensor_sparsities(trainable, sparsity, sparsity_mode)
            estimator.sampler = MaskedDirectionSampler(
                estimator.sampler, sparsities, seed, mask_every
            )

    @property
    def forward_passes_per_step(self) -> float:
        """Forward passes of one step, as the step strategy makes it (amortised over the
        strategy's period, in passes over the loop's batch, where it has one)."""
        return self.step_strategy.forward_passes(self)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        directions = self.estimator.sampler.state_dict()
        if directions:
            state[DIRECTIONS_KEY] = directions
        strategy = self.step_strategy.state_dict()
        if strategy:
            state[STRATEGY_KEY] = strategy
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        directions = state_dict.pop(DIRECTIONS_KEY, None)
        strategy = state_dict.pop(STRATEGY_KEY, None)
        super().load_state_dict(state_dict)
        if directions is not None:
            self.estimator.sampler.load_state_dict(directions)
        if strategy is not None:
            self.step_strategy.load_state_dict(strategy)

    def examples_wanted(self, batch_size: int, available: int) -> int | None:
        """How many training examples the next step's closure should cover, where the step
        needs another batch than the loop's ``batch_size`` (MeZO-SVRG's anchor steps)."""
        return self.step_strategy.examples_wanted(self, batch_size, available)

    def step_seed(self) -> int:
        """The seed of the step being made, as the direction sampler derives it (a hash of
        the run's seed and the step; MeZO's numpy draw for ``distribution="mezo"``)."""
        return self.estimator.sampler.step_seed(self.seed, self.steps_taken)

    @torch.no_grad()
    def step(self, closure=None) -> torch.Tensor:
        if closure is None or not callable(closure):
            raise TypeError(
                f"{type(self).__name__}.step() needs a closure that returns the loss "
                f"(got {closure!r}); zeroth-order optimizers evaluate it at perturbed parameters"
            )
        self.estimator.sampler.set_step(self.steps_taken)
        return self.step_strategy.step(self, closure)

    def estimate(self, entries: Entries, closure, seed: int) -> DirectionalEstimate:
        """The estimator's estimate for ``entries`` (they are left displaced by its offset)."""
        return self.estimator.estimate([e for e, _ in entries], closure, seed)

    @torch.no_grad()
    def apply_estimate(self, entries: Entries, estimate: DirectionalEstimate) -> None:
        """Remove the probes' displacement and apply θ ← θ − lr · rule(ĝ), chunk by chunk
        (the rule's ``coefficients`` map, if any, first turns ĝ = Σ c_k z_k into Σ c'_k z_k)."""
        if self.rule.coefficients is not None:
            estimate = dataclasses.replace(
                estimate, coeffs=self.rule.coefficients(estimate.coeffs)
            )
        if self.rule.is_linear:
            self._update_linear(entries, estimate)
            return
        sampler = self.estimator.sampler
        terms = tuple(sampler.update_terms(estimate.terms, [e for e, _ in entries]))
        fused = terms == estimate.terms  # the restore rides on the update's own draws
        last = len(terms) - 1
        seed = self.rounding_seed(estimate)
        for item, group in entries:
            param = item.param
            rounded = seed is not None and rounds_stochastically(param.dtype)
            compute = self.rule_dtype(param.dtype)
            widened = compute != param.dtype
            for chunk, view in sampler.views(param):
                start = chunk * sampler.chunk_numel
                if start == 0:
                    state = self._state_for(param)
                    ctx_args = (param.ndim, state["step"], group)
                if not fused and estimate.offset:
                    z = sampler.draw(view, estimate.displaced_seed, item.index, chunk)
                    view.add_(z, alpha=-estimate.offset)
                g = sampler.scratch(view, slot=1, dtype=compute) if last or widened else None
                for k, (seed, coeff) in enumerate(terms):
                    z = sampler.draw(view, seed, item.index, chunk)
                    if fused and seed == estimate.displaced_seed and estimate.offset:
                        # Its own rounding, before the update: lands back on θ in fp16/bf16.
                        view.add_(z, alpha=-estimate.offset)
                    if g is None:
                        g = z.mul_(coeff)
                    elif k == 0 and widened:
                        g.copy_(z).mul_(coeff)  # mul(out=g) would multiply in z's dtype
                    elif k == 0:
                        torch.mul(z, coeff, out=g)
                    else:
                        g.add_(z, alpha=coeff)
                rounding = (seed, item.index, chunk) if rounded else None
                self._apply_rule(view, g, state, ctx_args, start, rounding)

    def _update_linear(self, entries: Entries, estimate: DirectionalEstimate) -> None:
        """θ_new = κθ − lr Σ_k c_k z_k with κ = 1 − lr·λ (λ from the rule) and
        θ = θ_probe − offset · z_last.

        One pass per query seed. In fp32 the restore rides on the last seed's axpy
        (θ_new = κ θ_probe − κ·offset·z_last − lr Σ c_k z_k); in fp16/bf16 it is a leg of its
        own, so the update starts from the restored θ (see ``estimators.base.rounds_coarsely``),
        and κθ − lr Σ c_k z_k is rounded once, stochastically unless that is switched off.
        """
        sampler = self.estimator.sampler
        restore = (estimate.displaced_seed, -estimate.offset)
        buckets: dict[tuple[float, float], list[IndexedParam]] = {}
        for item, group in entries:
            lr = group["lr"]
            decay = self.rule.linear_decay(group, item.param.ndim)
            buckets.setdefault((lr, 1 - lr * decay), []).append(item)
        for (lr, keep), items in buckets.items():
            terms = sampler.update_terms(estimate.terms, items)
            update = [(seed, -lr * coeff) for seed, coeff in terms]
            precise = [i for i in items if not rounds_coarsely(i.param.dtype)]
            coarse = [i for i in items if rounds_coarsely(i.param.dtype)]
            if precise:
                if keep != 1:
                    torch._foreach_mul_([i.param for i in precise], keep)
                shift(precise, sampler, [(restore[0], keep * restore[1]), *update])
            if coarse:  # the restore is a leg of its own, in the update's pass
                apply_update_(coarse, sampler, update, self.rounding_seed(estimate), keep,
                              legs=[restore])

    @torch.no_grad()
    def move(
        self, entries: Entries, estimate: DirectionalEstimate, scale: float, times=1, leg=0
    ) -> None:
        """θ ← θ + times · scale · ĝ, as ``times`` legs (one pass per seed in fp32); fp16/bf16
        tensors under stochastic rounding take it as one rounding with the bits of ``leg``."""
        seed = self.rounding_seed(estimate, leg)
        items = [e for e, _ in entries]
        rounded = [seed is not None and rounds_stochastically(i.param.dtype) for i in items]
        coarse = [i for i, r in zip(items, rounded, strict=True) if r]
        exact = [i for i, r in zip(items, rounded, strict=True) if not r]
        moves = [(s, scale * coeff) for s, coeff in estimate.terms]
        shift(exact, self.estimator.sampler, moves * times)
        if coarse:
            apply_update_(coarse, self.estimator.sampler, [(s, times * a) for s, a in moves], seed)

    def rounding_seed(self, estimate: DirectionalEstimate, leg: int = 0) -> int | None:
        """The seed of the stochastic rounding of an update of ``estimate`` (None: off)."""
        if not self.stochastic_rounding:
            return None
        return rounding_seed(estimate.seeds[0], leg)


class FirstOrderOptimizer(RuleOptimizer):
    """Backprop gradients through a zotune rule: the first-order reference."""

    forward_passes_per_step = 1

    def __init__(
        self,
        params: Params,
        lr: float,
        *,
        rule: Rule,
        max_grad_norm: float | None = None,
        **hyperparameters: Any,
    ) -> None:
        refusal = "backpropagation would leave the gradients on the empty meta tensors"
        super().__init__(
            params, {"lr": lr, **hyperparameters}, rule, seed=0, offload_refusal=refusal
        )
        self.estimator = BackpropEstimator()
        self.max_grad_norm = max_grad_norm

    def step(self, closure=None) -> torch.Tensor | None:
        entries = self.trainable()
        estimate = self.estimator.estimate([e for e, _ in entries], closure, 0)
        if estimate.loss is not None:
            check_finite([estimate.loss], lambda: None)
        if self.max_grad_norm is not None:
            grads = [e.param for e, _ in entries if e.param.grad is not None]
            torch.nn.utils.clip_grad_norm_(grads, self.max_grad_norm)
        self.finish_step()
        self.apply_gradient(entries)
        return estimate.loss
