"""A step's batch in micro-batches: the same loss, the activations of one micro-batch.

A batch of N examples split into parts P_1 … P_m has the loss

    f(θ; batch) = Σ_j w_j f(θ; P_j) / Σ_j w_j

with w_j what the loss averages over in part j (its examples, or its scored tokens for the
``lm`` loss: :meth:`zotune.evaluation.scoring.Scorer.loss_weight`). So a zeroth-order probe
evaluates f(θ ± εz) part by part at the same perturbation, and the estimate is the one-batch
estimate (equal to float rounding) while only one part's activations are alive at a time. With grad
enabled (a first-order step, or a hybrid step's first-order part) each part's weighted loss
is backpropagated at once, so the gradients accumulate to ∇f(θ; batch) and the returned loss
is detached: gradient accumulation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from ..evaluation.scoring import Scorer
from ..tasks import Example


def parts(examples: Sequence[Example], size: int) -> list[Sequence[Example]]:
    """``examples`` in consecutive parts of ``size`` (the last may be smaller)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"micro-batch size must be an int >= 1, got {size!r}")
    return [examples[start : start + size] for start in range(0, len(examples), size)]


class MicroBatchLoss:
    """A loss closure over a batch encoded in parts (see the module docstring)."""

    def __init__(self, scorer: Scorer, examples: Sequence[Example], size: int) -> None:
        self.scorer = scorer
        self.batches = [scorer.encode_for_loss(part) for part in parts(examples, size)]
        weights = [scorer.loss_weight(batch) for batch in self.batches]
        total = sum(weights)
        self.fractions = [weight / total for weight in weights]

    def __call__(self) -> torch.Tensor:
        return accumulate(
            [partial(self.scorer.loss, batch) for batch in self.batches], self.fractions
        )


def accumulate(
    losses: Sequence[Callable[[], torch.Tensor]], fractions: Sequence[float]
) -> torch.Tensor:
    """Σ_j fraction_j · losses_j(), one part alive at a time: with grad enabled each part is
    backpropagated as it is computed (its gradients accumulate) and the sum is detached."""
    backprop = torch.is_grad_enabled()
    total = None
    for loss, fraction in zip(losses, fractions, strict=True):
        part = loss() * fraction
        if backprop:
            part.backward()
            part = part.detach()
        total = part if total is None else total + part
    return total


def batch_loss(
    scorer: Scorer, examples: Sequence[Example], micro_batch_size: int | None
) -> Callable[[], torch.Tensor]:
    """The loss closure of a step's examples: one batch, or micro-batches when
    ``micro_batch_size`` is smaller than the batch."""
    if micro_batch_size is None or micro_batch_size >= len(examples):
        batch = scorer.encode_for_loss(examples)
        return lambda: scorer.loss(batch)
    return MicroBatchLoss(scorer, examples, micro_batch_size)
