"""The first-order reference: gradients from backpropagation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import BackpropEstimate, Closure
from .directions import IndexedParam


class BackpropEstimator:
    """ĝ = ∇f(θ) by reverse-mode AD, so the FO baselines share the ZO update rules.

    With a closure, the gradients are cleared, the closure's loss is computed with grad
    enabled and backpropagated here (zotune closures return the loss). A standard
    ``torch.optim`` closure that calls ``backward`` itself works too: gradients present
    after it returns are its own, and are not computed twice. Without a closure,
    ``param.grad`` is used as the caller left it, as with ``torch.optim``.
    """

    forward_passes = 1

    def estimate(
        self, params: Sequence[IndexedParam], closure: Closure | None, seed: int
    ) -> BackpropEstimate:
        if closure is None:
            return BackpropEstimate(loss=None, forward_passes=0)
        for item in params:
            item.param.grad = None
        with torch.enable_grad():
            loss = closure()
            if isinstance(loss, torch.Tensor) and any(i.param.grad is not None for i in params):
                return BackpropEstimate(loss=loss.detach())
            if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                raise ValueError(
                    "the closure's loss does not require grad: first-order optimizers need a "
                    "loss computed with autograd from trainable parameters"
                )
            loss.backward()
        return BackpropEstimate(loss=loss.detach())
