"""A MeZO-style ZO-SGD step, written the way the research code writes it: the speed baseline.

This reproduces ``MeZOTrainer.zo_step`` / ``zo_perturb_parameters`` / ``zo_update`` of MeZO
(Malladi et al., NeurIPS 2023; ``large_models/trainer.py``), which ZO-Bench's ZO-SGD inherits:

* before each of the four passes over the parameters the *global* RNG is re-seeded,
  ``torch.manual_seed(zo_random_seed)``, and every tensor's z is drawn whole with
  ``torch.normal(mean=0, std=1, size=param.data.size(), ...)``;
* the moves are out of place: ``param.data = param.data + scaling_factor * z * eps`` with
  scaling factors +1, −2, +1 (probe at θ + εz, probe at θ − εz, restore);
* the update regenerates z once more:
  ``param.data = param.data - lr * (projected_grad * z + weight_decay * param.data)``
  (without the decay term for biases and layer norms, chosen by name as MeZO does).

That is four passes, each sampling a full Gaussian tensor and allocating two temporaries per
tensor, where :class:`zotune.optim.ZOSGD` makes three in-place passes over regenerated
chunks. It is a benchmark baseline only; use :class:`zotune.optim.ZOSGD` to train.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import torch

# MeZO skips weight decay on tensors whose name contains one of these.
NO_DECAY_MARKERS = ("bias", "layer_norm", "layernorm")


class MezoReferenceStep:
    """``step(closure)`` as MeZO's ``zo_step`` followed by ``zo_update``.

    ``named_parameters`` are ``(name, tensor)`` pairs; only those with ``requires_grad`` are
    perturbed (MeZO's ``named_parameters_to_optim``). MeZO draws each step's seed with
    ``np.random.randint(1_000_000_000)`` from the global NumPy RNG; here it comes from a
    local stream seeded with ``seed``, so runs are reproducible without touching NumPy.
    """

    def __init__(
        self,
        named_parameters: Iterable[tuple[str, torch.Tensor]],
        *,
        lr: float,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"Invalid learning rate: {lr} (must be >= 0)")
        if not eps > 0:
            raise ValueError(f"Invalid perturbation scale eps: {eps} (must be > 0)")
        self.named_parameters_to_optim = [(n, p) for n, p in named_parameters if p.requires_grad]
        self.lr = lr
        self.eps = eps
        self.weight_decay = weight_decay
        self._seeds = random.Random(seed)
        self.zo_random_seed = 0
        self.projected_grad = 0.0

    forward_passes_per_step = 2

    def z(self, param: torch.Tensor) -> torch.Tensor:
        """MeZO's draw: one Gaussian tensor the size of ``param`` from the global RNG."""
        return torch.normal(
            mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype
        )

    def zo_perturb_parameters(self, scaling_factor: float = 1) -> None:
        torch.manual_seed(self.zo_random_seed)
        for _, param in self.named_parameters_to_optim:
            z = self.z(param)
            param.data = param.data + scaling_factor * z * self.eps

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Probe at θ ± εz, restore, update; returns the loss at θ + εz (MeZO's ``loss1``)."""
        self.zo_random_seed = self._seeds.randrange(1_000_000_000)
        self.zo_perturb_parameters(scaling_factor=1)
        loss1 = closure()
        self.zo_perturb_parameters(scaling_factor=-2)
        loss2 = closure()
        self.projected_grad = float((loss1 - loss2) / (2 * self.eps))
        self.zo_perturb_parameters(scaling_factor=1)
        self.zo_update()
        return loss1.detach()

    def zo_update(self) -> None:
        torch.manual_seed(self.zo_random_seed)
        for name, param in self.named_parameters_to_optim:
            z = self.z(param)
            if not any(marker in name for marker in NO_DECAY_MARKERS):
                param.data = param.data - self.lr * (
                    self.projected_grad * z + self.weight_decay * param.data
                )
            else:
                param.data = param.data - self.lr * (self.projected_grad * z)
