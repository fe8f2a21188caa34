"""Seeded random directions z, regenerated on demand instead of stored.

A zeroth-order estimate is ĝ = Σ_k c_k · z_k. Storing z_k would cost a copy of the model per
query, so zotune keeps only the seed of each z_k and regenerates it, one bounded chunk at a
time, whenever a pass over the parameters needs it (perturb, restore, update).

z for (query seed, tensor index, chunk index) is a pure function of those integers: a local
``torch.Generator`` on the tensor's device is re-seeded for every chunk, so

* the global RNG (dropout, data order) is never touched;
* the same chunk comes out bit-identical in every pass;
* the scratch memory is one chunk (``chunk_numel`` elements), not one tensor, so the largest
  tensor of the model (often the embedding) costs no extra buffer of its own size.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

DISTRIBUTIONS = ("gaussian", "rademacher")

# 2**20 elements (4 MiB in fp32): large enough that per-chunk Python overhead is negligible,
# small enough that the scratch buffer is invisible next to the model.
DEFAULT_CHUNK_NUMEL = 1 << 20

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """Hash integers into one 63-bit seed; distinct tuples give unrelated seeds."""
    state = 0
    for part in parts:
        state = _splitmix64(state ^ (part & _MASK64))
    return state >> 1


class DirectionSampler:
    """Regenerates direction chunks z for a parameter tensor from a seed.

    ``gaussian`` draws z ~ N(0, I) (E[zzᵀ] = I); ``rademacher`` draws each entry from {−1, +1}
    with equal probability (also E[zzᵀ] = I, and cheaper to sample).
    """

    def __init__(
        self, distribution: str = "gaussian", chunk_numel: int = DEFAULT_CHUNK_NUMEL
    ) -> None:
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"Unknown direction distribution: {distribution!r} (choose from {DISTRIBUTIONS})"
            )
        if not isinstance(chunk_numel, int) or chunk_numel < 1:
            raise ValueError(f"Invalid chunk_numel: {chunk_numel} (must be a positive int)")
        self.distribution = distribution
        self.chunk_numel = chunk_numel
        self._generators: dict[torch.device, torch.Generator] = {}
        self._scratch: dict[tuple[torch.device, torch.dtype, int], torch.Tensor] = {}

    def views(self, param: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(chunk_index, view)`` pairs whose views cover ``param`` in place.

        A non-contiguous tensor cannot be sliced flat, so it comes out as one chunk.
        """
        if not param.is_contiguous():
            yield 0, param
            return
        flat = param.view(-1)
        for chunk, start in enumerate(range(0, flat.numel(), self.chunk_numel)):
            yield chunk, flat[start : start + self.chunk_numel]

    def draw(
        self, like: torch.Tensor, seed: int, index: int, chunk: int, slot: int = 0
    ) -> torch.Tensor:
        """z for chunk ``chunk`` of tensor ``index`` under query seed ``seed``.

        The result lives in scratch buffer ``slot`` (shaped like ``like``) and stays valid
        until the next draw into the same slot; callers needing two at once use two slots.
        """
        z = self._scratch_for(like, slot)
        self._fill(z, mix_seed(seed, index, chunk))
        return z

    def scratch(self, like: torch.Tensor, slot: int) -> torch.Tensor:
        """An uninitialised scratch buffer shaped like ``like`` (reused across calls)."""
        return self._scratch_for(like, slot)

    def direction(self, param: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        """The whole direction for ``param`` as a new tensor (Forward-Grad needs it whole)."""
        z = torch.empty_like(param, memory_format=torch.contiguous_format)
        for chunk, view in self.views(z):
            self._fill(view, mix_seed(seed, index, chunk))
        return z

    def _fill(self, out: torch.Tensor, seed: int) -> None:
        generator = self._generators.get(out.device)
        if generator is None:
            generator = self._generators[out.device] = torch.Generator(device=out.device)
        generator.manual_seed(seed)
        if self.distribution == "gaussian":
            out.normal_(generator=generator)
        else:
            out.random_(0, 2, generator=generator).mul_(2).sub_(1)

    def _scratch_for(self, like: torch.Tensor, slot: int) -> torch.Tensor:
        key = (like.device, like.dtype, slot)
        buffer = self._scratch.get(key)
        if buffer is None or buffer.numel() < like.numel():
            buffer = self._scratch[key] = torch.empty(
                like.numel(), dtype=like.dtype, device=like.device
            )
        return buffer[: like.numel()].view(like.shape)
