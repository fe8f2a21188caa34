"""Matrix products of half-precision weights on a CPU: native, or in fp32 (``model.matmul``).

bf16 weights halve a model's memory, and on a CPU with fast bf16 matrix units (AMX) they
also make its forward several times faster than fp32. Without them it can be the other way
round: on a Xeon that has AVX-512 BF16 but no AMX, oneDNN's bf16 GEMM runs at about half
the rate of its fp32 GEMM (``benchmarks/bf16_matmul.py``), so a bf16 forward there is slower
than an fp32 one. A product in fp32 from bf16 operands loses nothing: each product of two
bf16 values is exact in fp32 and both GEMMs accumulate in fp32, so the two differ only in
the order of their sums (as two CPUs do), and the output is rounded to bf16 as before.

``model.matmul`` chooses:

* ``native``: ``torch.nn.functional.linear`` on the weights as they are;
* ``float32``: each ``nn.Linear`` with half-precision weights computes in fp32 from
  upcast copies of its weight and input (made per call, one layer at a time: the stored
  weights, what the optimizer moves and what checkpoints hold stay half precision);
* ``auto`` (the default): ``float32`` on a CPU where a bf16 (fp16) GEMM of the shape of a
  small model's layer is at least :data:`SLOWER_BY` times slower than the same GEMM in fp32
  from upcast operands — timed once per process and dtype (about a quarter of a second) —
  else ``native``. On CUDA, and for fp32 weights without autocast, always ``native``. The two
  GEMMs are timed back to back in each of :data:`PROBE_ROUNDS` rounds, in process CPU time, and
  the median of the rounds' ratios decides: on a machine shared with other work, timing one GEMM
  five times and then the other (wall clock, fastest of each) gave ratios from 0.95 to 2.8 in
  six processes on one busy core, where the paired CPU-time ratio stays at 1.7–1.9.
  Where it chooses ``float32``, inputs of fewer rows than :func:`rows_to_pay_for_copy` of
  that ratio keep the native product: the copy of the weight costs about as much as
  :data:`COPY_ROWS` rows of its fp32 GEMM, which a GEMM r times slower wins back from
  ``COPY_ROWS / (r − 1)`` rows (the last-position head of a scoring forward has one row per
  example). That is 128 rows on a Xeon with AVX-512 BF16 (r ≈ 1.85) and 16 on an AVX2 EPYC
  without bf16 instructions (r ≈ 6.4; there the fixed 512 rows this replaced sent a
  forward of 16 × 26 tokens through the native products, 26.2 s against 4.5 s in fp32:
  ``docs/results/issue34-cpu/step-cost-epyc.md``).

fp32 weights under ``model.autocast`` (FO-SGD's full-model runs, for one) compute their
products in the autocast dtype, so the same choice applies to them: autocast casts the input,
weight and bias of each product to bf16 and runs a bf16 GEMM with an output in bf16, and the
``float32`` layer casts them to bf16 too, multiplies them upcast in fp32 with autocast off,
and rounds the output to bf16 — the same values up to the order of the sums. Its backward
rounds where autocast's does: the gradients of the input and the weight pass back through the
casts to bf16 (rounded to bf16, then widened to fp32).

The choice is made per layer class, not per tensor: a layer's ``__class__`` becomes
:class:`Float32MatmulLinear`, an ``nn.Linear`` subclass, so adapters that wrap linear
layers (peft's LoRA), ``isinstance`` checks, parameter names and state dicts are unchanged.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F

MATMUL_MODES = ("auto", "native", "float32")
HALF_DTYPES = (torch.bfloat16, torch.float16)

# The copy of a layer's weight to fp32, in rows (batch × positions) of its fp32 GEMM: about 34
# for a 576 → 1536 layer and 60 for the 49152 × 576 head on a Xeon without AMX, whose head
# copy is memory-bound (docs/results/issue34-cpu/bf16-matmul.md, one thread); the larger one.
COPY_ROWS = 64
# The most rows ``auto`` asks of an input before its product runs in fp32 (r near 1).
MAX_MIN_ROWS = 512
# How much slower the native half-precision GEMM must be for ``auto`` to leave it: a margin
# well above the timing noise, so a machine does not flip between the two from run to run.
SLOWER_BY = 1.3
# The timed shape: one MLP projection of SmolLM2-135M over a batch of 16 × 48 tokens.
PROBE_SHAPE = (768, 576, 1536)
# Rounds of the probe, each timing the native and the fp32 GEMM back to back.
PROBE_ROUNDS = 7


class MatmulError(ValueError):
    """A ``model.matmul`` setting that cannot work."""


def check_matmul(mode: str) -> None:
    """Refuse an unknown ``model.matmul`` mode, naming the choices."""
    if mode not in MATMUL_MODES:
        raise MatmulError(
            f"model.matmul: unknown mode {mode!r} (choose from {', '.join(MATMUL_MODES)})"
        )


@torch.library.custom_op("zotune::rounded_linear", mutates_args=())
def rounded_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   half: torch.dtype) -> torch.Tensor:
    """``y = h(x)₃₂ h(W)₃₂ᵀ + h(b)₃₂`` rounded to ``half``, h the cast to ``half``: the
    product of the operands rounded to ``half``, exact products summed in fp32, rounded once.

    An operator of its own (``torch.library``), so that ``torch.compile`` calls it as it is:
    traced through, inductor drops the round trips through ``half`` (it needs
    ``emulate_precision_casts`` to keep them) and turns the backward's products of rounded
    operands into ``half`` GEMMs, the slow ones this layer avoids (a compiled forward and
    backward of a 416-row MLP took 1.7 s against 0.23 s eager on the AVX2 EPYC)."""
    return rounded_product(input, weight, bias, half)


def rounded_product(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    half: torch.dtype) -> torch.Tensor:
    """:func:`rounded_linear` in torch's own operations, which forward-mode AD (Forward-Grad's
    dual tensors) differentiates; the operator has no forward-mode formula."""
    with torch.autocast(input.device.type, enabled=False):
        rounded_bias = None if bias is None else bias.to(half).float()
        return F.linear(input.to(half).float(), weight.to(half).float(), rounded_bias).to(half)


def carries_tangent(*tensors: torch.Tensor | None) -> bool:
    """Whether any of ``tensors`` is a dual tensor of forward-mode AD."""
    return any(t is not None and fwad.unpack_dual(t).tangent is not None for t in tensors)


@rounded_linear.register_fake
def _(input, weight, bias, half):
    return input.new_empty((*input.shape[:-1], weight.shape[0]), dtype=half)


def _save_operands(ctx, inputs, output) -> None:
    input, weight, bias, half = inputs
    ctx.save_for_backward(input, weight)
    ctx.half = half
    ctx.bias_dtype = None if bias is None else bias.dtype


def _rounded_linear_backward(ctx, grad):
    """The gradients autograd takes through the casts: each product of the fp32 upstream
    gradient and a rounded operand, in fp32, rounded to ``half`` and cast to its operand's
    dtype, as the backward of ``x.to(half).float()`` rounds them."""
    input, weight = ctx.saved_tensors
    half = ctx.half
    with torch.autocast(input.device.type, enabled=False):
        upstream = grad.float().reshape(-1, weight.shape[0])
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = (upstream @ weight.to(half).float()).to(half).to(input.dtype)
            grad_input = grad_input.reshape(input.shape)
        if ctx.needs_input_grad[1]:
            rows = input.reshape(-1, input.shape[-1]).to(half).float()
            grad_weight = (upstream.t() @ rows).to(half).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = upstream.sum(0).to(half).to(ctx.bias_dtype)
    return grad_input, grad_weight, grad_bias, None


rounded_linear.register_autograd(_rounded_linear_backward, setup_context=_save_operands)


class Float32MatmulLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose half-precision product runs in fp32 (inputs of ``min_rows``
    rows or more): ``y = (x₃₂ W₃₂ᵀ + b₃₂)`` rounded to the weights' dtype; for fp32 weights
    under a half-precision autocast, ``y = h(x)₃₂ h(W)₃₂ᵀ + h(b)₃₂`` rounded to the autocast
    dtype, h the cast to it (:func:`rounded_linear`)."""

    min_rows = 0  # set per layer by use_float32_matmul

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.numel() < self.min_rows * self.in_features:
            return super().forward(input)
        half = self.weight.dtype if self.weight.dtype in HALF_DTYPES else autocast_half_dtype(
            input.device)
        if half is None:
            return super().forward(input)
        product = (rounded_product if carries_tangent(input, self.weight, self.bias)
                   else rounded_linear)
        return product(input, self.weight, self.bias, half)


