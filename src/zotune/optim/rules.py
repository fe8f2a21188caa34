"""Per-tensor update rules: turn a gradient estimate g into an update direction u.

The optimizer then applies θ ← θ − lr · u. Rules are elementwise, so they run on any slice of
a tensor (zotune feeds ZO estimates chunk by chunk) and serve ZO, Forward-Grad and backprop
estimates alike, which keeps the comparisons between them fair. After optax, a rule is a
chain of transforms, each with its own per-tensor state; hyperparameters are read from the
optimizer's param group at every step, so schedulers and users can change them mid-run.

State precision. A rule's state tensors (momentum buffer, Adam's m and v) have the dtype
:func:`state_dtype` gives: the parameter's own, except float32 for fp16/bf16 parameters, as
mixed-precision training keeps its optimizer state. In fp16, Adam's v ≈ (1 − β₂)g²
overflows (fp16's largest value is 65504) or flushes to zero for small g, and δ = 1e-8 rounds
to 0 (fp16's smallest subnormal is 2⁻²⁴ ≈ 6e-8), so √v̂ + δ can be 0 and the update inf or
NaN, from the first step. In bf16 a momentum buffer keeps 8 significant bits of the sum.
The optimizer therefore hands a stateful rule g in fp32 and writes the fp32 update back to
the half weight with its rounding (see :class:`zotune.optim.base.RuleOptimizer`). The price
is memory: Adam's state for bf16 or fp16 weights costs 2 × 4 bytes per trainable value (four
times the weights' 2 bytes), momentum 4 bytes;
:func:`zotune.profiling.memory_model.optimizer_state_bytes` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .options import ADAM_EPS, BETAS, DAMPENING, LR, NESTEROV, WEIGHT_DECAY, Option, momentum

Tensor = torch.Tensor


def state_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """The dtype of a rule's state for a parameter of ``param_dtype``: float32 for floating
    dtypes narrower than fp32 (fp16, bf16), the parameter's own otherwise."""
    if param_dtype.is_floating_point and torch.finfo(param_dtype).bits < 32:
        return torch.float32
    return param_dtype


@dataclass(frozen=True)
class TensorContext:
    """What a transform may know about the tensor it updates besides the slice itself."""

    param: Tensor  # the slice of the parameter being updated (current values)
    ndim: int  # rank of the whole parameter (slices are flat)
    step: int  # 1-based count of updates applied to this tensor
    group: dict[str, Any]  # the param group: hyperparameters live here


class Transform:
    """One stage of a rule. ``state_names`` lists its tensor state (shaped like the param, of
    dtype :func:`state_dtype`; the input ``u`` of a rule with state has that dtype too);
    ``hyperparameters`` declares the param-group values it reads, which makes them options
    of every optimizer whose rule chains it (:class:`zotune.optim.registry.OptimizerEntry`).

    A transform must not modify its input ``u`` in place: it may be another stage's state.
    """

    state_names: tuple[str, ...] = ()
    hyperparameters: tuple[Option, ...] = ()

    def __call__(self, u: Tensor, state: dict[str, Tensor], ctx: TensorContext) -> Tensor:
        raise NotImplementedError


class Momentum(Transform):
    """Heavy-ball momentum (Polyak, 1964), as torch.optim.SGD computes it::

        b_1 = g_1,   b_t = μ b_{t−1} + (1 − τ) g_t,   u_t = g_t + μ b_t (Nesterov) or b_t

    with μ = group["momentum"], τ = group["dampening"].
    """

    state_names = ("momentum_buffer",)
    hyperparameters = (momentum(0.0), DAMPENING, NESTEROV)

    def __call__(self, u, state, ctx):
        mu = ctx.group["momentum"]
        buffer = state["momentum_buffer"]
        if ctx.step == 1:
            buffer.copy_(u)
        else:
            buffer.mul_(mu).add_(u, alpha=1 - ctx.group["dampening"])
        return u.add(buffer, alpha=mu) if ctx.group["nesterov"] else buffer


class Sign(Transform):
    """u = sign(g), elementwise (signSGD, Bernstein et al., 2018)."""

    def __call__(self, u, state, ctx):
        return torch.sign(u)


