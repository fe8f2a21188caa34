"""Sparsity-induced ZO: a seeded random mask on the perturbation, and so on the update.

With a mask m ∈ {0, 1}^d the probes move θ ± ε (m ⊙ z) and the estimate is::

    ĝ = [(f(θ + ε m⊙z) − f(θ − ε m⊙z)) / (2ε)] · (m ⊙ z)

which lives on the kept coordinates only: the variance term grows with their number
(ρd for density ρ) instead of d (ZO-Bench §5; Chen et al., *DeepZero*, ICLR 2024). The
estimate is not rescaled by 1/ρ, as in the paper: E[ĝ] = ρ ∇f for the smoothed f, which a
learning rate absorbs.

Per-tensor sparsity s_i (the fraction of entries masked out):

* ``uniform``: s_i = s for every trainable tensor;
* ``magnitude``: τ is the global s-quantile of |θ| over all trainable tensors, and
  s_i = fraction of tensor i's entries with |θ| < τ (the paper's layer-wise pruning ratios).
  They are computed once, when the optimizer is built (from the weights it is given); the
  quantile uses an evenly strided sample of at most 2^22 values.
* ``uniform-zo-llm``, ``magnitude-zo-llm``: the same ratios r_i, masked by the research
  code's rule, so that the paper's sparsity axis can be reproduced. ZO-LLM zeroes the entries
  of z where a standard normal draw is below the ratio (``fast_random_mask_like`` in
  zo-bench/gradient_pruning/pruning_utils.py, applied as ``z[mask] = 0`` in zo-bench/trainer.py),
  so it masks out s_i = Φ(r_i) of them, Φ the standard normal CDF: a ratio of 0.2 masks 58%
  and keeps 42%; 0.5 masks 69%; a tensor whose ratio is 0 still loses half. (ZO-LLM's
  ``sparse_gradient_group`` "layer" and "global" are the two ratio rules; its global
  threshold is the quantile of a random sample of every weight, frozen ones included.)
  Threshold population: zotune's τ is taken over the tensors the optimizer is given (the
  trainable ones), ZO-LLM's over all the model's weights
  (``estimate_pretrained_model_magnitude_pruning_threshold``, pruning_utils.py:40-58). Under full
  tuning the two populations are the same tensors; under LoRA, prefix or prompt tuning they
  differ, and zotune does not follow ZO-LLM there on purpose: its only sparse sweep
  (zo_sgd_sparse_grad/zo_sgd_sparse_grad_cls_ft.yml) is full tuning, and a threshold over
  frozen pretrained weights applied to adapters (LoRA's B starts at 0, so every entry would
  fall under any τ > 0) prunes by a magnitude the adapters do not have.

Each entry is kept with probability 1 − s_i, from a stream keyed by (mask seed, period,
tensor index, chunk), where period = ⌊step / mask_every⌋. The mask is therefore regenerated,
never stored: no memory beyond one chunk of scratch, identical in every pass of a step,
resampled every ``mask_every`` steps, and reproduced on resume. Two streams, following the
direction sampler's (:mod:`zotune.estimators.directions`):

* sampled directions (CUDA by default): m = [u < 1 − s_i], u ~ U[0, 1) from a local
  generator seeded by that key;
* table directions (CPU by default): m = [T[o : o + n] < τ(1 − s_i)], a slice of the shared
  noise table at an offset o hashed from that key, with τ(ρ) the table's own ρ-quantile, so
  that exactly ρN of its N values pass. The table is whitened (no correlation at any lag)
  and close to Gaussian, so the entries of a slice pass nearly independently. Drawing 2^20
  uniforms per chunk in every pass had cost as much as sampling the directions themselves
  (the cost the table removes), which tripled a sparse step on CPU.

The default modes mask exactly the fraction asked, s_i, in expectation (tested within
binomial tolerance), where ZO-LLM masks Φ(r_i); the ``-zo-llm`` modes are its rule.

Sparse-MeZO's masks (Liu et al., 2024, *Sparse MeZO: Less Parameters for Better Performance
in Zeroth-Order LLM Fine-Tuning*) are not random: they keep the *small* weights,
m = [|θ_t| ≤ h_i], recomputed from the current weights at the start of every step
(every ``mask_every`` steps). h_i is fixed when the optimizer is built, from the weights
it is given: the (1 − s)-quantile of |θ| of tensor i (``small-magnitude``), or of all
trainable tensors together (``small-magnitude-global``), so that a fraction 1 − s is
perturbed at first. A tensor that starts tied (LoRA's B = 0, zero biases) then has h = 0 and
stops moving once its first update leaves zero; ``small-magnitude-step`` (not the paper's)
recomputes each tensor's threshold with its mask, so that a fraction 1 − s of every tensor
is perturbed at every step. The mask is a function of θ_t, which the probes displace, so it cannot
be recomputed in the later passes of the step; it is held for the step bit-packed, one bit
per trainable value (:class:`ThresholdMaskedSampler`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..estimators.directions import (
    DirectionSampler,
    IndexedParam,
    circular_slices,
    mix_seed,
    noise_table,
)
from ..kernels.passes import fused_pack_small

SPARSITY_MODES = (
    "uniform", "magnitude", "uniform-zo-llm", "magnitude-zo-llm",
    "small-magnitude", "small-magnitude-global", "small-magnitude-step",
)
THRESHOLD_MODES = ("small-magnitude", "small-magnitude-global", "small-magnitude-step")
_RESEARCH_SUFFIX = "-zo-llm"

_QUANTILE_SAMPLE = 1 << 22
_MASK_SALT = 0x5BA25E  # separates the mask stream from the direction stream of the same seed


def check_sparsity(sparsity: float, mode: str, mask_every: int) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ValueError(f"Invalid sparsity: {sparsity!r} (must be a number in [0, 1))")
    if not 0 <= sparsity < 1:
        raise ValueError(f"Invalid sparsity: {sparsity} (must be in [0, 1))")
    if mode not in SPARSITY_MODES:
        raise ValueError(f"Unknown sparsity_mode: {mode!r} (choose from {SPARSITY_MODES})")
    if isinstance(mask_every, bool) or not isinstance(mask_every, int) or mask_every < 1:
        raise ValueError(f"Invalid mask_every: {mask_every!r} (must be an int >= 1)")


@torch.no_grad()
def tensor_sparsities(
    params: Sequence[IndexedParam], sparsity: float, mode: str
) -> dict[int, float]:
    """Tensor index → fraction of its entries to mask out (Φ of the ratio in ``*-zo-llm``)."""
    if sparsity == 0:
        return {}
    if mode in THRESHOLD_MODES:
        return {item.index: float(sparsity) for item in params}
    ratios = _ratios(params, sparsity, mode.removesuffix(_RESEARCH_SUFFIX))
    if mode.endswith(_RESEARCH_SUFFIX):
        return {index: normal_cdf(ratio) for index, ratio in ratios.items()}
    return ratios


def normal_cdf(x: float) -> float:
    """Φ(x) = P(N(0, 1) < x): the fraction ZO-LLM's ``randn < x`` mask removes."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _ratios(params: Sequence[IndexedParam], sparsity: float, mode: str) -> dict[int, float]:
    if mode == "uniform":
        return {item.index: float(sparsity) for item in params}
    threshold = magnitude_quantile(params, sparsity)
    result = {}
    for item in params:
        flat = item.param.detach().reshape(-1)
        below = sum(
            int((flat[start : start + (1 << 20)].abs() < threshold).sum())
            for start in range(0, flat.numel(), 1 << 20)
        )
        result[item.index] = below / max(flat.numel(), 1)
    return result


