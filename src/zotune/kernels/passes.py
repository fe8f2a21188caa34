"""The bf16 passes of a ZO step as calls of the fused kernel (:mod:`zotune.kernels`).

A pass is described chunk by chunk, exactly as the torch path cuts it: chunk c of tensor i
under query seed s reads the noise table from offset ``mix_seed(s, i, c) mod N`` with sign
bit 62 of that hash (:class:`zotune.estimators.directions.DirectionSampler`, ``table``), and
its rounding bits from ``mix_seed(rounding seed, i, c) mod M``
(:mod:`zotune.optim.stochastic_rounding`). So the fused path draws the same z and the same bits
as the torch one; only the fp32 arithmetic of a move (one fma) may differ in its last bit.

A sampler whose chunks carry a mask m (Sparse-MeZO's m ⊙ z) hands it over bit-packed
(:meth:`DirectionSampler.packed_mask`), and the kernel multiplies each z by its bit. A sampler
whose matrices move along low-rank products (LOZO, SubZero) hands over their factors
(:meth:`DirectionSampler.low_rank_factors`), and a second kernel forms z = σ L R element by
element in the pass (:func:`fused_factored_pass_`) instead of as an fp32 block per chunk,
rounded into a bf16 scratch and added by torch, once per leg.

Only bf16 CPU tensors that are contiguous and use a sampler that allows it are fused
(:func:`fused_passes_`); everything else keeps the torch ops.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..estimators.directions import DirectionSampler, IndexedParam, chunk_hashes, noise_table
from . import MAX_TERMS, library

_SIGN_BIT = 62


@functools.lru_cache(maxsize=16384)
def _hashes(seed: int, index: int, count: int) -> tuple[int, ...]:
    return tuple(chunk_hashes(seed, index, count))


def split_fusable(
    params: Sequence[IndexedParam], sampler: DirectionSampler
) -> tuple[list[IndexedParam], list[IndexedParam]]:
    """(tensors the fused kernel moves, the others): bf16, CPU, contiguous, table directions
    (masked or not) of a sampler that allows it (:meth:`DirectionSampler.fuses_table_slices`)."""
    if (
        not sampler.fuses_table_slices()
        or sampler.kind(torch.device("cpu")) != "table"
        or not any(item.param.dtype == torch.bfloat16 for item in params)
        or library() is None
    ):
        return [], list(params)
    fused, rest = [], []
    for item in params:
        param = item.param
        ok = (param.dtype == torch.bfloat16 and param.device.type == "cpu"
              and param.is_contiguous())
        (fused if ok else rest).append(item)
    return fused, rest


@dataclass(frozen=True)
class FactoredParam:
    """A tensor the factored kernel moves, with its direction's checked factors (L, R, σ)
    under each seed of the pass, in the pass's order (:attr:`Pass.seeds`)."""

    item: IndexedParam
    factors: tuple[tuple[Tensor, Tensor, float], ...]


def split_factored(
    params: Sequence[IndexedParam], sampler: DirectionSampler, seeds: Sequence[int]
) -> tuple[list[FactoredParam], list[IndexedParam]]:
    """(tensors the factored kernel moves, with their factors; the others): bf16, CPU,
    contiguous, and drawn as low-rank products under every one of ``seeds`` (at most MAX_TERMS
    distinct ones)."""
    distinct = list(dict.fromkeys(seeds))
    if not distinct or len(distinct) > MAX_TERMS or library() is None:
        return [], list(params)
    fused, rest = [], []
    for item in params:
        param = item.param
        factors = None
        if (param.dtype == torch.bfloat16 and param.device.type == "cpu"
                and param.is_contiguous()):
            factors = tuple(_factors(sampler, seed, item) for seed in distinct)
        if factors is not None and all(f is not None for f in factors):
            fused.append(FactoredParam(item, factors))
        else:
            rest.append(item)
    return fused, rest