class Adam(Transform):
    """Adam (Kingma & Ba, 2015), with bias correction, as torch.optim.Adam computes it::

        m_t = β₁ m_{t−1} + (1 − β₁) g_t,   v_t = β₂ v_{t−1} + (1 − β₂) g_t²
        u_t = (m_t / (1 − β₁ᵗ)) / (√(v_t / (1 − β₂ᵗ)) + δ)

    with (β₁, β₂) = group["betas"], δ = group["adam_eps"].
    """

    state_names = ("exp_avg", "exp_avg_sq")
    hyperparameters = (BETAS, ADAM_EPS)

    def __call__(self, u, state, ctx):
        beta1, beta2 = ctx.group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(u, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(u, u, value=1 - beta2)
        bias1 = 1 - beta1**ctx.step
        bias2_sqrt = (1 - beta2**ctx.step) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(ctx.group["adam_eps"])
        return (exp_avg / bias1).div_(denom)


class TransformersAdamW(Transform):
    """AdamW as ``transformers.AdamW`` computes it (transformers 4.28.1, optimization.py:
    441-466; the Trainer's default ``optim="adamw_hf"``, which ZO-LLM's Sign and Cons runs
    used)::

        m_t = β₁ m_{t−1} + (1 − β₁) g_t,   v_t = β₂ v_{t−1} + (1 − β₂) g_t²
        θ' = θ − η (√(1 − β₂ᵗ) / (1 − β₁ᵗ)) · m_t / (√v_t + δ)
        θ_{t+1} = θ' − η λ θ'

    It differs from :class:`Adam` in two places: δ is added to √v_t, not to the
    bias-corrected √v̂_t (torch's Adam), and the decay multiplies the weights *after* the
    Adam step (Trainer: λ on every tensor but biases and LayerNorms; here on matrices,
    :meth:`DecoupledWeightDecay.decay`). As an
    update u with θ_{t+1} = θ − η u: u = k a + λ (θ − η k a), a = m_t / (√v_t + δ),
    k = √(1 − β₂ᵗ) / (1 − β₁ᵗ). (β₁, β₂) = group["betas"], δ = group["adam_eps"].
    """

    state_names = ("exp_avg", "exp_avg_sq")
    hyperparameters = (BETAS, ADAM_EPS, LR, WEIGHT_DECAY)

    def __call__(self, u, state, ctx):
        beta1, beta2 = ctx.group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(u, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(u, u, value=1 - beta2)
        scale = (1 - beta2**ctx.step) ** 0.5 / (1 - beta1**ctx.step)
        step = exp_avg.div(exp_avg_sq.sqrt().add_(ctx.group["adam_eps"])).mul_(scale)
        decay = DecoupledWeightDecay.decay(ctx.group, ctx.ndim)
        if decay == 0:
            return step
        return step.add(ctx.param.sub(step, alpha=ctx.group["lr"]), alpha=decay)


class DecoupledWeightDecay(Transform):
    """u ← u + λ θ for matrices only (Loshchilov & Hutter, 2019), λ = group["weight_decay"].

    Decay is chosen by tensor rank: tensors with ndim >= 2 (linear weights, embeddings)
    decay; vectors (biases, norm gains) never do. The research code picks by name substrings
    ("bias", "layer_norm"), which misses every model that names its norms differently.
    Because it is added after the other transforms, θ decays by lr·λ·θ whatever the rule
    (AdamW's decoupled form, not an L2 term fed through Adam's scaling). An optimizer that
    does not offer it (``unsupported``) leaves λ out of its groups: no decay.
    """

    hyperparameters = (WEIGHT_DECAY,)

    def __call__(self, u, state, ctx):
        decay = self.decay(ctx.group, ctx.ndim)
        return u if decay == 0 else u.add(ctx.param, alpha=decay)

    @staticmethod
    def decay(group: dict[str, Any], ndim: int) -> float:
        """λ for a tensor of rank ``ndim``: the group's weight decay on matrices, else 0."""
        return group.get("weight_decay", 0.0) if ndim >= 2 else 0.0


def coefficient_signs(coeffs: tuple[float, ...]) -> tuple[float, ...]:
    """c_k → sign(c_k) / q: a ZO estimate Σ c_k z_k becomes (1/q) Σ sign(c_k) z_k, the
    direction ZO-LLM's ZO-SGD-Sign feeds its optimizer (trainer.py:1055-1058, 1129-1131)."""
    q = len(coeffs)
    return tuple(((c > 0) - (c < 0)) / q for c in coeffs)


class Rule:
    """A chain of transforms applied in order; ``rule(g, state, ctx)`` returns u.

    ``coefficients`` (zeroth-order estimates only) maps the estimate's scalars c_k of
    ĝ = Σ c_k z_k before the transforms see ĝ (e.g. :func:`coefficient_signs`).
    """

    def __init__(self, *transforms: Transform, coefficients=None) -> None:
        self.transforms = transforms
        self.coefficients = coefficients
        names = [name for t in transforms for name in t.state_names]
        if len(names) != len(set(names)):
            raise ValueError(f"transforms in one rule share state names: {names}")
        self.state_names = tuple(names)
        declared: dict[str, Option] = {}
        for transform in transforms:
            for option in transform.hyperparameters:
                declared.setdefault(option.name, option)
        self.hyperparameters = tuple(declared.values())
        # Adam, with or without decoupled weight decay after it: a bf16 update can then run
        # as one fused pass (zotune.kernels). Read per chunk by the update, so decided once.
        kinds = [type(t) for t in transforms]
        self.is_adam = kinds in ([Adam], [Adam, DecoupledWeightDecay])

    @property
    def is_linear(self) -> bool:
        """True when u = g + λθ: the update can then be fused into the restoring pass."""
        return all(isinstance(t, DecoupledWeightDecay) for t in self.transforms)

    def decoupled_decay(self, group: dict[str, Any], ndim: int) -> float:
        """λ of the rule's decoupled weight decay for a tensor of rank ``ndim`` (0: none)."""
        return sum(t.decay(group, ndim) for t in self.transforms
                   if isinstance(t, DecoupledWeightDecay))

    def linear_decay(self, group: dict[str, Any], ndim: int) -> float:
        """λ of a linear rule (u = g + λθ), which the fused update path folds into κ = 1 − lr·λ."""
        return sum(t.decay(group, ndim) for t in self.transforms)

    def __call__(self, g: Tensor, state: dict[str, Tensor], ctx: TensorContext) -> Tensor:
        u = g
        for transform in self.transforms:
            u = transform(u, state, ctx)
        return u

    def __repr__(self) -> str:
        names = [type(t).__name__ for t in self.transforms]
        if self.coefficients is not None:
            names.insert(0, f"coefficients={self.coefficients.__name__}")
        return f"Rule({', '.join(names)})"


def sgd() -> Rule:
    """u = g (+ decoupled weight decay)."""
    return Rule(DecoupledWeightDecay())


def momentum() -> Rule:
    return Rule(Momentum(), DecoupledWeightDecay())


def sign() -> Rule:
    return Rule(Sign(), DecoupledWeightDecay())


def transformers_adamw() -> Rule:
    """AdamW as transformers 4.28.1's ``AdamW`` (decay included)."""
    return Rule(TransformersAdamW())


def adam() -> Rule:
    return Rule(Adam(), DecoupledWeightDecay())