def autocast_half_dtype(device: torch.device) -> torch.dtype | None:
    """The half-precision dtype autocast computes products in on ``device``'s type, or None
    where autocast is off (or not half precision)."""
    if not torch.is_autocast_enabled(device.type):
        return None
    dtype = torch.get_autocast_dtype(device.type)
    return dtype if dtype in HALF_DTYPES else None


@functools.cache
def native_over_float32(dtype: torch.dtype, threads: int) -> float:
    """Time of a native ``dtype`` GEMM over the fp32 GEMM of upcast operands, on this CPU
    with ``threads`` threads (the :data:`PROBE_SHAPE`; :func:`probe_workloads`,
    :func:`paired_ratio`)."""
    return paired_ratio(*probe_workloads(dtype))


def probe_workloads(dtype: torch.dtype) -> tuple[Callable[[], None], Callable[[], None]]:
    """The probe's two GEMMs of :data:`PROBE_SHAPE`: native ``dtype``, and fp32 from upcast
    operands rounded back. Both write into buffers allocated here, once, so their ratio is the
    arithmetic's and the casts': allocating the upcast path's temporaries per call costs what
    the allocator's state says (fresh zeroed pages under ``zotune profile``'s resident-set
    tracking took the ratio from 1.7 to 1.3 and flipped the choice), where a run's steady
    heap reuses them."""
    rows, inner, outer = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, inner, generator=generator).to(dtype)
    w = torch.randn(outer, inner, generator=generator).to(dtype)
    x32, w32 = torch.empty(rows, inner), torch.empty(outer, inner)
    y32, y = torch.empty(rows, outer), torch.empty(rows, outer, dtype=dtype)

    def native() -> None:
        torch.mm(x, w.t(), out=y)

    def upcast() -> None:
        x32.copy_(x)
        w32.copy_(w)
        torch.mm(x32, w32.t(), out=y32)
        y.copy_(y32)

    return native, upcast