def _factors(sampler: DirectionSampler, seed: int, item: IndexedParam):
    """(L, R, σ) of ``item``'s direction under ``seed`` as the kernel reads them (fp32 CPU,
    row-major, L R of the tensor's size), or None."""
    factors = sampler.low_rank_factors(seed, item.index)
    if factors is None:
        return None
    left, right, sigma = factors
    if (left.dtype != torch.float32 or right.dtype != torch.float32
            or left.device.type != "cpu" or right.device.type != "cpu"
            or left.shape[1] != right.shape[0]
            or left.shape[0] * right.shape[1] != item.param.numel()):
        return None
    return left.contiguous(), right.contiguous(), sigma


@dataclass(frozen=True)
class Pass:
    """One pass: θ ← SR(κ·L(θ) + Σ_moves α·z), or θ ← L(θ) without ``rounding``, where L
    applies each leg (seed, scale) as its own round-to-nearest move θ ← rnd(θ + scale·z).
    ``rounding`` = (int32 table of 16-bit values, rounding seed)."""

    legs: Sequence[tuple[int, float]]
    moves: Sequence[tuple[int, float]] = ()
    rounding: tuple[Tensor, int] | None = None
    keep: float = 1.0

    @property
    def update(self) -> bool:
        return self.rounding is not None

    @property
    def applied_moves(self) -> Sequence[tuple[int, float]]:
        return self.moves if self.update else ()

    @property
    def seeds(self) -> list[int]:
        """The distinct seeds whose directions the pass reads, in order."""
        return list(dict.fromkeys(seed for seed, _ in [*self.legs, *self.applied_moves]))


def fused_passes_(
    params: Sequence[IndexedParam], sampler: DirectionSampler, work: Pass
) -> list[IndexedParam]:
    """``work`` over the tensors either kernel can move; the others are returned, for the
    torch ops."""
    fused, rest = split_fusable(params, sampler)
    fused_pass_(fused, sampler, work)
    factored, rest = split_factored(rest, sampler, work.seeds)
    fused_factored_pass_(factored, sampler.chunk_numel, work)
    return rest


