"""The eight optimizers of the ZO benchmark, as ``torch.optim.Optimizer`` subclasses.

Each one wires a gradient estimator (:mod:`zotune.estimators`) to an update rule
(:mod:`zotune.rules`):

=============== ==================== ============== ==========================================
key             class                estimator      rule
=============== ==================== ============== ==========================================
zo-sgd          :class:`ZOSGD`        RGE            SGD
zo-sgd-mmt      :class:`ZOSGDMomentum` RGE           momentum
zo-sgd-cons     :class:`ZOSGDConservative` RGE       SGD, keep the best of three candidates
zo-sgd-sign     :class:`ZOSGDSign`    RGE            sign
zo-adam         :class:`ZOAdam`       RGE            Adam
forward-grad    :class:`ForwardGrad`  forward-mode AD SGD
fo-sgd          :class:`FOSGD`        backprop       SGD (momentum optional)
fo-adam         :class:`FOAdam`       backprop       Adam
=============== ==================== ============== ==========================================

Closure contract: ``step(closure)`` where ``closure()`` returns the scalar loss of the current
batch and never calls ``backward``. Zeroth-order optimizers (and Forward-Grad) require it and
call it under ``torch.no_grad()``; first-order ones backpropagate its loss themselves, or,
without a closure, use ``param.grad`` as ``torch.optim`` does. ``step`` returns the loss.

Only tensors with ``requires_grad=True`` are perturbed and updated, so freezing a tensor is
the usual flag. LR schedulers, param groups and ``state_dict`` work as in torch; the state
dict also carries the seed stream, so a resumed run draws the same directions.

Directions (every zeroth-order optimizer and Forward-Grad): ``distribution`` is ``"auto"``
(default: the shared noise table on CPU, Gaussian sampling on CUDA), ``"table"``,
``"gaussian"`` or ``"rademacher"``; ``table_numel`` sets the table's size (a power of two,
2**22 values by default). See :class:`zotune.estimators.DirectionSampler`.

Half precision (every zeroth-order optimizer and Forward-Grad): the update of an fp16/bf16
tensor is computed chunk-wise in fp32 and stochastically rounded (unbiased, bits seeded by the
step), so updates far below one ulp are kept in expectation; ``stochastic_rounding=False``
rounds to nearest instead. The probes keep their exact-restore legs. See
:mod:`zotune.stochastic_rounding`.

Enhancements (every zeroth-order optimizer; ZO-Bench §5; see :mod:`zotune.enhance`):

* block-wise ZO: ``block_level="layer" | "sublayer" | "linear"`` with ``params`` the model
  (or groups from :func:`zotune.enhance.partition`), ``block_mode="coordinate" | "all"``;
  one direction per block from its own seed, 2q forward passes per block;
* hybrid ZO/FO: ``hybrid_layers=k`` (an int number of layers from the input, or a fraction)
  with ``params`` the model: the first k layers and the embeddings by ZO, the rest by
  backprop with the same rule;
* sparsity-induced ZO: ``sparsity=s`` in [0, 1), ``sparsity_mode="uniform" | "magnitude"``,
  ``mask_every=N``: a seeded mask on the perturbation, regenerated, never stored.

``forward_passes_per_step`` reports the budget (2q × blocks; 2q + 1 for hybrid).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from . import rules
from .enhance.blocks import BLOCK_MODES, blockwise_step, partition
from .enhance.hybrid import hybrid_step, split_hybrid
from .enhance.sparse import MaskedDirectionSampler, check_sparsity, tensor_sparsities
from .estimators import (
    BackpropEstimator,
    DirectionalEstimate,
    ForwardGradientEstimator,
    IndexedParam,
    RandomGradientEstimator,
    mix_seed,
)
from .estimators.base import check_finite, evaluate, rounds_coarsely, shift
from .estimators.directions import DEFAULT_TABLE_NUMEL
from .offload import OffloadError, substitute_offloaded
from .rules import Rule, TensorContext
from .stochastic_rounding import add_rounded_, apply_update_, rounding_seed, rounds_stochastically

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]] | torch.nn.Module

_SEED_KEY = "zotune_seed_stream"


def _check_lr(lr: float) -> None:
    if not lr >= 0:
        raise ValueError(f"Invalid learning rate: {lr} (must be >= 0)")


def _check_weight_decay(weight_decay: float) -> None:
    if not weight_decay >= 0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay} (must be >= 0)")


def _check_momentum(momentum: float, dampening: float, nesterov: bool) -> None:
    if not 0 <= momentum < 1:
        raise ValueError(f"Invalid momentum value: {momentum} (must be in [0, 1))")
    if not 0 <= dampening <= 1:
        raise ValueError(f"Invalid dampening value: {dampening} (must be in [0, 1])")
    if nesterov and (momentum == 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")


def _check_adam(betas: tuple[float, float], adam_eps: float) -> None:
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"Invalid betas: {betas} (two values, each in [0, 1))")
    if not adam_eps >= 0:
        raise ValueError(f"Invalid adam_eps value: {adam_eps} (must be >= 0)")


def _as_params(params: Params) -> Any:
    if isinstance(params, torch.nn.Module):
        return [p for p in params.parameters() if p.requires_grad]
    return params


def _resolve_offloaded(
    param_groups: list[dict], module: torch.nn.Module | None, refusal: str | None, owner: str
) -> None:
    """Point the groups at the CPU storage of weights accelerate offloaded (zotune.offload)."""
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


def _needs_module(params: Params, option: str) -> torch.nn.Module:
    if not isinstance(params, torch.nn.Module):
        raise TypeError(
            f"{option} needs the model's module tree: pass the model itself as params "
            f"(got {type(params).__name__})"
        )
    return params


def _block_groups(params: Params, block_level: str) -> Any:
    """The model's blocks, or param groups that already carry a ``"block"`` key."""
    if isinstance(params, torch.nn.Module):
        return partition(params, block_level)
    groups = list(params)
    if groups and all(isinstance(g, dict) and "block" in g for g in groups):
        return groups
    raise TypeError(
        f"block_level={block_level!r} needs the model (pass it as params) or param groups "
        "with a 'block' key from zotune.enhance.blocks.partition"
    )


