"""What an estimator hands to an update rule, and the in-place moves along directions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .directions import DirectionSampler

Closure = Callable[[], "torch.Tensor | float"]


class NonFiniteLossError(FloatingPointError):
    """A probe loss was NaN or infinite; the parameters were restored before raising."""


@dataclass(frozen=True)
class IndexedParam:
    """A trainable tensor and its position in the optimizer's flattened parameter list.

    The index (not the tensor's identity) seeds its directions, so a resumed or re-created
    optimizer regenerates the same z for the same tensor.
    """

    index: int
    param: torch.Tensor


@dataclass(frozen=True)
class DirectionalEstimate:
    """ĝ = Σ_k coeffs[k] · z(seeds[k]): a gradient estimate held as seeds plus scalars.

    After probing, the parameters may still be displaced: they sit at θ + offset · z(seeds[-1]).
    The optimizer removes that offset in the same pass that applies the update.
    """

    seeds: tuple[int, ...]
    coeffs: tuple[float, ...]
    offset: float
    loss: torch.Tensor
    forward_passes: int

    @property
    def terms(self) -> tuple[tuple[int, float], ...]:
        """(seed, coefficient) for each query."""
        return tuple(zip(self.seeds, self.coeffs, strict=True))


@dataclass(frozen=True)
class BackpropEstimate:
    """The gradient is ``param.grad`` as autograd left it."""

    loss: torch.Tensor | None
    forward_passes: int = 1


def as_loss(value: torch.Tensor) -> torch.Tensor:
    """A detached 0-d tensor in at least fp32 (fp16 losses would round the ZO differences)."""
    value = value.detach().reshape(())
    return value.to(torch.promote_types(value.dtype, torch.float32))


def evaluate(closure: Closure) -> torch.Tensor:
    """Call a loss closure and return its value as a detached 0-d float tensor."""
    value = closure()
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"closure must return a scalar loss, got a tensor of shape {tuple(value.shape)}"
            )
        return as_loss(value)
    if isinstance(value, (int, float)):
        return torch.tensor(float(value), dtype=torch.float64)
    raise TypeError(f"closure must return a scalar loss (tensor or float), got {type(value)!r}")


def check_finite(losses: Sequence[torch.Tensor], restore: Callable[[], None]) -> None:
    """Raise NonFiniteLossError (after restoring the parameters) if any loss is not finite."""
    values = [float(loss) for loss in losses]
    if all(math.isfinite(v) for v in values):
        return
    restore()
    raise NonFiniteLossError(f"non-finite loss during probing: {values}; parameters restored")


@torch.no_grad()
def shift(
    params: Sequence[IndexedParam],
    sampler: DirectionSampler,
    moves: Sequence[tuple[int, float]],
) -> None:
    """θ ← θ + Σ_(seed, scale) scale · z(seed), in place, in one pass over the parameters.

    Several moves share one pass (e.g. "undo query k, apply query k+1"), so each tensor is
    read and written once however many directions are combined.
    """
    moves = [(seed, scale) for seed, scale in moves if scale != 0.0]
    if not moves:
        return
    for item in params:
        for chunk, view in sampler.views(item.param):
            for seed, scale in moves:
                view.add_(sampler.draw(view, seed, item.index, chunk), alpha=scale)
