"""MeZO's direction stream, value for value (``distribution="mezo"``).

MeZO (princeton-nlp/MeZO large_models/trainer.py) draws its directions like this:

* per step, ``self.zo_random_seed = np.random.randint(1000000000)`` (``zo_step``, line 770)
  from numpy's global stream, which transformers' ``set_seed(args.seed)`` seeded (run.py:
  115-117, 466, and again in the Trainer's constructor); nothing else in MeZO's training loop
  draws from it (ZO-LLM's also draws a sparse-mask seed before each step, trainer.py:469-470);
* per pass over the parameters (+εz, −2εz, +εz in ``zo_perturb_parameters``, lines 699-712,
  and the update in ``zo_update``, lines 791-806), ``torch.manual_seed(zo_random_seed)`` and
  then, for each trainable parameter in ``named_parameters()`` order,
  ``z = torch.normal(mean=0, std=1, size=param.size(), device=param.device,
  dtype=param.dtype)``: every pass regenerates the same z.

zotune reproduces both: the step seed of step t (0-based) is the t-th value of
``np.random.RandomState(seed).randint(1000000000)`` (:func:`mezo_step_seed`), and the z of a
tensor is the one that ``torch.normal`` gives for it after the seed's generator has drawn
the z of every tensor before it (in the optimizer's order, which is ``named_parameters``
order for a model passed whole). The generator is a private ``torch.Generator`` per device
seeded as ``torch.manual_seed`` seeds the global ones, so it starts from the same state and
leaves the global RNG alone (checked on CPU against ``torch.manual_seed`` + ``torch.normal``
in tests/test_directions.py and tests/test_golden_mezo.py; on CUDA each device's stream
covers that device's tensors, as MeZO's per-device global generators do, not yet checked on
a GPU). Departures, all outside MeZO's q = 1 plain step: query k ≥ 1
of a step uses ``mix_seed(step seed, k)`` (ZO-LLM's q > 1 draws further numpy values), and
block-wise steps seed block b with ``mix_seed(step seed, b)``.

The stream is sequential, so a tensor's z exists only after those before it: this sampler
keeps one generator per (seed, device) and its position, and a draw out of order (a later
tensor first, or an earlier one again) regenerates from the seed. Directions are drawn
whole, one tensor at a time (as MeZO does), so the scratch is the size of the largest
trainable tensor rather than a bounded chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .directions import IndexedParam

# MeZO's bound: np.random.randint(1000000000).
SEED_BOUND = 1_000_000_000
# numpy's RandomState takes seeds in [0, 2**32).
NUMPY_SEED_LIMIT = 1 << 32
# Layouts and generators kept per seed: a step's queries (or a block-wise step's blocks,
# which "all" mode updates after probing every block) plus the previous step's.
_KEPT_SEEDS = 4096

_STEP_SEEDS: dict[int, list[int]] = {}


def mezo_step_seed(seed: int, step: int) -> int:
    """The seed MeZO draws for step ``step`` (0-based) of a run whose numpy seed is ``seed``."""
    if not 0 <= seed < NUMPY_SEED_LIMIT:
        raise ValueError(f"Invalid seed for distribution 'mezo': {seed} (must be in [0, 2**32))")
    drawn = _STEP_SEEDS.setdefault(seed, [])
    if step >= len(drawn):
        # RandomState(seed) after len(drawn) draws; batch draws equal one-at-a-time draws.
        state = np.random.RandomState(seed)
        everything = state.randint(SEED_BOUND, size=max(2 * step + 2, 1024))
        drawn[:] = [int(value) for value in everything]
    return drawn[step]


class MeZOStream:
    """z per (seed, tensor index) in MeZO's order, for :class:`DirectionSampler`."""

    def __init__(self) -> None:
        # seed → the tensors one stream covers, in order (index, param), per device.
        self._layouts: dict[int, dict[torch.device, list[IndexedParam]]] = {}
        # (seed, device) → (generator, position of the next tensor it would draw).
        self._cursors: dict[tuple[int, torch.device], tuple[torch.Generator, int]] = {}

    def cover(self, params: Sequence[IndexedParam], seeds: Sequence[int]) -> None:
        """Declare that ``seeds`` draw z for ``params``, in index order."""
        by_device: dict[torch.device, list[IndexedParam]] = {}
        for item in sorted(params, key=lambda item: item.index):
            by_device.setdefault(item.param.device, []).append(item)
        for seed in seeds:
            self._layouts.pop(seed, None)
            self._layouts[seed] = by_device
            for device in by_device:
                self._cursors.pop((seed, device), None)
        while len(self._layouts) > _KEPT_SEEDS:
            old = next(iter(self._layouts))
            for device in self._layouts.pop(old):
                self._cursors.pop((old, device), None)

    def fill(self, out: torch.Tensor, seed: int, index: int) -> None:
        """Write tensor ``index``'s z under ``seed`` into ``out`` (shaped like the tensor)."""
        device = out.device
        layout = self._layouts.get(seed, {}).get(device)
        position = next(
            (p for p, item in enumerate(layout or ()) if item.index == index), None
        )
        if position is None:
            raise RuntimeError(
                f"distribution 'mezo': tensor {index} was not declared for seed {seed} "
                "(the estimator declares a step's tensors with DirectionSampler.cover)"
            )
        generator, next_position = self._cursors.get((seed, device), (None, 0))
        if generator is None or next_position > position:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
            next_position = 0
        for skipped in layout[next_position:position]:
            param = skipped.param
            torch.empty(param.numel(), dtype=param.dtype, device=device).normal_(
                generator=generator
            )
        out.normal_(generator=generator)
        self._cursors[(seed, device)] = (generator, position + 1)
