"""The bf16 passes of a ZO step as calls of the fused kernel (:mod:`zotune.kernels`).

A pass is described chunk by chunk, exactly as the torch path cuts it: chunk c of tensor i
under query seed s reads the noise table from offset ``mix_seed(s, i, c) mod N`` with sign
bit 62 of that hash (:class:`zotune.estimators.directions.DirectionSampler`, ``table``), and
its rounding bits from ``mix_seed(rounding seed, i, c) mod M``
(:mod:`zotune.optim.stochastic_rounding`). So the fused path draws the same z and the same bits
as the torch one; only the fp32 arithmetic of a move (one fma) may differ in its last bit.

A sampler whose chunks carry a mask m (Sparse-MeZO's m ⊙ z) hands it over bit-packed
(:meth:`DirectionSampler.packed_mask`), and the kernel multiplies each z by its bit.

Only bf16 CPU tensors that are contiguous and use a table sampler that allows it are fused
(:func:`split_fusable`); everything else keeps the torch ops.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..estimators.directions import DirectionSampler, IndexedParam, chunk_hashes, noise_table
from . import library

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
            scale = torch.tensor(scale, dtype=torch.bfloat16).item()
        for row, (index, chunk, count) in enumerate(where):
            h = _hashes(seed, index, count)[chunk]
            offsets[row, k] = h & mask
            scales[row, k] = -scale if h >> _SIGN_BIT else scale
    return offsets, scales


def fused_pass_(
    items: Sequence[IndexedParam],
    sampler: DirectionSampler,
    legs: Sequence[tuple[int, float]],
    moves: Sequence[tuple[int, float]] = (),
    rounding: tuple[Tensor, int] | None = None,
    keep: float = 1.0,
) -> None:
    """θ ← SR(κ·L(θ) + Σ_moves α·z), or θ ← L(θ) without ``rounding``, in one pass, where
    L applies each leg (seed, scale) as its own round-to-nearest move θ ← rnd(θ + scale·z).

    ``rounding`` = (int32 table of 16-bit values, rounding seed); ``items`` from
    :func:`split_fusable`.
    """
    if not items:
        return
    lib = library()
    pointers, lengths, where = _chunks(items, sampler.chunk_numel)
    table = noise_table(sampler.table_numel, torch.device("cpu"), torch.bfloat16)
    mask = sampler.table_numel - 1
    leg_offsets, leg_scales = _directions(legs, where, mask, legs=True)
    update = rounding is not None
    move_offsets, move_scales = _directions(moves if update else (), where, mask, legs=False)
    bits_table = rounding[0] if update else table
    bits_mask = bits_table.numel() - 1
    bits_offsets = np.zeros(len(where), dtype=np.int64)
    if update:
        seed = rounding[1]
        for row, (index, chunk, count) in enumerate(where):
            bits_offsets[row] = _hashes(seed, index, count)[chunk] & bits_mask
    masks = [sampler.packed_mask(index, chunk) for index, chunk, _ in where]
    mask_array = np.asarray([0 if m is None else m.data_ptr() for m in masks], dtype=np.uint64)
    pointer_array = np.asarray(pointers, dtype=np.uint64)
    length_array = np.asarray(lengths, dtype=np.int64)
    lib.zotune_bf16_pass(
        len(where), pointer_array.ctypes.data, length_array.ctypes.data,
        table.data_ptr(), mask, len(legs), leg_offsets.ctypes.data, leg_scales.ctypes.data,
        move_offsets.shape[1], move_offsets.ctypes.data, move_scales.ctypes.data,
        int(update), float(keep), bits_table.data_ptr(), bits_mask, bits_offsets.ctypes.data,
        mask_array.ctypes.data if mask_array.any() else None, torch.get_num_threads(),
    )


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
