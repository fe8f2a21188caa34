"""Forward-Grad: the directional derivative from forward-mode AD, no backward graph."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as fwad
from torch.overrides import TorchFunctionMode

from .base import (
    NO_SHARING,
    Closure,
    DirectionalEstimate,
    ProbeSharing,
    as_loss,
    check_finite,
    probe_table,
)
from .directions import DEFAULT_CHUNK_NUMEL, DEFAULT_TABLE_NUMEL, DirectionSampler, IndexedParam

EAGER_HINT = (
    "Forward-Grad needs forward-mode AD through every operation of the model, and one has "
    "none ({error}). For Hugging Face models load them with attn_implementation='eager' "
    "(fused SDPA attention has no forward-mode AD)."
)


class Fp32LayerNorm(TorchFunctionMode):
    """Runs fp16 ``layer_norm`` in fp32 and casts its output (and tangent) back to fp16.

    PyTorch's LayerNorm JVP forms rstd³ = (var + ε)^(−3/2) in the input's dtype. In fp16
    that passes 65,504 once a row's standard deviation falls below about 0.025, which is
    where OPT's and RoBERTa's hidden states sit at their initialisation scale (std 0.02): the
    tangent turns NaN at the first LayerNorm, and Forward-Grad's every estimate with it. In
    fp32 the same rows are harmless, and the output's tangent fits fp16 again. bf16 has
    fp32's range, so it is left alone, as is every other operation. The mode is entered for
    every forward, whatever the trained parameters' dtype: fp32 adapters (LoRA, prefix) sit
    on an fp16 base whose LayerNorms carry their tangents.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.layer_norm:
            return func(*args, **kwargs)
        first = args[0] if args else kwargs.get("input")
        if not isinstance(first, torch.Tensor) or first.dtype != torch.float16:
            return func(*args, **kwargs)
        upcast = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
        extra = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return func(*upcast, **extra).to(torch.float16)


class ForwardGradientEstimator:
    """Unbiased gradient estimate from Jacobian-vector products (Baydin et al., 2022)::

        ĝ = (1/q) Σ_k (∇f(θ) · v_k) v_k,     E[v_k v_kᵀ] = I

    ∇f·v is exact (not a finite difference): inside a ``dual_level`` each parameter's value is
    replaced in place by the dual number (θ, v), so the closure's loss carries ∇f·v as its
    tangent (v from :class:`DirectionSampler`: Gaussian, Rademacher or the noise table).
    The closure contract is the same as for RGE; no backward graph is built. The
    tangents v are whole-model sized while the forward runs (that is Forward-Grad's memory
    cost); afterwards only the seed of v is kept.
    """

    def __init__(
        self,
        q: int = 1,
        distribution: str = "auto",
        chunk_numel: int = DEFAULT_CHUNK_NUMEL,
        table_numel: int = DEFAULT_TABLE_NUMEL,
    ) -> None:
        self.q = q
        self.sampler = DirectionSampler(distribution, chunk_numel, table_numel)
        self.sharing: ProbeSharing = NO_SHARING

    @property
    def forward_passes(self) -> int:
        return self.q

    @torch.no_grad()
    def estimate(
        self, params: Sequence[IndexedParam], closure: Closure, seed: int
    ) -> DirectionalEstimate:
        seeds = self.sampler.query_seeds(seed, self.q)
        self.sampler.cover(params, seeds)
        table = probe_table(self.q, 2)  # row k: f(θ), ∇f(θ)·v_k
        for k in self.sharing.queries(self.q):
            loss, derivative = self._directional_derivative(params, closure, seeds[k])
            table[k, 0], table[k, 1] = loss, derivative
        table = self.sharing.combine(table)
        check_finite(table, lambda: None)
        return DirectionalEstimate(
            seeds=seeds,
            coeffs=tuple((table[:, 1] / self.q).tolist()),
            offset=0.0,
            loss=table[:, 0].mean(),
            forward_passes=self.forward_passes,
        )

    def _directional_derivative(self, params, closure, seed) -> tuple[torch.Tensor, torch.Tensor]:
        with fwad.dual_level():
            for item in params:
                tangent = self.sampler.direction(item.param, seed, item.index)
                item.param.copy_(fwad.make_dual(item.param.detach(), tangent))
            try:
                with Fp32LayerNorm():
                    value = closure()
            except NotImplementedError as error:
                raise RuntimeError(EAGER_HINT.format(error=str(error).splitlines()[0])) from error
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"Forward-Grad's closure must return the loss as a tensor, got {type(value)!r}"
                )
            tangent = fwad.unpack_dual(value).tangent
            if tangent is None:
                raise RuntimeError(
                    "Forward-Grad: the closure's loss carries no tangent; it does not depend on "
                    "the optimizer's parameters through differentiable operations"
                )
            return as_loss(value), as_loss(tangent)