def paired_ratio(
    first: Callable[[], object],
    second: Callable[[], object],
    rounds: int = PROBE_ROUNDS,
    clock: Callable[[], float] = time.process_time,
) -> float:
    """The median over ``rounds`` of time(``first``) / time(``second``), the two timed back to
    back in each round after one untimed call of each. Pairs share whatever else the machine
    is doing at that moment, and process CPU time (the default ``clock``) leaves out the time
    the process waits for a core."""
    first()
    second()
    ratios = []
    for _ in range(rounds):
        start = clock()
        first()
        middle = clock()
        second()
        end = clock()
        ratios.append((middle - start) / max(end - middle, 1e-9))
    return statistics.median(ratios)


def rows_to_pay_for_copy(ratio: float) -> int:
    """The rows from which an input's fp32 product beats the native one whose GEMM is
    ``ratio`` times slower: ``COPY_ROWS / (ratio − 1)`` rounded up to a power of two (a
    coarse grid, so that timing noise rarely moves it between processes), at most
    :data:`MAX_MIN_ROWS`."""
    if ratio <= 1:
        return MAX_MIN_ROWS
    rows = 1
    while rows < COPY_ROWS / (ratio - 1) and rows < MAX_MIN_ROWS:
        rows *= 2
    return rows


def product_dtype(weights_dtype: torch.dtype, autocast_dtype: torch.dtype | None
                  ) -> torch.dtype | None:
    """The half-precision dtype products of these weights run in (the weights' own, or for
    fp32 weights the autocast dtype), or None where they run in fp32."""
    dtype = weights_dtype if weights_dtype in HALF_DTYPES else autocast_dtype
    return dtype if dtype in HALF_DTYPES else None


