"""Seeded random directions z, regenerated on demand instead of stored.

A zeroth-order estimate is ĝ = Σ_k c_k · z_k. Storing z_k would cost a copy of the model per
query, so zotune keeps only the seed of each z_k and regenerates it, one bounded chunk at a
time, whenever a pass over the parameters needs it (perturb, restore, update).

z for (query seed, tensor index, chunk index) is a pure function of those integers, so

* the global RNG (dropout, data order) is never touched;
* the same chunk comes out bit-identical in every pass;
* the extra memory is bounded by a chunk (or by the noise table), never by a tensor, so the
  largest tensor of the model (often the embedding) costs no extra buffer of its own size.

Two ways of producing a chunk of z:

* **sampled** (``gaussian``, ``rademacher``): a local ``torch.Generator`` on the tensor's
  device is re-seeded with ``mix_seed(seed, index, chunk)`` and fills a scratch chunk. On CPU
  this dominates the non-forward cost of a step (≈ 0.45 s per pass over 125M fp32 parameters
  against ≈ 0.03 s for the add itself).
* **table** (Salimans et al., 2017, *Evolution Strategies as a Scalable Alternative to
  Reinforcement Learning*): one precomputed table T of N standard-normal-like values per
  device and dtype; the chunk is a signed slice of it, z = s · T[o : o + n] (read circularly),
  with offset o and sign s taken from the bits of ``mix_seed(seed, index, chunk)``. A pass
  is then one in-place axpy per chunk, with no sampling and no copy.

``auto`` (the default) picks ``table`` for CPU tensors and ``gaussian`` elsewhere (CUDA's
Philox generator samples at memory speed, so a table buys nothing there). Runs stay
reproducible for a given device type; the CPU and CUDA trajectories of a seed differ, as
they already do with sampled directions because the two generators differ.

``mezo`` draws MeZO's own stream instead (:mod:`zotune.estimators.mezo_stream`): step seeds
from numpy, one ``torch.normal`` per whole tensor in parameter order, so a run can follow a
MeZO run step for step. It is sequential rather than a pure function of (seed, tensor,
chunk), and needs the estimator to declare each seed's tensors (:meth:`DirectionSampler.cover`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .mezo_stream import MeZOStream, mezo_step_seed

DISTRIBUTIONS = ("auto", "gaussian", "rademacher", "table", "mezo")

# 2**20 elements (4 MiB in fp32): large enough that per-chunk Python overhead is negligible,
# small enough that the scratch buffer is invisible next to the model.
DEFAULT_CHUNK_NUMEL = 1 << 20

# 2**22 values (16 MiB in fp32, 8 MiB in fp16/bf16): at most ~2.5% of the inference peak of
# an OPT-125m-sized model, and four times the chunk, so most chunks are one contiguous slice.
DEFAULT_TABLE_NUMEL = 1 << 22

# The table never depends on the optimizer's seed (that only moves the offsets), so every
# run, device and process reads the same table.
TABLE_SEED = 0x5A1_2017

# "Chunks" of mezo directions: whole tensors, as MeZO draws them.
_WHOLE_TENSOR = 1 << 62

# Table pieces are kept for this many seeds: a step's q queries plus the previous step's.
_PLANNED_SEEDS = 4

_MASK64 = (1 << 64) - 1
_SIGN_BIT = 62  # mix_seed is 63 bits wide: the top bit signs, the low bits give the offset


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


def chunk_hashes(seed: int, index: int, count: int) -> list[int]:
    """``[mix_seed(seed, index, c) for c in range(count)]``, sharing the common prefix."""
    prefix = _splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64))
    return [_splitmix64(prefix ^ chunk) >> 1 for chunk in range(count)]


_TABLES: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}


def noise_table(numel: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """The shared noise table T of ``numel`` values (built once per device and dtype).

    T is a *spectrally whitened* standard normal sequence: draw x ~ N(0, I_N) from
    :data:`TABLE_SEED`, keep the phases of its DFT and set every magnitude to √N::

        T = IDFT( √N · X / |X| ),     X = DFT(x)

    Its circular autocorrelation is then exactly a delta,
    r(k) = (1/N) Σ_t T[t] T[(t + k) mod N] = [k = 0], while each value stays approximately
    N(0, 1) (a sum of N/2 random-phase cosines; kurtosis ≈ 3). That is what makes slices at a
    uniform random offset isotropic: E_o[T[o + i] T[o + j]] = r(j − i) = δ_ij for any slice
    length n ≤ N. A raw Gaussian table has |r(k)| ≈ N^(−1/2) at every lag, which adds up over
    a chunk: with n = N/4 the expected direction E[(gᵀz) z] would carry an error orthogonal to
    g of about √(n/N) = 50% of |g|; whitening brings it to rounding level.

    The table is computed in float64 on the CPU and then cast, so every device sees the same
    values (up to the dtype's rounding).
    """
    device = torch.device(device)
    key = (numel, device, dtype)
    table = _TABLES.get(key)
    if table is None:
        generator = torch.Generator().manual_seed(TABLE_SEED)
        x = torch.randn(numel, generator=generator, dtype=torch.float64).numpy()
        # numpy's FFT, not torch's: torch's CPU FFT (MKL) keeps ≈ 2.4 bytes per table value
        # of workspace resident after the transform (36 MB for the default table), memory
        # a ZO step is meant not to have.
        phase = np.angle(np.fft.rfft(x))
        flat = math.sqrt(numel) * (np.cos(phase) + 1j * np.sin(phase))
        white = torch.from_numpy(np.fft.irfft(flat, n=numel))
        table = _TABLES[key] = white.to(device=device, dtype=dtype)
    return table


def circular_slices(table: Tensor, offset: int, numel: int) -> Iterator[tuple[int, Tensor]]:
    """``(start, slice)`` pieces of ``numel`` values of ``table`` read from ``offset`` on,
    wrapping at its end: ``start`` is where each piece goes in the output."""
    filled = 0
    while filled < numel:
        take = min(numel - filled, table.numel() - offset)
        yield filled, table[offset : offset + take]
        filled, offset = filled + take, 0


def _is_power_of_two(value: object) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value > 1
        and not (value & (value - 1))
    )


@dataclass(frozen=True)
class IndexedParam:
    """A trainable tensor and its position in the optimizer's flattened parameter list.

    The index (not the tensor's identity) seeds its directions, so a resumed or re-created
    optimizer regenerates the same z for the same tensor.
    """

    index: int
    param: torch.Tensor


class DirectionSampler:
    """Regenerates direction chunks z for a parameter tensor from a seed.

    ``gaussian``: z ~ N(0, I), sampled (E[zzᵀ] = I).

    ``rademacher``: each entry uniform on {−1, +1}, sampled (E[zzᵀ] = I).

    ``table``: chunk c of tensor i under seed s is, with h = mix_seed(s, i, c),
    o = h mod N and σ = ±1 from bit 62 of h::

        z[t] = σ · T[(o + t) mod N],   t < n ≤ N

    With o uniform on [0, N) and σ an independent fair sign: E[z] = 0 and
    E[z zᵀ] = (r(j − i))_ij = I exactly, because T is whitened (:func:`noise_table`);
    different chunks, tensors, queries and steps have independent signs, so
    E[z_a z_bᵀ] = 0 between them. An RGE estimate built on it is therefore unbiased for the
    same smoothed gradient as with Gaussian z, up to the 4th-moment terms (T's values are
    N(0, 1) only approximately). ``chunk_numel`` is capped at ``table_numel``, so no value
    repeats within a chunk.

    ``auto``: ``table`` for CPU tensors, ``gaussian`` on other devices.

    ``mezo``: MeZO's stream (:mod:`zotune.estimators.mezo_stream`): z ~ N(0, I) drawn whole
    per tensor, in order, from a generator seeded with the step's seed; step seeds come from
    :meth:`step_seed` and query seeds from :meth:`query_seeds`, which the optimizer and the
    estimators ask the sampler for.
    """

    def __init__(
        self,
        distribution: str = "auto",
        chunk_numel: int = DEFAULT_CHUNK_NUMEL,
        table_numel: int = DEFAULT_TABLE_NUMEL,
    ) -> None:
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"Unknown direction distribution: {distribution!r} (choose from {DISTRIBUTIONS})"
            )
        if isinstance(chunk_numel, bool) or not isinstance(chunk_numel, int) or chunk_numel < 1:
            raise ValueError(f"Invalid chunk_numel: {chunk_numel} (must be a positive int)")
        if not _is_power_of_two(table_numel):
            raise ValueError(f"Invalid table_numel: {table_numel} (must be a power of two >= 2)")
        self.distribution = distribution
        # A chunk longer than the table would repeat its values, so table chunks are capped;
        # MeZO's z is drawn a whole tensor at a time, so it has no chunks.
        self.chunk_numel = {
            "gaussian": chunk_numel, "rademacher": chunk_numel, "mezo": _WHOLE_TENSOR
        }.get(distribution, min(chunk_numel, table_numel))
        self._mezo = MeZOStream() if distribution == "mezo" else None
        self.table_numel = table_numel
        self._generators: dict[torch.device, torch.Generator] = {}
        self._scratch: dict[tuple[torch.device, torch.dtype, int], torch.Tensor] = {}
        self._plans: dict[int, dict[tuple, list[tuple[bool, Tensor, Tensor]]]] = {}

    def set_step(self, step: int) -> None:
        """Called before each step's first pass with the number of steps taken; samplers
        whose directions change on a schedule (sparse masks, low-rank bases) read it."""

    def update_terms(
        self, terms: Sequence[tuple[int, float]], params: Sequence[IndexedParam]
    ) -> Sequence[tuple[int, float]]:
        """The (seed, coefficient) terms the update applies, given the probed estimate's.

        The update is θ ← θ − lr · rule(Σ c z(s)) over these terms: the probed ones here. A
        sampler that keeps state in its own factor space (LOZO-M's momentum) or whose
        reference code updates along other draws than it probed returns others, under seeds
        it can draw. Called once per update of ``params``, after the probes."""
        return terms

    def fuses_table_slices(self) -> bool:
        """Whether the fused bf16 passes (:mod:`zotune.kernels`) may draw this sampler's table
        directions themselves, as table slices times :meth:`packed_mask`: only where the class
        says so, since a subclass that draws other directions would be moved along the wrong
        ones."""
        return type(self) is DirectionSampler

    def packed_mask(self, index: int, chunk: int) -> Tensor | None:
        """The 0/1 mask that multiplies chunk ``chunk`` of tensor ``index`` in the current
        step, bit-packed (value k of byte j at bit k of value 8j + k), or None: unmasked."""
        return None

    def low_rank_factors(self, seed: int, index: int) -> tuple[Tensor, Tensor, float] | None:
        """(L, R, σ) with tensor ``index``'s direction under ``seed`` equal to σ · L R
        (row-major, flattened like the tensor), for the fused passes to form it themselves;
        None where it is not such a product (the default)."""
        return None

    def state_dict(self) -> dict:
        """What a resumed run needs to draw the same directions (nothing here: they are
        functions of the seeds)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
    def step_seed(self, seed: int, step: int) -> int:
        """The seed of step ``step`` of a run seeded with ``seed``: a hash of the two, or
        for ``mezo`` the value MeZO's numpy stream draws for that step."""
        if self.distribution == "mezo":
            return mezo_step_seed(seed, step)
        return mix_seed(seed, step)

    def query_seeds(self, seed: int, q: int) -> tuple[int, ...]:
        """The seeds of the q directions drawn under ``seed`` (a step's or a block's); for
        ``mezo`` the first is ``seed`` itself, as MeZO's one query uses its step seed."""
        first = 1 if self.distribution == "mezo" else 0
        return (seed,) * first + tuple(mix_seed(seed, k) for k in range(first, q))

    def cover(self, params: Sequence[IndexedParam], seeds: Sequence[int]) -> None:
        """Declare the tensors whose directions ``seeds`` draw (before any pass draws them):
        ``mezo``'s stream runs through them in order; the other distributions need nothing."""
        if self._mezo is not None:
            self._mezo.cover(params, seeds)

    def kind(self, device: torch.device) -> str:
        """The distribution actually used for tensors on ``device`` (resolves ``auto``)."""
        if self.distribution == "auto":
            return "table" if device.type == "cpu" else "gaussian"
        return self.distribution

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

        The result lives in scratch buffer ``slot`` (shaped like ``like``), may be modified
        by the caller, and stays valid until the next draw into the same slot; callers
        needing two at once use two slots.
        """
        z = self._scratch_for(like, slot)
        self._fill(z, seed, index, chunk)
        return z

    def scratch(
        self, like: torch.Tensor, slot: int, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """An uninitialised scratch buffer shaped like ``like``, of ``like``'s dtype unless
        ``dtype`` is given (reused across calls)."""
        return self._scratch_for(like, slot, dtype)

    def direction(self, param: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        """The whole direction for ``param`` as a new tensor (Forward-Grad needs it whole)."""
        z = torch.empty_like(param, memory_format=torch.contiguous_format)
        for chunk, view in self.views(z):
            self._fill(view, seed, index, chunk)
        return z

    @torch.no_grad()
    def add_(self, params: Sequence[IndexedParam], seed: int, alpha: float) -> None:
        """θ ← θ + α · z(seed) for every tensor in ``params``: one pass, in place.

        Table chunks are added straight from the table with ``torch._foreach_add_``, one call
        per (device, dtype, sign) group, so many small tensors (LoRA, prefixes) cost one
        dispatch rather than one per tensor; sampled chunks are drawn and added one by one.
        """
        if alpha == 0.0:
            return
        groups: dict[tuple[torch.device, torch.dtype], tuple[list, list, list, list]] = {}
        for item in params:
            param = item.param
            if self.kind(param.device) != "table" or not param.is_contiguous():
                for chunk, view in self.views(param):
                    view.add_(self.draw(view, seed, item.index, chunk), alpha=alpha)
                continue
            lists = groups.get((param.device, param.dtype))
            if lists is None:
                lists = groups[(param.device, param.dtype)] = ([], [], [], [])
            for negative, view, values in self._segments(seed, item):
                lists[2 * negative].append(view)
                lists[2 * negative + 1].append(values)
        for pos_views, pos_values, neg_views, neg_values in groups.values():
            if pos_views:
                torch._foreach_add_(pos_views, pos_values, alpha=alpha)
            if neg_views:
                torch._foreach_add_(neg_views, neg_values, alpha=-alpha)

    def _segments(self, seed: int, item: IndexedParam) -> list[tuple[bool, Tensor, Tensor]]:
        """(negative, view, table slice) pieces covering ``item``: z = ±slice on each view.

        A step makes three passes with the same seed (perturb, perturb, restore + update), so
        the pieces are kept for the last few seeds instead of being hashed and sliced again.
        The key holds the tensor's storage address and size: a tensor whose storage was
        replaced never meets the views of the old one (those keep the old storage alive, so
        its address cannot be reused meanwhile).
        """
        param = item.param
        key = (item.index, param.data_ptr(), param.numel(), param.dtype, param.device)
        plans = self._plans.get(seed)
        if plans is None:
            plans = self._plans[seed] = {}
            if len(self._plans) > _PLANNED_SEEDS:
                del self._plans[next(iter(self._plans))]
        segments = plans.get(key)
        if segments is not None:
            return segments
        table = noise_table(self.table_numel, param.device, param.dtype)
        flat, size, mask = param.view(-1), self.chunk_numel, self.table_numel - 1
        numel, segments = flat.numel(), []
        for chunk, h in enumerate(chunk_hashes(seed, item.index, -(-numel // size))):
            start, negative, offset = chunk * size, bool(h >> _SIGN_BIT), h & mask
            length = min(size, numel - start)
            head = min(length, self.table_numel - offset)
            segments.append((negative, flat[start : start + head], table[offset : offset + head]))
            if head < length:  # the slice runs off the end of the table: wrap
                segments.append(
                    (negative, flat[start + head : start + length], table[: length - head])
                )
        plans[key] = segments
        return segments

    def _fill(self, out: torch.Tensor, seed: int, index: int, chunk: int) -> None:
        kind = self.kind(out.device)
        if self._mezo is not None:
            self._mezo.fill(out, seed, index)
            return
        if kind == "table":
            self._fill_from_table(out, mix_seed(seed, index, chunk))
            return
        generator = self._generators.get(out.device)
        if generator is None:
            generator = self._generators[out.device] = torch.Generator(device=out.device)
        generator.manual_seed(mix_seed(seed, index, chunk))
        if kind == "gaussian":
            out.normal_(generator=generator)
        else:
            out.random_(0, 2, generator=generator).mul_(2).sub_(1)

    def _fill_from_table(self, out: torch.Tensor, h: int) -> None:
        # Only a non-contiguous tensor (always a single chunk) can be longer than the table;
        # its z then repeats with period N, the one case where the slice is not isotropic.
        table = noise_table(self.table_numel, out.device, out.dtype)
        sign = -1.0 if h >> _SIGN_BIT else 1.0
        flat = out.view(-1)
        for start, values in circular_slices(table, h & (self.table_numel - 1), flat.numel()):
            torch.mul(values, sign, out=flat[start : start + values.numel()])

    def _scratch_for(
        self, like: torch.Tensor, slot: int, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        dtype = dtype or like.dtype
        key = (like.device, dtype, slot)
        buffer = self._scratch.get(key)
        if buffer is None or buffer.numel() < like.numel():
            buffer = self._scratch[key] = torch.empty(
                like.numel(), dtype=dtype, device=like.device
            )
        return buffer[: like.numel()].view(like.shape)
