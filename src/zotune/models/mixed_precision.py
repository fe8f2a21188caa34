"""Autocast: fp32 weights, half-precision compute for the forward passes.

``model.autocast: bfloat16`` (CLI ``--autocast bfloat16``) runs every forward pass — the
probes of a zeroth-order step, Forward-Grad's dual forward, a first-order forward and its
backward, and evaluation — under ``torch.autocast(device_type, dtype)``: matrix products in
bf16, reductions and the loss in fp32, while the weights, the updates and the optimizer
state stay fp32. It is the fast mode for users who want fp32 state; ``model.dtype:
bfloat16`` (weights in bf16, updates stochastically rounded, see
:mod:`zotune.optim.stochastic_rounding`) is faster still and halves the weights' memory.

Autocast casts the weights of each matrix product on every forward, so it is slower than
bf16 weights and its peak memory holds the fp32 weights plus bf16 copies of the ones in use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class AutocastError(ValueError):
    """An autocast setting that cannot work."""


def check_autocast(autocast: str | None, weights_dtype: str | torch.dtype) -> None:
    """Refuse an unknown autocast dtype, or autocast over weights that are not fp32."""
    if autocast is None:
        return
    if autocast not in AUTOCAST_DTYPES:
        raise AutocastError(
            f"model.autocast: unknown dtype {autocast!r} (choose from "
            f"{', '.join(AUTOCAST_DTYPES)}, or leave it unset)"
        )
    if weights_dtype not in ("float32", torch.float32):
        raise AutocastError(
            f"model.autocast={autocast} needs model.dtype=float32 (got {weights_dtype}): "
            "autocast computes in half precision from fp32 weights"
        )


def compute_context(
    autocast: str | None, device: torch.device | str
) -> contextlib.AbstractContextManager:
    """The context forward passes run in: ``torch.autocast`` or nothing."""
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST_DTYPES[autocast])


def under_autocast(
    function: Callable[..., Any], autocast: str | None, device: torch.device | str
) -> Callable[..., Any]:
    """``function`` wrapped to run under :func:`compute_context` (itself when off)."""
    if autocast is None:
        return function

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with compute_context(autocast, device):
            return function(*args, **kwargs)

    return wrapped