class _RuleOptimizer(torch.optim.Optimizer):
    """Shared plumbing: a rule, a seed stream, indexed trainable tensors, rule application."""

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
        _check_lr(defaults["lr"])
        _check_weight_decay(defaults.get("weight_decay", 0.0))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"Invalid seed: {seed!r} (must be an int)")
        super().__init__(_as_params(params), defaults)
        _resolve_offloaded(self.param_groups, module, offload_refusal, type(self).__name__)
        self.rule = rule
        self.seed = seed
        self.steps_taken = 0

    def _trainable(self) -> list[tuple[IndexedParam, dict[str, Any]]]:
        """Trainable tensors with a stable global index (frozen ones keep their number)."""
        entries, index = [], 0
        for group in self.param_groups:
            for param in group["params"]:
                if param.requires_grad:
                    entries.append((IndexedParam(index, param), group))
                index += 1
        return entries

    def _state_for(self, param: torch.Tensor) -> dict[str, Any]:
        state = self.state[param]
        if "step" not in state:
            state["step"] = 0
            for name in self.rule.state_names:
                state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        return state

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
        stochastically rounded with the bits of ``rounding`` = (seed, index, chunk) if given."""
        ndim, step, group = ctx_args
        sliced = {}
        for name in self.rule.state_names:
            full = state[name]
            sliced[name] = (
                full if full.shape == view.shape else full.view(-1)[start : start + view.numel()]
            )
        u = self.rule(g, sliced, TensorContext(view, ndim, step, group))
        if rounding is None:
            view.add_(u, alpha=-group["lr"])
        else:
            add_rounded_(view, u, -group["lr"], *rounding)

    def _step_seed(self) -> int:
        return mix_seed(self.seed, self.steps_taken)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state[_SEED_KEY] = {"seed": self.seed, "steps_taken": self.steps_taken}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        stream = state_dict.pop(_SEED_KEY, None)
        super().load_state_dict(state_dict)
        if stream is not None:
            self.seed = int(stream["seed"])
            self.steps_taken = int(stream["steps_taken"])


class ZerothOrderOptimizer(_RuleOptimizer):
    """Any directional estimator (RGE, Forward-Grad) wired to any rule.

    The update pass regenerates each z chunk once, removes the displacement the probes left
    and applies the update in the same pass; for linear rules (SGD ± weight decay) that is a
    single axpy per chunk, so a q = 1 ZO-SGD step makes three passes over the parameters
    (+εz, −2εz, restore-and-update) where MeZO makes four.

    The enhancement options (``block_level``, ``block_mode``, ``hybrid_layers``,
    ``sparsity``, ``sparsity_mode``, ``mask_every``; see :mod:`zotune.enhance`) change how a
    step is made, not the rule: block-wise and hybrid steps reuse :meth:`_update`, and the
    sparse mask lives in the direction sampler, so every pass (probe, restore, update, the
    conservative candidates) sees the same m ⊙ z.
    """

    def __init__(
        self,
        params: Params,
        defaults: dict[str, Any],
        *,
        estimator: RandomGradientEstimator | ForwardGradientEstimator,
        rule: Rule,
        seed: int = 0,
        block_level: str | None = None,
        block_mode: str = "coordinate",
        hybrid_layers: int | float | None = None,
        sparsity: float = 0.0,
        sparsity_mode: str = "uniform",
        mask_every: int = 1,
        stochastic_rounding: bool = True,
    ) -> None:
        if not isinstance(stochastic_rounding, bool):
            raise TypeError(f"Invalid stochastic_rounding: {stochastic_rounding!r} (a bool)")
        if block_mode not in BLOCK_MODES:
            raise ValueError(f"Unknown block_mode: {block_mode!r} (choose from {BLOCK_MODES})")
        check_sparsity(sparsity, sparsity_mode, mask_every)
        if block_level is not None and hybrid_layers is not None:
            raise ValueError(
                f"block_level={block_level!r} and hybrid_layers={hybrid_layers!r} cannot be "
                "combined (blocks would split the ZO part only)"
            )
        module = params if isinstance(params, torch.nn.Module) else None
        refusal = None
        if isinstance(estimator, ForwardGradientEstimator):
            refusal = "forward-mode tangents do not survive accelerate's copy to the device"
        elif hybrid_layers is not None:
            refusal = "the hybrid first-order part needs gradients on the weights"
        if block_level is not None:
            params = _block_groups(params, block_level)
        if hybrid_layers is not None:
            params = split_hybrid(_needs_module(params, "hybrid_layers"), hybrid_layers)
        super().__init__(
            params, defaults, rule, seed, module=module, offload_refusal=refusal
        )
        self.estimator = estimator
        self.stochastic_rounding = stochastic_rounding
        self.block_level = block_level
        self.block_mode = block_mode
        self.hybrid_layers = hybrid_layers
        if sparsity:
            sparsities = tensor_sparsities(
                [e for e, _ in self._trainable()], sparsity, sparsity_mode
            )
            estimator.sampler = MaskedDirectionSampler(
                estimator.sampler, sparsities, seed, mask_every
            )

    @property
    def forward_passes_per_step(self) -> int:
        """Forward passes of one step: 2q per block for block-wise ZO, + 1 for hybrid's FO part."""
        if self.block_level is not None:
            return self.estimator.forward_passes * len(self.param_groups)
        if self.hybrid_layers is not None:
            parts = {group["part"] for group in self.param_groups}
            return self.estimator.forward_passes * ("zo" in parts) + ("fo" in parts)
        return self.estimator.forward_passes

    def _begin_step(self, closure) -> None:
        if closure is None or not callable(closure):
            raise TypeError(
                f"{type(self).__name__}.step() needs a closure that returns the loss "
                f"(got {closure!r}); zeroth-order optimizers evaluate it at perturbed parameters"
            )
        if isinstance(self.estimator.sampler, MaskedDirectionSampler):
            self.estimator.sampler.set_step(self.steps_taken)

    def _estimate(self, closure) -> tuple[list, DirectionalEstimate]:
        self._begin_step(closure)
        entries = self._trainable()
        estimate = self.estimator.estimate([e for e, _ in entries], closure, self._step_seed())
        self.steps_taken += 1
        return entries, estimate

    @torch.no_grad()
    def step(self, closure=None) -> torch.Tensor:
        if self.hybrid_layers is not None:
            self._begin_step(closure)
            return hybrid_step(self, closure)
        if self.block_level is not None:
            self._begin_step(closure)
            return blockwise_step(self, closure, self.block_mode)
        entries, estimate = self._estimate(closure)
        self._update(entries, estimate)
        return estimate.loss

    @torch.no_grad()
    def _update(self, entries, estimate: DirectionalEstimate) -> None:
        if self.rule.is_linear:
            self._update_linear(entries, estimate)
            return
        sampler = self.estimator.sampler
        last = len(estimate.seeds) - 1
        seed = self._rounding_seed(estimate)
        for item, group in entries:
            param = item.param
            rounded = seed is not None and rounds_stochastically(param.dtype)
            for chunk, view in sampler.views(param):
                start = chunk * sampler.chunk_numel
                if start == 0:
                    state = self._state_for(param)
                    ctx_args = (param.ndim, state["step"], group)
                g = sampler.scratch(view, slot=1) if last else None
                for k, (seed, coeff) in enumerate(estimate.terms):
                    z = sampler.draw(view, seed, item.index, chunk)
                    if seed == estimate.displaced_seed and estimate.offset:
                        # Its own rounding, before the update: lands back on θ in fp16/bf16.
                        view.add_(z, alpha=-estimate.offset)
                    if g is None:
                        g = z.mul_(coeff)
                    elif k == 0:
                        torch.mul(z, coeff, out=g)
                    else:
                        g.add_(z, alpha=coeff)
                rounding = (seed, item.index, chunk) if rounded else None
                self._apply_rule(view, g, state, ctx_args, start, rounding)

    def _update_linear(self, entries, estimate: DirectionalEstimate) -> None:
        """θ_new = κθ − lr Σ_k c_k z_k with κ = 1 − lr·λ and θ = θ_probe − offset · z_last.

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
            decay = group["weight_decay"] if item.param.ndim >= 2 else 0.0
            buckets.setdefault((lr, 1 - lr * decay), []).append(item)
        for (lr, keep), items in buckets.items():
            update = [(seed, -lr * coeff) for seed, coeff in estimate.terms]
            precise = [i for i in items if not rounds_coarsely(i.param.dtype)]
            coarse = [i for i in items if rounds_coarsely(i.param.dtype)]
            if precise:
                if keep != 1:
                    torch._foreach_mul_([i.param for i in precise], keep)
                shift(precise, sampler, [(restore[0], keep * restore[1]), *update])
            if coarse:
                shift(coarse, sampler, [restore])
                apply_update_(coarse, sampler, update, self._rounding_seed(estimate), keep)

    @torch.no_grad()
    def _move(
        self, entries, estimate: DirectionalEstimate, scale: float, times: int = 1, leg: int = 0
    ) -> None:
        """θ ← θ + times · scale · ĝ, as ``times`` legs (one pass per seed in fp32); fp16/bf16
        tensors under stochastic rounding take it as one rounding with the bits of ``leg``."""
        seed = self._rounding_seed(estimate, leg)
        items = [e for e, _ in entries]
        rounded = [seed is not None and rounds_stochastically(i.param.dtype) for i in items]
        coarse = [i for i, r in zip(items, rounded, strict=True) if r]
        exact = [i for i, r in zip(items, rounded, strict=True) if not r]
        moves = [(s, scale * coeff) for s, coeff in estimate.terms]
        shift(exact, self.estimator.sampler, moves * times)
        if coarse:
            apply_update_(coarse, self.estimator.sampler, [(s, times * a) for s, a in moves], seed)

    def _rounding_seed(self, estimate: DirectionalEstimate, leg: int = 0) -> int | None:
        """The seed of the stochastic rounding of an update of ``estimate`` (None: off)."""
        if not self.stochastic_rounding:
            return None
        return rounding_seed(estimate.seeds[0], leg)


def _rge(
    eps: float, q: int, probe: str, distribution: str, table_numel: int
) -> RandomGradientEstimator:
    return RandomGradientEstimator(
        eps=eps, q=q, probe=probe, distribution=distribution, table_numel=table_numel
    )


class ZOSGD(ZerothOrderOptimizer):
    """ZO-SGD (MeZO; Malladi et al., NeurIPS 2023)::

        θ_{t+1} = θ_t − η (ĝ_t + λ θ_t)

    with ĝ_t the RGE estimate (two-point by default, q queries, scale ε) and λ the decoupled
    weight decay on matrices. No per-parameter state, no stored gradient: the extra memory is
    the shared noise table (16 MiB in fp32 by default, one per device and dtype) or, with
    sampled directions, one chunk of scratch (4 MiB in fp32). A step is three in-place passes
    (+εz, −2εz, restore-and-update; two more in fp16/bf16, see
    :func:`zotune.estimators.base.rounds_coarsely`).
    """

    def __init__(
        self,
        params: Params,
        lr: float,
        *,
        eps: float = 1e-3,
        q: int = 1,
        probe: str = "two-point",
        distribution: str = "auto",
        table_numel: int = DEFAULT_TABLE_NUMEL,
        weight_decay: float = 0.0,
        seed: int = 0,
        block_level: str | None = None,
        block_mode: str = "coordinate",
        hybrid_layers: int | float | None = None,
        sparsity: float = 0.0,
        sparsity_mode: str = "uniform",
        mask_every: int = 1,
        stochastic_rounding: bool = True,
    ) -> None:
        super().__init__(
            params,
            {"lr": lr, "weight_decay": weight_decay},
            estimator=_rge(eps, q, probe, distribution, table_numel),
            rule=rules.sgd(),
            seed=seed,
            block_level=block_level,
            block_mode=block_mode,
            hybrid_layers=hybrid_layers,
            sparsity=sparsity,
            sparsity_mode=sparsity_mode,
            mask_every=mask_every,
            stochastic_rounding=stochastic_rounding,
        )


class ZOSGDMomentum(ZerothOrderOptimizer):
    """ZO-SGD-MMT (ZO-Bench, Zhang et al., ICML 2024)::

        b_t = μ b_{t−1} + (1 − τ) ĝ_t,   θ_{t+1} = θ_t − η (b_t + λ θ_t)

    The momentum buffer is a parameter-sized tensor per trainable tensor.
    """

    def __init__(
        self,
        params: Params,
        lr: float,
        *,
        momentum: float = 0.9,
        dampening: float = 0.0,
        nesterov: bool = False,
        eps: float = 1e-3,
        q: int = 1,
        probe: str = "two-point",
        distribution: str = "auto",
        table_numel: int = DEFAULT_TABLE_NUMEL,
        weight_decay: float = 0.0,
        seed: int = 0,
        block_level: str | None = None,
        block_mode: str = "coordinate",
        hybrid_layers: int | float | None = None,
        sparsity: float = 0.0,
        sparsity_mode: str = "uniform",
        mask_every: int = 1,
        stochastic_rounding: bool = True,
    ) -> None:
        _check_momentum(momentum, dampening, nesterov)
        super().__init__(
            params,
            {
                "lr": lr,
                "momentum": momentum,
                "dampening": dampening,
                "nesterov": nesterov,
                "weight_decay": weight_decay,
            },
            estimator=_rge(eps, q, probe, distribution, table_numel),
            rule=rules.momentum(),
            seed=seed,
            block_level=block_level,
            block_mode=block_mode,
            hybrid_layers=hybrid_layers,
            sparsity=sparsity,
            sparsity_mode=sparsity_mode,
            mask_every=mask_every,
            stochastic_rounding=stochastic_rounding,
        )


class ZOSGDSign(ZerothOrderOptimizer):
    """ZO-SGD-Sign (ZO-signSGD; Liu et al., ICLR 2019; ZO-Bench)::

        θ_{t+1} = θ_t − η (sign(ĝ_t) + λ θ_t)

    The sign is taken elementwise of the estimate ĝ_t = c_t z_t, i.e. sign(c_t)·sign(z_t).
    ZO-Bench's released code instead feeds sign(c_t)·z_t into an AdamW-style update, which
    keeps z's magnitudes and so is not a sign method; zotune implements the sign method the
    paper defines.
    """

    def __init__(
        self,
        params: Params,
        lr: float,
        *,
        eps: float = 1e-3,
        q: int = 1,
        probe: str = "two-point",
        distribution: str = "auto",
        table_numel: int = DEFAULT_TABLE_NUMEL,
        weight_decay: float = 0.0,
        seed: int = 0,
        block_level: str | None = None,
        block_mode: str = "coordinate",
        hybrid_layers: int | float | None = None,
        sparsity: float = 0.0,
        sparsity_mode: str = "uniform",
        mask_every: int = 1,
        stochastic_rounding: bool = True,
    ) -> None:
        super().__init__(
            params,
            {"lr": lr, "weight_decay": weight_decay},
            estimator=_rge(eps, q, probe, distribution, table_numel),
            rule=rules.sign(),
            seed=seed,
            block_level=block_level,
            block_mode=block_mode,
            hybrid_layers=hybrid_layers,
            sparsity=sparsity,
            sparsity_mode=sparsity_mode,
            mask_every=mask_every,
            stochastic_rounding=stochastic_rounding,
        )


class ZOAdam(ZerothOrderOptimizer):
    """ZO-Adam (ZO-AdaMM; Chen et al., NeurIPS 2019; ZO-Bench)::

        m_t = β₁ m_{t−1} + (1 − β₁) ĝ_t,   v_t = β₂ v_{t−1} + (1 − β₂) ĝ_t²
        θ_{t+1} = θ_t − η (m̂_t / (√v̂_t + δ) + λ θ_t)

    with bias-corrected m̂, v̂. Two parameter-sized state tensors per trainable tensor.
    ``adam_eps`` is Adam's δ; ``eps`` is the perturbation scale ε of the estimate.
    """

    def __init__(
        self,
        params: Params,
        lr: float,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        eps: float = 1e-3,
        q: int = 1,
        probe: str = "two-point",
        distribution: str = "auto",
        table_numel: int = DEFAULT_TABLE_NUMEL,
        weight_decay: float = 0.0,
        seed: int = 0,
        block_level: str | None = None,
        block_mode: str = "coordinate",
        hybrid_layers: int | float | None = None,
        sparsity: float = 0.0,
        sparsity_mode: str = "uniform",
        mask_every: int = 1,
        stochastic_rounding: bool = True,
    ) -> None:
        betas = tuple(betas)
        _check_adam(betas, adam_eps)
        super().__init__(
            params,
            {"lr": lr, "betas": betas, "adam_eps": adam_eps, "weight_decay": weight_decay},
            estimator=_rge(eps, q, probe, distribution, table_numel),
            rule=rules.adam(),
            seed=seed,
            block_level=block_level,
            block_mode=block_mode,
            hybrid_layers=hybrid_layers,
            sparsity=sparsity,
            sparsity_mode=sparsity_mode,
            mask_every=mask_every,
            stochastic_rounding=stochastic_rounding,
        )


class ZOSGDConservative(ZOSGD):
    """ZO-SGD-Cons (ZO-Bench; after Kim et al., 2021): a ZO-SGD step that never gets worse.

    With ĝ_t the RGE estimate, evaluate three candidates and keep the best::

        θ_{t+1} = argmin { f(θ_t), f(θ_t − η ĝ_t), f(θ_t + η ĝ_t) }

    That costs three forward passes on top of the estimate's (2q + 3 in all for two-point).
    The rule is plain SGD on purpose: a stateful rule (momentum, Adam) would advance its state
    once per step even when the kept candidate is θ_t itself, so its state would describe
    updates that never happened. ``weight_decay`` is therefore not offered.
    """

    def __init__(
        self,
        params: Params,
        lr: float,
        *,
        eps: float = 1e-3,
        q: int = 1,
        probe: str = "two-point",
        distribution: str = "auto",
        table_numel: int = DEFAULT_TABLE_NUMEL,
        seed: int = 0,
        block_level: str | None = None,
        block_mode: str = "coordinate",
        hybrid_layers: int | float | None = None,
        sparsity: float = 0.0,
        sparsity_mode: str = "uniform",
        mask_every: int = 1,
        stochastic_rounding: bool = True,
    ) -> None:
        for option, value in (("block_level", block_level), ("hybrid_layers", hybrid_layers)):
            if value is not None:
                raise ValueError(
                    f"zo-sgd-cons does not support {option}={value!r}: its three-candidate "
                    "step compares whole-model moves (sparsity works)"
                )
        super().__init__(
            params,
            lr,
            eps=eps,
            q=q,
            probe=probe,
            distribution=distribution,
            table_numel=table_numel,
            seed=seed,
            block_level=block_level,
            block_mode=block_mode,
            hybrid_layers=hybrid_layers,
            sparsity=sparsity,
            sparsity_mode=sparsity_mode,
            mask_every=mask_every,
            stochastic_rounding=stochastic_rounding,
        )

    @property
    def forward_passes_per_step(self) -> int:
        return self.estimator.forward_passes + 3

    @torch.no_grad()
    def step(self, closure=None) -> torch.Tensor:
        entries, estimate = self._estimate(closure)
        self._update(entries, estimate)  # θ − ηĝ (also removes the probes' offset)
        loss_down = evaluate(closure)
        self._move_by_lr(entries, estimate, 1, leg=1)  # θ
        loss_here = evaluate(closure)
        self._move_by_lr(entries, estimate, 1, leg=2)  # θ + ηĝ
        loss_up = evaluate(closure)
        # Data-parallel processes each saw a shard: they pick the candidate on the batch mean.
        candidates = torch.stack([loss_down, loss_here, loss_up])
        down, here, up = self.estimator.sharing.average(candidates)
        best = min((here, 0), (down, -1), (up, +1), key=lambda x: float(x[0]))
        self._move_by_lr(entries, estimate, best[1] - 1, leg=3)
        return best[0]

    def _move_by_lr(self, entries, estimate, multiple: int, leg: int) -> None:
        """θ ← θ + multiple · η ĝ, each param group with its own η, in legs of ±η ĝ
        (fp16/bf16 under stochastic rounding: one rounding with the bits of ``leg``)."""
        if multiple == 0:
            return
        sign = 1.0 if multiple > 0 else -1.0
        for group in self.param_groups:
            members = [(e, g) for e, g in entries if g is group]
            if members:
                self._move(members, estimate, sign * group["lr"], abs(multiple), leg)


class ForwardGrad(ZerothOrderOptimizer):
    """Forward-Grad (Baydin et al., 2022): SGD on the forward-mode estimate::

        θ_{t+1} = θ_t − η ((∇f(θ_t)·v_t) v_t + λ θ_t),   v_t ~ N(0, I)

    ∇f·v comes from forward-mode AD: exact, no finite-difference bias, no backward graph, but
    the tangents are model-sized while the forward runs. Models must support forward-mode AD
    in every op: Hugging Face models need ``attn_implementation="eager"``.
    """

    def __init__(
        self,
        params: Params,
        lr: float,
        *,
        q: int = 1,
        distribution: str = "auto",
        table_numel: int = DEFAULT_TABLE_NUMEL,
        weight_decay: float = 0.0,
        seed: int = 0,
        block_level: str | None = None,
        block_mode: str = "coordinate",
        hybrid_layers: int | float | None = None,
        sparsity: float = 0.0,
        sparsity_mode: str = "uniform",
        mask_every: int = 1,
        stochastic_rounding: bool = True,
    ) -> None:
        super().__init__(
            params,
            {"lr": lr, "weight_decay": weight_decay},
            estimator=ForwardGradientEstimator(
                q=q, distribution=distribution, table_numel=table_numel
            ),
            rule=rules.sgd(),
            seed=seed,
            block_level=block_level,
            block_mode=block_mode,
            hybrid_layers=hybrid_layers,
            sparsity=sparsity,
            sparsity_mode=sparsity_mode,
            mask_every=mask_every,
            stochastic_rounding=stochastic_rounding,
        )


class FirstOrderOptimizer(_RuleOptimizer):
    """Backprop gradients through a zotune rule: the first-order reference."""

    forward_passes_per_step = 1

    def __init__(self, params: Params, defaults: dict[str, Any], *, rule: Rule) -> None:
        refusal = "backpropagation would leave the gradients on the empty meta tensors"
        super().__init__(params, defaults, rule, seed=0, offload_refusal=refusal)
        self.estimator = BackpropEstimator()

    def step(self, closure=None) -> torch.Tensor | None:
        entries = self._trainable()
        estimate = self.estimator.estimate([e for e, _ in entries], closure, 0)
        if estimate.loss is not None:
            check_finite([estimate.loss], lambda: None)
        self.steps_taken += 1
        with torch.no_grad():
            for item, group in entries:
                grad = item.param.grad
                if grad is None:
                    continue
                state = self._state_for(item.param)
                ctx_args = (item.param.ndim, state["step"], group)
                self._apply_rule(item.param, grad, state, ctx_args, 0)
        return estimate.loss


class FOSGD(FirstOrderOptimizer):
    """FO-SGD: θ_{t+1} = θ_t − η (∇f(θ_t) + λ θ_t), optionally with heavy-ball momentum.

    Without weight decay it matches ``torch.optim.SGD`` step for step. zotune's weight decay
    is decoupled and applied to matrices only (torch's SGD adds λθ to every gradient).
    """

    def __init__(
        self,
        params: Params,
        lr: float,
        *,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        _check_momentum(momentum, dampening, nesterov)
        defaults = {"lr": lr, "weight_decay": weight_decay}
        if momentum:
            defaults.update(momentum=momentum, dampening=dampening, nesterov=nesterov)
        super().__init__(params, defaults, rule=rules.momentum() if momentum else rules.sgd())


class FOAdam(FirstOrderOptimizer):
    """FO-Adam: Adam on backprop gradients (Kingma & Ba, 2015), decoupled weight decay.

    Without weight decay it matches ``torch.optim.Adam``; with it, ``torch.optim.AdamW``
    restricted to matrices. ``adam_eps`` is Adam's δ (``eps`` in torch).
    """

    def __init__(
        self,
        params: Params,
        lr: float,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        betas = tuple(betas)
        _check_adam(betas, adam_eps)
        super().__init__(
            params,
            {"lr": lr, "betas": betas, "adam_eps": adam_eps, "weight_decay": weight_decay},
            rule=rules.adam(),
        )


OPTIMIZERS: dict[str, type[_RuleOptimizer]] = {
    "zo-sgd": ZOSGD,
    "zo-sgd-mmt": ZOSGDMomentum,
    "zo-sgd-cons": ZOSGDConservative,
    "zo-sgd-sign": ZOSGDSign,
    "zo-adam": ZOAdam,
    "forward-grad": ForwardGrad,
    "fo-sgd": FOSGD,
    "fo-adam": FOAdam,
}

ZEROTH_ORDER = tuple(k for k, v in OPTIMIZERS.items() if issubclass(v, ZerothOrderOptimizer))


def create_optimizer(name: str, params: Params, **options: Any) -> torch.optim.Optimizer:
    """Build an optimizer by registry key, e.g. ``create_optimizer("zo-adam", model, lr=1e-4)``.

    ``params`` may be an iterable of tensors, param-group dicts, or a module (its trainable
    parameters). Options are the class's keyword arguments; an unknown one raises TypeError
    naming it.
    """
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown optimizer: {name!r} (choose from {', '.join(OPTIMIZERS)})"
        ) from None
    try:
        return cls(params, **options)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise TypeError(f"{name}: {error}") from None
        raise