def resolve_matmul(
    mode: str,
    weights_dtype: torch.dtype,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
) -> str:
    """``native`` or ``float32``: what ``mode`` means for these weights on this device, whose
    products run in the weights' dtype or, for fp32 weights, in ``autocast_dtype``."""
    check_matmul(mode)
    half = product_dtype(weights_dtype, autocast_dtype)
    if half is None or torch.device(device).type != "cpu":
        return "native"
    if mode != "auto":
        return mode
    ratio = native_over_float32(half, torch.get_num_threads())
    return "float32" if ratio >= SLOWER_BY else "native"


def float32_min_rows(mode: str, half: torch.dtype) -> int:
    """The rows from which a layer's product runs in fp32 where ``mode`` resolved to
    ``float32`` for products in ``half``: every input under ``float32``; under ``auto``, those
    that pay for the weight's copy on this CPU (:func:`rows_to_pay_for_copy`)."""
    if mode == "float32":
        return 0
    return rows_to_pay_for_copy(native_over_float32(half, torch.get_num_threads()))


def use_float32_matmul(model: torch.nn.Module, *, autocast: bool = False,
                       min_rows: int = 0) -> int:
    """Make every ``nn.Linear`` of ``model`` with half-precision weights (with ``autocast``,
    every ``nn.Linear``: its fp32 weights compute under autocast) a
    :class:`Float32MatmulLinear` for inputs of ``min_rows`` rows or more; the number of
    layers changed."""
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and (autocast or module.weight.dtype in HALF_DTYPES):
            module.__class__ = Float32MatmulLinear
            module.min_rows = min_rows
            changed += 1
    return changed


def emulates_autocast(model: torch.nn.Module) -> bool:
    """Whether a layer of ``model`` computes autocast's half-precision products in fp32 (a
    :class:`Float32MatmulLinear` over fp32 weights): its casts to the half dtype are part of
    what it computes."""
    return any(isinstance(m, Float32MatmulLinear) and m.weight.dtype not in HALF_DTYPES
               for m in model.modules())


def matmul_mode(model: torch.nn.Module) -> str:
    """``float32`` where :func:`use_float32_matmul` changed a layer of ``model``, else
    ``native``: how its half-precision products run."""
    swapped = any(isinstance(m, Float32MatmulLinear) for m in model.modules())
    return "float32" if swapped else "native"


def float32_rows(model: torch.nn.Module) -> int | None:
    """The fewest rows an input of ``model``'s fp32-product layers needs to take that
    product, or None where none computes in fp32."""
    rows = [m.min_rows for m in model.modules() if isinstance(m, Float32MatmulLinear)]
    return min(rows) if rows else None


def apply_matmul(
    model: torch.nn.Module,
    mode: str,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
) -> str:
    """Apply ``model.matmul`` to a loaded model whose forwards run under ``autocast_dtype``'s
    autocast (None: none); the mode it resolved to (``native`` or ``float32``). Weights placed
    on several devices keep the native products."""
    dtypes = {p.dtype for p in model.parameters()}
    weights_dtype = next(iter(dtypes & set(HALF_DTYPES)), torch.float32)
    resolved = resolve_matmul(mode, weights_dtype, device, autocast_dtype)
    if resolved == "float32":
        half = product_dtype(weights_dtype, autocast_dtype)
        use_float32_matmul(model, autocast=weights_dtype not in HALF_DTYPES,
                           min_rows=float32_min_rows(mode, half))
    return resolved