def split_hessian(
    params: Sequence[IndexedParam], sampler: DirectionSampler, hessians: Sequence[Tensor]
) -> tuple[list[int], list[int]]:
    """(positions in ``params`` the HiZOO kernel moves, the others): the tensors the table
    kernel takes (:func:`split_fusable`), unmasked, whose H (``hessians``, aligned with
    ``params``) is a contiguous fp32 CPU tensor of their size."""
    fused = {id(item) for item in split_fusable(params, sampler)[0]}
    chosen, rest = [], []
    for position, (item, hessian) in enumerate(zip(params, hessians, strict=True)):
        count = -(-item.param.numel() // sampler.chunk_numel)
        ok = (id(item) in fused and hessian.dtype == torch.float32
              and hessian.device.type == "cpu" and hessian.is_contiguous()
              and hessian.numel() == item.param.numel()
              and all(sampler.packed_mask(item.index, c) is None for c in range(count)))
        (chosen if ok else rest).append(position)
    return chosen, rest


@dataclass(frozen=True)
class HessianUpdate:
    """HiZOO's update in the restoring pass (:mod:`zotune.optim.hessian`):
    H ← H·((1 − α) + α·curvature·z²), θ ← SR(θ − lr·(slope·z/√H + λθ)) with the bits of
    ``rounding`` = (table, seed)."""

    smooth: float
    curvature: float
    slope: float
    lr: float
    decay: float
    rounding: tuple[Tensor, int]


def fused_hessian_pass_(
    items: Sequence[IndexedParam],
    hessians: Sequence[Tensor],
    sampler: DirectionSampler,
    seed: int,
    legs: Sequence[float],
    update: HessianUpdate | None = None,
) -> None:
    """θ ← L(θ) along d = bf16(z/√H), L applying each leg scale s as θ ← rnd(θ + s·d), then
    ``update`` if given, in one sweep of the HiZOO kernel over ``items`` (from
    :func:`split_hessian`; ``hessians`` aligned with them, H of the step's start)."""
    if not items:
        return
    lib = library()
    pointers, lengths, where, table, mask = _table_chunks(items, sampler)
    _, leg_scales = _directions([(seed, s) for s in legs], where, mask, legs=True)
    offsets, slopes = _directions([(seed, update.slope if update else 1.0)], where, mask,
                                  legs=False)
    hessian_pointers = []
    for item, hessian in zip(items, hessians, strict=True):
        count = -(-item.param.numel() // sampler.chunk_numel)
        hessian_pointers.extend(hessian.data_ptr() + 4 * chunk * sampler.chunk_numel
                                for chunk in range(count))
    bits_table, bits_offsets = _rounding_bits(where, update.rounding if update else None)
    arrays = {
        "pointers": np.asarray(pointers, dtype=np.uint64),
        "hessians": np.asarray(hessian_pointers, dtype=np.uint64),
        "lengths": np.asarray(lengths, dtype=np.int64),
        "offsets": np.ascontiguousarray(offsets[:, 0]),
        "slopes": np.ascontiguousarray(slopes[:, 0]),
    }
    a = {name: array.ctypes.data for name, array in arrays.items()}  # arrays: alive till the end
    smooth = update.smooth if update else 0.0
    lib.zotune_bf16_hessian_pass(
        len(where), a["pointers"], a["hessians"], a["lengths"], table.data_ptr(), mask,
        a["offsets"], len(legs), leg_scales.ctypes.data, a["slopes"], int(update is not None),
        smooth * (update.curvature if update else 0.0), 1.0 - smooth,
        update.decay if update else 0.0, update.lr if update else 0.0,
        bits_table.data_ptr(), bits_table.numel() - 1,
        bits_offsets.ctypes.data, torch.get_num_threads(),
    )


def _chunks(items: Sequence[IndexedParam], chunk_numel: int) -> tuple[list, list, list]:
    """Per chunk: its data pointer, its length, and (tensor index, chunk index, count)."""
    pointers, lengths, where = [], [], []
    for item in items:
        param = item.param
        numel, base, size = param.numel(), param.data_ptr(), param.element_size()
        count = -(-numel // chunk_numel)
        for chunk in range(count):
            start = chunk * chunk_numel
            pointers.append(base + start * size)
            lengths.append(min(chunk_numel, numel - start))
            where.append((item.index, chunk, count))
    return pointers, lengths, where


def _table_chunks(items: Sequence[IndexedParam], sampler: DirectionSampler):
    """:func:`_chunks` of ``items``, the bf16 noise table the kernels read z from, and its
    index mask."""
    table = noise_table(sampler.table_numel, torch.device("cpu"), torch.bfloat16)
    return *_chunks(items, sampler.chunk_numel), table, sampler.table_numel - 1


def _directions(moves, where, mask: int, legs: bool) -> tuple[np.ndarray, np.ndarray]:
    """[chunks, moves] table offsets and signed fp32 scales of ``moves`` = [(seed, scale)].

    A leg's scale is rounded to bf16 first, as torch's ``bf16.add_(z, alpha=scale)`` rounds
    its scalar: scale·z is then exact in fp32 and a leg rounds once, which is what makes
    the way back from θ + εz land on θ (``estimators.base.rounds_coarsely``).
    """
    offsets = np.empty((len(where), len(moves)), dtype=np.int64)
    scales = np.empty((len(where), len(moves)), dtype=np.float32)
    for k, (seed, scale) in enumerate(moves):
        if legs:
            scale = _as_bf16(scale)
        for row, (index, chunk, count) in enumerate(where):
            h = _hashes(seed, index, count)[chunk]
            offsets[row, k] = h & mask
            scales[row, k] = -scale if h >> _SIGN_BIT else scale
    return offsets, scales


def _as_bf16(scale: float) -> float:
    return torch.tensor(scale, dtype=torch.bfloat16).item()


def _rounding_bits(where, rounding: tuple[Tensor, int] | None) -> tuple[Tensor, np.ndarray]:
    """The rounding table and each chunk's offset into it (zeros and any table without
    ``rounding``: the kernel then reads no bits)."""
    offsets = np.zeros(len(where), dtype=np.int64)
    if rounding is None:
        return torch.zeros(1, dtype=torch.int32), offsets
    table, seed = rounding
    for row, (index, chunk, count) in enumerate(where):
        offsets[row] = _hashes(seed, index, count)[chunk] & (table.numel() - 1)
    return table, offsets


def fused_pass_(items: Sequence[IndexedParam], sampler: DirectionSampler, work: Pass) -> None:
    """``work`` in one sweep of the table kernel over ``items`` (from :func:`split_fusable`)."""
    if not items:
        return
    lib = library()
    pointers, lengths, where, table, mask = _table_chunks(items, sampler)
    leg_offsets, leg_scales = _directions(work.legs, where, mask, legs=True)
    move_offsets, move_scales = _directions(work.applied_moves, where, mask, legs=False)
    bits_table, bits_offsets = _rounding_bits(where, work.rounding)
    masks = [sampler.packed_mask(index, chunk) for index, chunk, _ in where]
    mask_array = np.asarray([0 if m is None else m.data_ptr() for m in masks], dtype=np.uint64)
    pointer_array = np.asarray(pointers, dtype=np.uint64)
    length_array = np.asarray(lengths, dtype=np.int64)
    lib.zotune_bf16_pass(
        len(where), pointer_array.ctypes.data, length_array.ctypes.data,
        table.data_ptr(), mask, len(work.legs), leg_offsets.ctypes.data, leg_scales.ctypes.data,
        move_offsets.shape[1], move_offsets.ctypes.data, move_scales.ctypes.data,
        int(work.update), float(work.keep), bits_table.data_ptr(), bits_table.numel() - 1,
        bits_offsets.ctypes.data, mask_array.ctypes.data if mask_array.any() else None,
        torch.get_num_threads(),
    )


def fused_factored_pass_(
    entries: Sequence[FactoredParam], chunk_numel: int, work: Pass
) -> None:
    """``work`` in one sweep of the factored kernel over ``entries`` (from
    :func:`split_factored` under ``work.seeds``): z = bf16(σ · L R)."""
    if not entries:
        return
    lib = library()
    seeds = work.seeds
    term = {seed: t for t, seed in enumerate(seeds)}
    legs, moves = work.legs, work.applied_moves
    pointers, lengths, where = _chunks([entry.item for entry in entries], chunk_numel)
    lefts, rights, sigmas, columns, ranks = [], [], [], [], []
    for entry in entries:
        factors = entry.factors  # ``entries`` holds them alive until the kernel returns
        count = -(-entry.item.param.numel() // chunk_numel)
        for _ in range(count):
            lefts.extend(left.data_ptr() for left, _, _ in factors)
            rights.extend(right.data_ptr() for _, right, _ in factors)
            sigmas.extend(sigma for _, _, sigma in factors)
            columns.append(factors[0][1].shape[1])
            ranks.append(factors[0][0].shape[1])
    starts = np.asarray([chunk * chunk_numel for _, chunk, _ in where], dtype=np.int64)
    # A leg's scale rounded to bf16, as torch's bf16.add_(z, alpha=scale) rounds it.
    leg_scales = np.asarray([_as_bf16(a) for _, a in legs], dtype=np.float32)
    bits_table, bits_offsets = _rounding_bits(where, work.rounding)
    arrays = {
        "pointers": np.asarray(pointers, dtype=np.uint64),
        "lengths": np.asarray(lengths, dtype=np.int64),
        "columns": np.asarray(columns, dtype=np.int64),
        "ranks": np.asarray(ranks, dtype=np.int64),
        "lefts": np.asarray(lefts, dtype=np.uint64),
        "rights": np.asarray(rights, dtype=np.uint64),
        "sigmas": np.asarray(sigmas, dtype=np.float32),
        "leg_terms": np.asarray([term[s] for s, _ in legs], dtype=np.int64),
        "move_terms": np.asarray([term[s] for s, _ in moves], dtype=np.int64),
        "move_scales": np.asarray([a for _, a in moves], dtype=np.float32),
    }
    a = {name: array.ctypes.data for name, array in arrays.items()}
    lib.zotune_bf16_factored_pass(
        len(where), a["pointers"], a["lengths"], starts.ctypes.data, a["columns"], a["ranks"],
        len(seeds), a["lefts"], a["rights"], a["sigmas"], len(legs), a["leg_terms"],
        leg_scales.ctypes.data, len(moves), a["move_terms"], a["move_scales"], int(work.update),
        float(work.keep), bits_table.data_ptr(), bits_table.numel() - 1, bits_offsets.ctypes.data,
        torch.get_num_threads(),
    )


def fused_pack_small(view: Tensor, threshold: float) -> Tensor | None:
    """``pack_bits(view.abs() <= threshold)`` (:mod:`zotune.enhance.sparse`) in one sweep for a
    contiguous bf16 CPU chunk, the threshold rounded to bf16 as torch's comparison rounds it;
    None (nothing done) if not fusable."""
    lib = library() if view.dtype == torch.bfloat16 else None
    if lib is None or view.device.type != "cpu" or not view.is_contiguous():
        return None
    packed = torch.empty(-(-view.numel() // 8), dtype=torch.uint8)
    lib.zotune_bf16_pack_small(view.data_ptr(), view.numel(), _as_bf16(threshold),
                               packed.data_ptr())
    return packed


def fused_add_rounded_(view: Tensor, update: Tensor, alpha: float, bits_table: Tensor,
                       bits_offset: int) -> bool:
    """view ← SR(view + α·update) for a contiguous bf16 CPU chunk and a contiguous fp32
    update, with the bits read from ``bits_offset``; False (nothing done) if not fusable."""
    lib = library() if view.dtype == torch.bfloat16 else None
    if (lib is None or view.device.type != "cpu" or update.dtype != torch.float32
            or not view.is_contiguous() or not update.is_contiguous()):
        return False
    lib.zotune_bf16_add_rounded(
        view.data_ptr(), update.data_ptr(), view.numel(), float(alpha),
        bits_table.data_ptr(), bits_table.numel() - 1, bits_offset, torch.get_num_threads(),
    )
    return True


def fused_adam_rounded_(
    view: Tensor, g: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *, lr: float,
    betas: tuple[float, float], eps: float, step: int, decay: float, bits_table: Tensor,
    bits_offset: int,
) -> bool:
    """One Adam step (:class:`zotune.optim.rules.Adam`, then decoupled decay ``decay``) of a
    contiguous bf16 CPU chunk from its fp32 gradient ``g``, the fp32 moments updated in
    place, the weights stochastically rounded with the bits from ``bits_offset``; False
    (nothing done) if not fusable."""
    lib = library() if view.dtype == torch.bfloat16 else None
    tensors = (g, exp_avg, exp_avg_sq)
    if (lib is None or view.device.type != "cpu" or not view.is_contiguous()
            or any(t.dtype != torch.float32 or not t.is_contiguous() for t in tensors)):
        return False
    beta1, beta2 = betas
    lib.zotune_bf16_adam_rounded(
        view.data_ptr(), g.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), view.numel(),
        float(lr), float(1 - beta1), float(beta2), float(1 - beta2), float(1 - beta1**step),
        float((1 - beta2**step) ** 0.5), float(eps), float(decay),
        bits_table.data_ptr(), bits_table.numel() - 1, bits_offset, torch.get_num_threads(),
    )
    return True