def magnitude_quantile(params: Sequence[IndexedParam], fraction: float) -> float:
    """The ``fraction``-quantile of |θ| over ``params``: the k-th smallest value, k =
    round(fraction · n) clamped to [1, n], of an evenly strided sample of at most 2^22
    values (every value when there are fewer)."""
    total = sum(item.param.numel() for item in params)
    stride = max(1, total // _QUANTILE_SAMPLE)
    # In at least fp32, and in fp64 for fp64 weights, so that |θ| ≤ h compares exactly.
    sample = torch.cat([
        item.param.detach().reshape(-1)[::stride].abs().cpu()
        .to(torch.promote_types(item.param.dtype, torch.float32))
        for item in params
    ])
    rank = max(1, min(sample.numel(), round(fraction * sample.numel())))
    return float(sample.kthvalue(rank).values)


@torch.no_grad()
def magnitude_thresholds(
    params: Sequence[IndexedParam], sparsity: float, mode: str
) -> dict[int, float]:
    """Sparse-MeZO's thresholds h_i: the (1 − s)-quantile of |θ| per tensor
    (``small-magnitude``) or over all of them (``small-magnitude-global``)."""
    if mode == "small-magnitude-global":
        shared = magnitude_quantile(params, 1 - sparsity)
        return {item.index: shared for item in params}
    return {item.index: magnitude_quantile([item], 1 - sparsity) for item in params}


def recomputed_each_period(mode: str) -> bool:
    """Whether a threshold mode recomputes h_i with the mask (``small-magnitude-step``)."""
    return mode == "small-magnitude-step"


class MaskedDirectionSampler(DirectionSampler):
    """A :class:`DirectionSampler` whose directions are m ⊙ z, m regenerated from a seed.

    ``sparsities`` maps tensor indices to their masked-out fraction; other tensors are not
    masked. Call :meth:`set_step` before a step's first pass.
    """

    def __init__(
        self,
        base: DirectionSampler,
        sparsities: dict[int, float],
        seed: int,
        mask_every: int = 1,
    ) -> None:
        super().__init__(base.distribution, base.chunk_numel, base.table_numel)
        self.keep = {index: 1.0 - s for index, s in sparsities.items() if s > 0}
        self.mask_seed = mix_seed(seed, _MASK_SALT)
        self.mask_every = mask_every
        self.period = 0
        # Scratch for one chunk: the mask as 0/1 values of each dtype; the generator's uniforms.
        self._mask_scratch: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._uniforms: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._thresholds: dict[tuple[torch.device, float], float] = {}

    def set_step(self, step: int) -> None:
        self.period = step // self.mask_every

    def mask(
        self,
        numel: int,
        index: int,
        chunk: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """The mask of chunk ``chunk`` of tensor ``index`` in the current period, as 0/1 values
        of ``dtype`` (multiplying by it is cheaper than by booleans); valid until the next call
        for the same device and dtype."""
        key = mix_seed(self.mask_seed, self.period, index, chunk)
        keep = self.keep.get(index, 1.0)
        kept = _scratch(self._mask_scratch, numel, device, dtype)
        if self.kind(device) == "table":
            table = noise_table(self.table_numel, device, torch.float32)
            threshold = self._threshold(table, keep)
            for start, values in circular_slices(table, key & (self.table_numel - 1), numel):
                torch.lt(values, threshold, out=kept[start : start + values.numel()])
            return kept
        uniform = _scratch(self._uniforms, numel, device, torch.float32)
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        generator.manual_seed(key)
        uniform.uniform_(generator=generator)
        return torch.lt(uniform, keep, out=kept)

    def _threshold(self, table: torch.Tensor, keep: float) -> float:
        """τ with exactly round(keep · N) of the table's N values below it."""
        threshold = self._thresholds.get((table.device, keep))
        if threshold is None:
            passing = round(keep * table.numel())
            if passing >= table.numel():
                threshold = math.inf
            else:
                threshold = float(torch.kthvalue(table.cpu(), passing + 1).values)
            self._thresholds[(table.device, keep)] = threshold
        return threshold

    @torch.no_grad()
    def add_(self, params: Sequence[IndexedParam], seed: int, alpha: float) -> None:
        if alpha == 0.0:
            return
        masked = [item for item in params if item.index in self.keep]
        plain = [item for item in params if item.index not in self.keep]
        if plain:
            super().add_(plain, seed, alpha)
        for item in masked:
            if self.kind(item.param.device) == "table" and item.param.is_contiguous():
                self._add_table_masked(item, seed, alpha)
                continue
            for chunk, view in self.views(item.param):
                view.add_(self.draw(view, seed, item.index, chunk), alpha=alpha)

    def _add_table_masked(self, item: IndexedParam, seed: int, alpha: float) -> None:
        """θ += α (m ⊙ z) from the table: m ⊙ z into a scratch chunk, then one add."""
        param = item.param
        segments = iter(self._segments(seed, item))
        for chunk, view in self.views(param):
            mask = self.mask(view.numel(), item.index, chunk, param.device, param.dtype)
            done = 0
            while done < view.numel():  # a chunk is one table slice, or two where it wraps
                negative, piece, values = next(segments)
                span = slice(done, done + piece.numel())
                # m⊙z first, then one add: fp16/bf16 addcmul_ does not round like add_, and
                # the probes' legs must land back on θ (estimators.base.rounds_coarsely).
                masked = torch.mul(values, mask[span], out=self.scratch(piece, slot=3))
                piece.add_(masked, alpha=-alpha if negative else alpha)
                done += piece.numel()

    def _fill(self, out: torch.Tensor, seed: int, index: int, chunk: int) -> None:
        super()._fill(out, seed, index, chunk)
        if index in self.keep:
            mask = self.mask(out.numel(), index, chunk, out.device, out.dtype)
            out.mul_(mask.view(out.shape))


_BIT_WEIGHTS = (1 << torch.arange(8)).to(torch.uint8)
_GATHER_BITS = 0x0102040810204080  # Σₖ 2^(56 − 7k), k = 0 … 7: see pack_bits


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as uint8 bytes, eight values per byte, value k of a byte in bit k
    (zero-padded at the end).

    Each group of eight 0/1 bytes is read as one 64-bit word x = Σₖ bₖ 2⁸ᵏ (little-endian,
    as on the platforms torch is built for); x · Σₖ 2⁵⁶⁻⁷ᵏ puts bₖ at bit 56 + k and every
    other product at a bit of its own below 56 or past 63, so the word's top byte is the
    packed byte (no carries). Weighting and summing the eight bytes took five times as long,
    once per step for every weight.
    """
    flat = mask.reshape(-1)
    if flat.numel() % 8 or flat.storage_offset() % 8:
        as_bytes = torch.zeros(-(-flat.numel() // 8) * 8, dtype=torch.uint8, device=flat.device)
        as_bytes[: flat.numel()] = flat
    else:
        as_bytes = flat.view(torch.uint8)
    words = as_bytes.view(torch.int64)
    return words.mul(_GATHER_BITS).bitwise_right_shift_(56).bitwise_and_(0xFF).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int, out: torch.Tensor) -> torch.Tensor:
    """The first ``numel`` values packed by :func:`pack_bits`, as 0/1 into ``out`` (contiguous).

    One lookup per byte in a 256 × 8 table of its bits (:func:`byte_bits`): testing each bit
    (an 8× uint8 temporary, then booleans, then a copy into ``out``) took ten times as long,
    and ran in every pass of a Sparse-MeZO step (2.5× ZO-SGD's full step on CPU).
    """
    table = byte_bits(out.device, out.dtype)
    flat = out.view(-1)
    whole = numel // 8
    if whole:
        rows = flat[: whole * 8].view(whole, 8)
        torch.index_select(table, 0, packed[:whole].to(torch.int32), out=rows)
    if numel > whole * 8:
        flat[whole * 8 :].copy_(table[int(packed[whole])][: numel - whole * 8])
    return out


def byte_bits(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Row b: the eight bits of byte b, lowest first, as 0/1 of ``dtype`` (made once)."""
    key = (torch.device(device), dtype)
    table = _BYTE_BITS.get(key)
    if table is None:
        every_byte = torch.arange(256, dtype=torch.uint8).unsqueeze(1)
        table = _BYTE_BITS[key] = every_byte.bitwise_and(_BIT_WEIGHTS).ne(0).to(device, dtype)
    return table


_BYTE_BITS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


class ThresholdMaskedSampler(MaskedDirectionSampler):
    """Sparse-MeZO's directions m ⊙ z with m = [|θ_t| ≤ h_i] (module docstring).

    :meth:`set_step` recomputes the masks from the current weights when the period
    ⌊step / mask_every⌋ changes and keeps them bit-packed per chunk until the next one.
    """

    def __init__(
        self,
        base: DirectionSampler,
        params: Sequence[IndexedParam],
        thresholds: dict[int, float],
        mask_every: int = 1,
        sparsity: float | None = None,
    ) -> None:
        sparsities = {index: 0.5 for index in thresholds}  # marks every tensor as masked
        super().__init__(base, sparsities, 0, mask_every)
        self.params = {item.index: item.param for item in params}
        self.thresholds = thresholds
        self.sparsity = sparsity  # set: h_i recomputed with each mask (small-magnitude-step)
        self.period = -1
        self.packed: dict[tuple[int, int], torch.Tensor] = {}

    @torch.no_grad()
    def set_step(self, step: int) -> None:
        period = step // self.mask_every
        if period == self.period:
            return
        self.period = period
        for index, param in self.params.items():
            if self.sparsity is not None:
                item = IndexedParam(index, param)
                self.thresholds[index] = magnitude_quantile([item], 1 - self.sparsity)
            for chunk, view in self.views(param):
                threshold = self.thresholds[index]
                packed = fused_pack_small(view, threshold)  # the torch ops took 3 sweeps
                if packed is None:
                    packed = pack_bits(view.abs() <= threshold)
                self.packed[(index, chunk)] = packed

    def mask(self, numel, index, chunk, device, dtype=torch.float32):
        kept = _scratch(self._mask_scratch, numel, device, dtype)
        return unpack_bits(self.packed[(index, chunk)], numel, kept)

    def fuses_table_slices(self) -> bool:
        # The fused passes read the packed masks themselves, instead of unpacking a chunk's
        # mask into a scratch and multiplying in every pass (1.6× ZO-SGD's full bf16 step).
        return type(self) is ThresholdMaskedSampler

    def packed_mask(self, index: int, chunk: int) -> torch.Tensor | None:
        return self.packed.get((index, chunk))


def _scratch(
    buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor],
    numel: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    buffer = buffers.get((device, dtype))
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[(device, dtype)] = torch.empty(numel, dtype=dtype, device=device)
    return buffer[:numel]
