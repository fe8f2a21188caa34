"""Stochastically rounded updates for fp16/bf16 weights: θ ← SR(κθ + Σ α_k z_k).

A zeroth-order update is far smaller than one ulp of a half-precision weight (lr·ĝ·z with
lr = 1e-6 against an ulp of about 1e-4 at |θ| = 0.03 in bf16), so rounding it to the nearest
value throws it away and the model stops learning. Stochastic rounding keeps it in
expectation: with ⌊x⌋ and ⌈x⌉ the two representable neighbours of x,

    SR(x) = ⌈x⌉ with probability p = (x − ⌊x⌋) / (⌈x⌉ − ⌊x⌋),  ⌊x⌋ otherwise,

so E[SR(x)] = ⌊x⌋ + p(⌈x⌉ − ⌊x⌋) = x: an update of 0.1 ulp moves a weight by one ulp once
every ten steps on average instead of never.

The update is computed chunk by chunk in fp32 (the chunks of the direction sampler, 2**20
values by default), so the extra memory is two chunk-sized buffers, never a parameter-sized
fp32 copy. On bf16 CPU weights (the default of ``make demo`` and the ``cpu`` suite) the
probes' restore and the rounded update are one fused sweep per chunk instead
(:mod:`zotune.kernels`: each element is widened, restored, moved in fp32 and rounded with
its 16-bit integer in registers), with the same directions and the same bits of
(seed, tensor, chunk) as below; the torch ops remain for fp16, other devices and machines
without a C compiler.

Random bits. Drawing 2**20 integers with ``torch.Generator`` costs ≈ 2.8 ms on this CPU
(≈ 0.4 s per pass over 135M weights, as much as a bf16 forward), so the bits come from a
table instead, read like the direction sampler's noise table: chunk c of tensor i under
rounding seed s takes the 2**20 consecutive table values from offset
``mix_seed(s, i, c) mod N``, read circularly. The table holds every 16-bit value exactly
N / 2**16 times in a fixed random order, so for a uniform offset each value of a chunk is
exactly uniform on [0, 2**16): the rounding is unbiased in expectation over the seed, and
the bits of different chunks, tensors and steps come from independent offsets. Given the
seed, the rounding is a pure function of (seed, tensor index, chunk): runs are reproducible,
a resumed run is identical, and data-parallel processes (same seed) stay in sync.

* **bf16** keeps the top 16 bits of an fp32 pattern. Adding a uniform 16-bit integer r to
  the pattern and clearing the low 16 bits carries into the kept part exactly when
  r ≥ 2**16 − (low bits), i.e. with probability (low bits)/2**16 = p: exact SR. The pattern
  is sign-magnitude, so negative values round their magnitude the same way; subnormals are
  handled by the same integer monotonicity; ±inf (low bits 0) stay put; values beyond the
  largest bf16 round to inf with probability p. NaNs stay NaN: arithmetic produces the
  default NaN 0x7FC00000 and a NaN read from bf16 has zero low bits, so the addition never
  carries out of the mantissa.
* **fp16** has a narrower exponent range than fp32, so the number of dropped bits varies
  (13 for normal values, more for subnormals). It rounds |x| to nearest, finds the other
  neighbour by stepping the fp16 bit pattern by one (patterns of non-negative fp16 values
  are ordered like the values, subnormals included), computes p in fp32 — exactly: |x| and
  its neighbours are within one fp16 ulp, a power of two — and rounds up when r < p·2**16.
  That is exact when p is a multiple of 2**−16, which holds for every |x| ≥ 2**−17; below
  that the bias is under 2**−16 of the smallest subnormal (2**−40 in absolute terms). The
  sign is reapplied with ``copysign`` (−0 stays −0). Values whose nearest fp16 is ±inf (or
  NaN) keep it, as round-to-nearest does; between 65504 and 65520 SR gives 65504.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..estimators.base import shift
from ..estimators.directions import DirectionSampler, circular_slices, mix_seed
from ..kernels.passes import Pass, fused_adam_rounded_, fused_add_rounded_, fused_passes_

if TYPE_CHECKING:
    from ..estimators.base import IndexedParam

ROUNDED_DTYPES = (torch.bfloat16, torch.float16)

# 2**20 values (4 MiB as int32): every 16-bit value 16 times, so a default chunk (2**20
# values) reads each value exactly 16 times; offsets stay uniform since N is a power of two.
ROUNDING_TABLE_NUMEL = 1 << 20

# The table's order never depends on a run's seed (that only moves the offsets).
ROUNDING_TABLE_SEED = 0x5_12_0_2024

# Separates the rounding seeds from the direction seeds derived from the same step seed.
_ROUNDING_SALT = 0x5C0_12D

_LOW_BITS = 16
_HIGH_MASK = -(1 << _LOW_BITS)  # 0xFFFF0000 as a signed int32

_TABLES: dict[torch.device, Tensor] = {}
_BUFFERS: dict[tuple[torch.device, torch.dtype, int], Tensor] = {}


def rounds_stochastically(dtype: torch.dtype) -> bool:
    """True for the dtypes whose updates this module rounds (fp16, bf16)."""
    return dtype in ROUNDED_DTYPES


def rounding_seed(*parts: int) -> int:
    """A rounding seed from integers that identify one update (e.g. its first query seed)."""
    return mix_seed(_ROUNDING_SALT, *parts)


def rounding_table(device: torch.device | str) -> Tensor:
    """The shared int32 table of random 16-bit values (each value N / 2**16 times)."""
    device = torch.device(device)
    table = _TABLES.get(device)
    if table is None:
        generator = torch.Generator().manual_seed(ROUNDING_TABLE_SEED)
        values = torch.arange(ROUNDING_TABLE_NUMEL, dtype=torch.int32) & ((1 << _LOW_BITS) - 1)
        order = torch.randperm(ROUNDING_TABLE_NUMEL, generator=generator)
        table = _TABLES[device] = values[order].to(device)
    return table


def _table_offset(seed: int, index: int, chunk: int) -> int:
    return mix_seed(seed, index, chunk) & (ROUNDING_TABLE_NUMEL - 1)


def random_bits(numel: int, seed: int, index: int, chunk: int, device: torch.device) -> Tensor:
    """``numel`` uniform 16-bit integers (int32) for chunk ``chunk`` of tensor ``index``.

    A view of the table where it does not wrap; a copy (into a scratch buffer) where it does.
    """
    table = rounding_table(device)
    offset = _table_offset(seed, index, chunk)
    if offset + numel <= ROUNDING_TABLE_NUMEL:
        return table[offset : offset + numel]
    bits = _buffer(numel, device, torch.int32, slot=1)
    for start, values in circular_slices(table, offset, numel):
        bits[start : start + values.numel()] = values
    return bits


@torch.no_grad()
def round_into_(target: Tensor, value: Tensor, seed: int, index: int, chunk: int) -> None:
    """target ← SR(value): ``target`` fp16/bf16, ``value`` fp32 of the same shape (clobbered).

    The random bits are those of (seed, index, chunk); see the module docstring for the
    scheme of each dtype.
    """
    if value.dtype != torch.float32:
        raise TypeError(f"round_into_ needs an fp32 value, got {value.dtype}")
    if not rounds_stochastically(target.dtype):
        raise TypeError(f"round_into_ rounds to fp16/bf16, not {target.dtype}")
    flat = value.reshape(-1)
    if target.dtype == torch.bfloat16:
        pattern = flat.view(torch.int32)
        table = rounding_table(value.device)
        # Piece by piece from the table: no copy of the bits where the read wraps.
        pieces = circular_slices(table, _table_offset(seed, index, chunk), flat.numel())
        for start, values in pieces:
            pattern[start : start + values.numel()].add_(values)
        pattern.bitwise_and_(_HIGH_MASK)
        target.copy_(flat.view(value.shape))  # exact: the low 16 bits are zero
        return
    bits = random_bits(flat.numel(), seed, index, chunk, value.device)
    target.copy_(_round_to_fp16(flat, bits).view(value.shape))


def _round_to_fp16(value: Tensor, bits: Tensor) -> Tensor:
    """SR(value) as fp16 (see the module docstring), ``bits`` uniform 16-bit integers."""
    magnitude = value.abs()
    nearest = magnitude.to(torch.float16)
    nearest_wide = nearest.float()
    pattern = nearest.view(torch.int16)
    # The other neighbour: one pattern down when nearest rounded up, one up otherwise.
    step = torch.where(nearest_wide > magnitude, -1, 1).to(torch.int16)
    other = (pattern + step).view(torch.float16).float()
    low, high = torch.minimum(nearest_wide, other), torch.maximum(nearest_wide, other)
    # p · 2**16, exact where it matters: both differences are exact in fp32.
    threshold = (magnitude - low).mul_(1 << _LOW_BITS).div_(high - low)
    rounded = torch.where(bits < threshold, high, low)
    rounded = torch.where(torch.isfinite(nearest_wide), rounded, nearest_wide)
    return torch.copysign(rounded, value).to(torch.float16)


@torch.no_grad()
def add_stochastically_(
    params: Sequence[IndexedParam],
    sampler: DirectionSampler,
    moves: Sequence[tuple[int, float]],
    seed: int,
    keep: float = 1.0,
) -> None:
    """θ ← SR(κ·θ + Σ_(s, α) α·z(s)) for every fp16/bf16 tensor in ``params``, in place.

    One pass per chunk: θ's chunk is widened to fp32, scaled by κ = ``keep`` (weight decay),
    the directions of ``moves`` are added in fp32, and the sum is rounded once with the bits
    of (``seed``, tensor index, chunk). The update is unbiased, E[θ_new] = κθ + Σ α z, and
    nothing of the update is lost to rounding however small it is.
    """
    moves = [(move_seed, alpha) for move_seed, alpha in moves if alpha != 0.0]
    if not moves and keep == 1.0:
        return
    for item in params:
        if not rounds_stochastically(item.param.dtype):
            raise TypeError(
                f"add_stochastically_ rounds fp16/bf16 tensors, got {item.param.dtype} "
                f"(tensor {item.index})"
            )
        for chunk, view in sampler.views(item.param):
            wide = _buffer(view.numel(), view.device, torch.float32).view(view.shape)
            wide.copy_(view)
            if keep != 1.0:
                wide.mul_(keep)
            for move_seed, alpha in moves:
                wide.add_(sampler.draw(view, move_seed, item.index, chunk), alpha=alpha)
            round_into_(view, wide, seed, item.index, chunk)


@torch.no_grad()
def apply_update_(
    params: Sequence[IndexedParam],
    sampler: DirectionSampler,
    moves: Sequence[tuple[int, float]],
    seed: int | None,
    keep: float = 1.0,
    legs: Sequence[tuple[int, float]] = (),
) -> None:
    """θ ← κ·θ + Σ α·z(s) on low-precision tensors: fp16/bf16 ones stochastically rounded
    under a ``seed``; without one (or in other dtypes) as round-to-nearest legs: κθ rounded,
    then one rounding per move (see ``estimators.base.rounds_coarsely``).

    ``legs`` (the probes' restore) are applied first, as :func:`shift` applies them. bf16
    CPU tensors take legs and update in one fused pass (:mod:`zotune.kernels`)."""
    rounded = [seed is not None and rounds_stochastically(i.param.dtype) for i in params]
    chosen = [item for item, r in zip(params, rounded, strict=True) if r]
    nearest = [item for item, r in zip(params, rounded, strict=True) if not r]
    shift(nearest, sampler, legs)
    if chosen:
        work = Pass([(s, a) for s, a in legs if a != 0.0],
                    [(s, alpha) for s, alpha in moves if alpha != 0.0],
                    (rounding_table(torch.device("cpu")), seed), keep)
        chosen = fused_passes_(chosen, sampler, work)
        shift(chosen, sampler, legs)
        add_stochastically_(chosen, sampler, moves, seed, keep)
    if keep != 1.0:
        for item in nearest:  # _foreach_mul_ would round κ itself to fp16/bf16
            item.param.mul_(keep)
    shift(nearest, sampler, moves)


@torch.no_grad()
def add_rounded_(view: Tensor, update: Tensor, alpha: float, seed: int, index: int,
                 chunk: int) -> None:
    """view ← SR(view + α·update) for one fp16/bf16 chunk (the update of a stateful rule)."""
    if fused_add_rounded_(view, update, alpha, rounding_table(view.device),
                          _table_offset(seed, index, chunk)):
        return
    wide = _buffer(view.numel(), view.device, torch.float32).view(view.shape)
    wide.copy_(view)
    wide.add_(update, alpha=alpha)
    round_into_(view, wide, seed, index, chunk)


def adam_rounded_(view: Tensor, g: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *,
                  lr: float, betas: tuple[float, float], eps: float, step: int, decay: float,
                  seed: int, index: int, chunk: int) -> bool:
    """view ← SR(view − lr·(Adam(g) + λ·view)) for one bf16 chunk in one fused pass, its
    moments updated in place, with the bits :func:`add_rounded_` would use; False (nothing
    done) where the kernel cannot run, and the caller takes the rule's torch ops."""
    return fused_adam_rounded_(
        view, g, exp_avg, exp_avg_sq, lr=lr, betas=betas, eps=eps, step=step, decay=decay,
        bits_table=rounding_table(view.device), bits_offset=_table_offset(seed, index, chunk),
    )


def _buffer(numel: int, device: torch.device, dtype: torch.dtype, slot: int = 0) -> Tensor:
    """A reused scratch buffer of at least ``numel`` values (one per device, dtype, slot)."""
    key = (device, dtype, slot)
    buffer = _BUFFERS.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = _BUFFERS[key] = torch.empty(numel, dtype=dtype, device=device)
    return buffer[:numel]
