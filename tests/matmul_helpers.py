"""The bound a half-precision matrix product computed in fp32 must meet (tests of
``model.matmul``)."""

from __future__ import annotations

import torch


def rounded_product_bound(x, weight, bias, dtype):
    """(the exact product of the operands rounded to ``dtype``, in float64; how far an fp32
    GEMM of them, rounded once to ``dtype``, may be from it). Products of two half-precision
    values are exact in fp32, so the fp32 GEMM is off by its accumulation error (at most
    K·eps₃₂·Σ|w·x| for K terms) before the output's rounding (half an ulp of ``dtype``)."""
    x, weight = x.to(dtype).double(), weight.to(dtype).double()
    bias = None if bias is None else bias.to(dtype).double()
    exact = torch.nn.functional.linear(x, weight, bias)
    magnitude = torch.nn.functional.linear(
        x.abs(), weight.abs(), None if bias is None else bias.abs()
    )
    accumulation = (x.shape[-1] + 1) * torch.finfo(torch.float32).eps * magnitude
    bound = (exact.abs() + accumulation) * torch.finfo(dtype).eps / 2 + accumulation
    return exact, bound + torch.finfo(dtype).tiny
