"""Measurement primitives: peak memory, step timers, and analytic byte accounting.

Peak memory
    * CUDA: bytes allocated by torch's caching allocator (``torch.cuda.memory_allocated``),
      peak since the last ``torch.cuda.reset_peak_memory_stats``. Excludes the CUDA context
      and the allocator's cached-but-free blocks.
    * CPU: the process's resident set (``VmRSS`` in ``/proc/self/status``), peak = ``VmHWM``,
      the high-water mark of the resident set. Linux resets it when "5" is written to
      ``/proc/self/clear_refs``; where that is not possible (not Linux, no permission) the
      peak is ``getrusage(RUSAGE_SELF).ru_maxrss``, the lifetime peak of the process.
      A resident set counts pages, not tensors: it includes the Python interpreter, the
      loaded libraries (≈ 0.3–0.5 GB for torch + transformers), thread stacks, and any memory
      the C allocator keeps after ``free``. :func:`track_allocations_in_rss` makes glibc
      return large freed blocks to the OS at once, so the resident set follows the live
      tensors and "peak minus a baseline taken just before" is the memory a piece of work
      added; :func:`reuse_freed_memory` restores heap reuse for timing.

Timers
    :func:`time_calls` runs a function ``warmup`` times untimed, then ``repeats`` times,
    each bracketed by ``torch.cuda.synchronize`` on CUDA (kernels run asynchronously, so
    without it the clock stops before the GPU does), and reports the median.

Analytic accounting
    :func:`estimate_memory` predicts the bytes a training step holds at its peak, as the sum
    of weights, gradients, optimizer state, direction scratch and activations; the formulas
    are in the docstrings of :func:`optimizer_state_bytes`, :func:`scratch_bytes` and
    :func:`activation_bytes`. They are deliberately simple (a handful of terms per layer) and
    meant to match measurements to within tens of percent, which is enough to see which term
    dominates and how it scales.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

MB = 2**20

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_HWM = "5"  # clear_refs code that resets the resident-set high-water mark (Linux ≥ 4.0)
# Pages other threads touch between the reset and the read; a real reset leaves HWM ≈ RSS.
_HWM_RESET_SLACK_KB = 1024

# glibc mallopt parameter: allocations at or above this size are mmap'd, and unmapped on free.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024
_MMAP_THRESHOLD_MAX_BYTES = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


# Peak memory -------------------------------------------------------------------------------


def _status_kb(key: str) -> int | None:
    return _status_values_kb(key)[0]


def _status_values_kb(*keys: str) -> list[int | None]:
    """Fields of /proc/self/status in KiB, read in one go (so they describe one instant)."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return [None] * len(keys)
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in keys:
            values[name] = int(rest.split()[0])
    return [values.get(key) for key in keys]


def _ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def current_memory_bytes(device: torch.device | str = "cpu") -> int:
    """CUDA: bytes held by live tensors on ``device``. CPU: the process's resident set now."""
    if _is_cuda(device):
        return torch.cuda.memory_allocated(device)
    rss_kb = _status_kb("VmRSS")
    if rss_kb is None:  # no /proc: the best available figure is the lifetime peak
        return _ru_maxrss_bytes()
    return rss_kb * 1024


def peak_memory_bytes(device: torch.device | str = "cpu") -> int:
    """CUDA: peak bytes of live tensors since the last :func:`reset_peak_memory`.

    CPU: the process's peak resident set (``VmHWM``) since the start of the process or the
    last successful :func:`reset_peak_memory`; ``ru_maxrss`` (lifetime peak) without /proc.
    """
    if _is_cuda(device):
        return torch.cuda.max_memory_allocated(device)
    hwm_kb = _status_kb("VmHWM")
    return hwm_kb * 1024 if hwm_kb is not None else _ru_maxrss_bytes()


def reset_peak_memory(device: torch.device | str = "cpu") -> bool:
    """Start a new peak window; True if the next :func:`peak_memory_bytes` starts from now.

    CPU: resets ``VmHWM`` to the current resident set by writing "5" to
    ``/proc/self/clear_refs``. Returns False where that is impossible: the peak then remains
    the lifetime peak of the process, so measure in a fresh process instead. Some sandboxed
    kernels accept the write and ignore it, so the reset counts only if ``VmHWM`` then sits
    at the resident set.
    """
    if _is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text(_RESET_HWM)
    except OSError:
        return False
    hwm_kb, rss_kb = _status_values_kb("VmHWM", "VmRSS")
    if hwm_kb is None or rss_kb is None:
        return False
    return hwm_kb <= rss_kb + _HWM_RESET_SLACK_KB


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory in MiB, as :func:`peak_memory_bytes` defines it (the training loop's figure).

    CUDA: peak allocated by torch. CPU: the process's peak resident set (a high-water mark).
    """
    return peak_memory_bytes(device) / MB


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _mallopt_mmap_threshold(size: int) -> bool:
    libc = _libc()
    if libc is None:  # not glibc
        return False
    accepted = bool(libc.mallopt(_M_MMAP_THRESHOLD, size))
    libc.malloc_trim(0)
    return accepted


def release_freed_memory() -> None:
    """Give the pages of freed heap blocks back to the OS (``malloc_trim(0)``), so they stop
    counting as resident. Blocks freed while heap reuse was on stay in the heap's free
    lists and are handed out again before any new mapping: call this before reading a
    baseline, or the baseline carries them and the work that reuses them looks free.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def track_allocations_in_rss() -> bool:
    """Make the CPU resident set follow live tensors; True if the C allocator accepted it.

    glibc's malloc raises its mmap threshold dynamically once large blocks have been freed,
    after which freed tensors stay in the heap and still count as resident: a baseline taken
    after a warm-up would then already contain the warm-up's activations. Pinning the
    threshold at 128 KiB (``mallopt(M_MMAP_THRESHOLD)``, which also disables the dynamic
    adjustment) makes every tensor of that size or larger its own mapping, returned to the OS
    on free; ``malloc_trim(0)`` releases what the heap holds now.

    Every such allocation then costs fresh zeroed pages from the kernel, which slows
    allocation-heavy code: time with :func:`reuse_freed_memory` in force instead.
    """
    return _mallopt_mmap_threshold(_MMAP_THRESHOLD_BYTES)


def reuse_freed_memory() -> bool:
    """Undo :func:`track_allocations_in_rss` for timing: blocks below 32 MiB come from the
    heap again and are reused after free, as in glibc's steady state (its dynamic threshold
    tops out at 32 MiB on 64-bit systems)."""
    return _mallopt_mmap_threshold(_MMAP_THRESHOLD_MAX_BYTES)


@dataclass
class PeakWindow:
    """Memory over a window of work, in bytes (see :func:`peak_memory_bytes` for the meaning).

    ``baseline``: memory just before the window; ``peak``: peak inside it; ``added`` =
    ``peak − baseline``, what the work added on top of what was already there. ``reset``
    is False when the CPU peak could not be reset, in which case ``peak`` may predate the
    window.
    """

    device: str
    baseline: int = 0
    peak: int = 0
    reset: bool = True

    @property
    def added(self) -> int:
        return max(0, self.peak - self.baseline)


@contextmanager
def track_peak(device: torch.device | str = "cpu") -> Iterator[PeakWindow]:
    """``with track_peak(device) as window: work()``; then read ``window.added``."""
    if _is_cuda(device):
        torch.cuda.synchronize(device)
    window = PeakWindow(device=str(device))
    window.reset = reset_peak_memory(device)
    window.baseline = current_memory_bytes(device)
    yield window
    if _is_cuda(device):
        torch.cuda.synchronize(device)
    window.peak = max(peak_memory_bytes(device), window.baseline)


# Timers ------------------------------------------------------------------------------------


@dataclass
class StepTimes:
    """Wall-clock seconds of the timed calls (warm-up calls excluded)."""

    seconds: list[float]
    warmup: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max − min) / median: how noisy the timed calls were."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.median else 0.0


def time_calls(
    fn: Callable[[], Any],
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> StepTimes:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; report each time.

    On CUDA every timed call is bracketed by ``torch.cuda.synchronize`` so the time covers
    the kernels, not just their launch.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"invalid repeats: {repeats!r} (must be an int >= 1)")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"invalid warmup: {warmup!r} (must be an int >= 0)")
    cuda = _is_cuda(device)
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return StepTimes(seconds=seconds, warmup=warmup)


# Analytic accounting -----------------------------------------------------------------------

# Methods the estimates cover besides the registry's optimizers: a forward pass alone, and
# the MeZO-style reference step (zotune.bench.mezo_reference).
REFERENCE_METHODS = ("inference", "mezo-ref")


@dataclass(frozen=True)
class StepFacts:
    """What the memory model needs to know about a method, read from its registry entry."""

    state_tensors: int  # parameter-sized state tensors per trainable tensor
    first_order: bool  # keeps activations for backprop and makes gradients
    forward_mode: bool  # carries whole-model tangents through the forward
    linear: bool  # update fused into the restore pass (no scratch chunk of z)


def step_facts(method: str, options: dict[str, Any] | None = None) -> StepFacts:
    """The facts of ``method`` (a registry key or one of :data:`REFERENCE_METHODS`) with its
    options (FO-SGD keeps a momentum buffer only with ``momentum`` > 0)."""
    from .optim.registry import entry, names

    if method in REFERENCE_METHODS:
        return StepFacts(0, False, False, True)
    if method not in names():
        choices = ", ".join((*names(), *REFERENCE_METHODS))
        raise ValueError(f"unknown optimizer {method!r} (choose from {choices})")
    spec = entry(method)
    options = options or {}
    return StepFacts(
        state_tensors=spec.state_tensors(**options),
        first_order=spec.first_order,
        forward_mode=spec.estimator == "forward-grad",
        linear=spec.is_linear(**options),
    )
# Models whose MLP is gated (down(act(gate(x)) * up(x))): four ffn-wide tensors, not two.
GATED_MLP_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo"}
)


@dataclass(frozen=True)
class TransformerShape:
    """What the activation formulas need from a model config.

    ``hidden`` h, ``ffn`` f, ``layers`` L, ``heads`` a, ``kv_hidden`` h_kv = h · kv_heads / a
    (grouped-query attention shrinks K and V), ``vocab`` V, ``gated`` (LLaMA-style MLP),
    ``activation`` (the MLP's nonlinearity: ReLU's backward needs only its output),
    ``eager`` (attention materialises the a × T × T score matrix; SDPA kernels do not).
    """

    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_hidden: int
    vocab: int
    gated: bool
    eager: bool
    activation: str = "gelu"

    @property
    def kept_ffn_tensors(self) -> int:
        """c_f: ffn-wide tensors backprop keeps per layer (4 gated, 1 ReLU, else 2)."""
        if self.gated:
            return 4  # gate out (SiLU input), up out, SiLU out, product (down input)
        return 1 if self.activation == "relu" else 2  # ReLU's output is also fc2's input

    @classmethod
    def from_config(cls, config: Any) -> TransformerShape:
        hidden = config.hidden_size
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        ffn = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
        if ffn is None:
            raise ValueError(f"config of model type {config.model_type!r} names no ffn width")
        attn = getattr(config, "_attn_implementation", None)
        activation = getattr(config, "activation_function", None) or getattr(
            config, "hidden_act", "gelu"
        )
        return cls(
            hidden=hidden,
            ffn=ffn,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_hidden=hidden * kv_heads // heads,
            vocab=config.vocab_size,
            gated=getattr(config, "model_type", "") in GATED_MLP_TYPES,
            eager=attn == "eager",
            activation=str(activation),
        )


def activation_bytes(
    shape: TransformerShape,
    *,
    batch_size: int,
    seq_len: int,
    mode: str,
    element_bytes: int,
    virtual_tokens: int = 0,
    prefix_tokens: int = 0,
    logits_kept: int = 1,
    kv_cache: bool = False,
) -> int:
    """Activation bytes of one forward (``mode="live"``) or kept for backprop (``"kept"``).

    With N = B·T query rows (T includes prompt tuning's virtual tokens), T_k = T + prefix
    tokens key positions, s the activation element size, per transformer layer:

    kept (backprop keeps every layer's inputs for the backward pass; after Korthikanti et
    al., 2022: for f = 4h and GELU it gives their 34·h bytes per token and layer in fp16
    less the 2·h of the two dropout masks, which fine-tuning in eval mode does not make)::

        attention  N · (2h + h + 2h_kv + h)          norm in/out, q k v, context
                 + B · a · T · T_k      (eager)     softmax probabilities (its backward
                                                    needs only its output)
        mlp        N · (2h + c_f · f)               norm in/out; c_f = 2 (act in, act out),
                                                    1 for ReLU (its output serves both),
                                                    4 if gated (gate, up, act, product)
        total      L · (attention + mlp) + N · 3h + B · K · V · 2

    (N · 3h: embeddings out, final norm in/out; B · K · V · 2: the kept logits and their
    softmax, K = ``logits_kept`` scored positions per row.)

    live (a no-grad forward frees each tensor once its consumer has run, so only one layer's
    working set is alive, on top of the residual stream)::

        attention  N · (h + 2h + h_kv·2 + h) + B · a · T · T_k · 2 (eager)
        mlp        N · (h + h + c'_f · f),    c'_f = 2, or 3 if gated (act, up, product)
        total      N · h + max(attention, mlp) + B · K · V · 2

    The logits term counts the model-dtype logits plus their fp32 log-softmax copy as two
    elements of size s each (close enough at K = 1, where it is small).

    ``kv_cache``: a Hugging Face forward called without ``use_cache=False`` also returns
    every layer's keys and values, so they all stay alive to the end of the forward:
    + L · N · 2h_kv in both modes (zotune's profile passes ``use_cache=False``; prefix
    tuning builds the cache regardless, see :func:`estimate_memory`).
    """
    if mode not in ("live", "kept"):
        raise ValueError(f"unknown activation mode {mode!r} (choose from live, kept)")
    h, f, hkv = shape.hidden, shape.ffn, shape.kv_hidden
    t = seq_len + virtual_tokens
    n = batch_size * t
    probs = batch_size * shape.heads * t * (t + prefix_tokens) if shape.eager else 0
    logits = 2 * batch_size * logits_kept * shape.vocab
    if mode == "kept":
        attention = n * (4 * h + 2 * hkv) + probs
        mlp = n * (2 * h + shape.kept_ffn_tensors * f)
        elements = shape.layers * (attention + mlp) + n * 3 * h + logits
    else:
        attention = n * (4 * h + 2 * hkv) + 2 * probs  # scores and probabilities
        mlp = n * (2 * h + (3 if shape.gated else 2) * f)
        elements = n * h + max(attention, mlp) + logits
    if kv_cache:
        elements += shape.layers * n * 2 * hkv
    return elements * element_bytes


def optimizer_state_bytes(
    optimizer: str, trainable_bytes: int, options: dict[str, Any] | None = None
) -> int:
    """Parameter-sized state, as the optimizer's rule declares it: 0 for ZO-SGD (and its
    Cons/Sign variants, Forward-Grad, inference), 1× trainable for momentum (ZO-SGD-MMT,
    FO-SGD with momentum > 0), 2× for Adam.
    """
    return step_facts(optimizer, options).state_tensors * trainable_bytes


def scratch_bytes(
    optimizer: str,
    *,
    device: torch.device | str,
    element_bytes: int,
    largest_trainable_numel: int,
    trainable_numel: int,
    distribution: str = "auto",
    options: dict[str, Any] | None = None,
) -> int:
    """Direction memory of a step, from :class:`zotune.estimators.directions.DirectionSampler`.

    * table directions (``auto`` on CPU): the shared noise table, ``table_numel`` values
      (16 MiB in fp32), built once per device and dtype and kept;
    * sampled directions (``auto`` on CUDA): one chunk, min(``chunk_numel``, largest trainable
      tensor) values; non-linear rules (momentum, sign, Adam) also draw table directions into
      such a chunk;
    * Forward-Grad: whole-model tangents, one per trainable value, for the duration of the
      forward (plus the table when directions come from it);
    * MeZO-style reference: whole-tensor temporaries, one tensor at a time. The update
      ``θ − lr·(g·z + λ·θ)`` holds z, g·z, λ·θ and their sum at once: four copies of the
      largest trainable tensor (the probes' ``θ + s·z·ε`` hold three).
    """
    from .estimators.directions import DEFAULT_CHUNK_NUMEL, DirectionSampler

    facts = step_facts(optimizer, options)
    if optimizer == "inference" or facts.first_order:
        return 0
    if optimizer == "mezo-ref":
        return 4 * largest_trainable_numel * element_bytes
    sampler = DirectionSampler(distribution)
    kind = sampler.kind(torch.device(device))
    chunk = min(DEFAULT_CHUNK_NUMEL, sampler.chunk_numel, largest_trainable_numel) * element_bytes
    table = sampler.table_numel * element_bytes if kind == "table" else 0
    if facts.forward_mode:
        return trainable_numel * element_bytes + table
    if kind == "table":
        return table + (0 if facts.linear else chunk)
    return chunk


@dataclass
class MemoryEstimate:
    """Predicted bytes alive at the peak of one step (see :func:`estimate_memory`).

    Each component is what is alive *at the peak*: for FO that is either the start of
    backward (all kept activations, the head's gradient) or its end (all gradients, no
    activations); ``notes`` holds both figures. ``trainable`` is informational (a subset of
    ``weights``); ``total`` sums the others.
    """

    optimizer: str
    weights: int
    trainable: int
    gradients: int
    optimizer_state: int
    scratch: int
    activations: int
    activation_mode: str
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return (
            self.weights + self.gradients + self.optimizer_state + self.scratch + self.activations
        )

    @property
    def above_weights(self) -> int:
        """What the step adds to a model already in memory: everything but the weights."""
        return self.total - self.weights

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "above_weights": self.above_weights}

    def breakdown_mb(self) -> str:
        """``"W 478 + G 0 + S 0 + Z 16 + A 61 = 555 MB"``: weights, gradients, state,
        direction scratch, activations."""
        parts = (
            ("W", self.weights),
            ("G", self.gradients),
            ("S", self.optimizer_state),
            ("Z", self.scratch),
            ("A", self.activations),
        )
        body = " + ".join(f"{k} {v / MB:.0f}" for k, v in parts)
        return f"{body} = {self.total / MB:.0f} MB"


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _peft_virtual_tokens(model: torch.nn.Module) -> tuple[int, int]:
    """(prompt tokens added to the input, prefix key/value positions added to attention)."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return 0, 0
    kind = str(getattr(config, "peft_type", ""))
    tokens = int(config.num_virtual_tokens)
    return (0, tokens) if "PREFIX" in kind.upper() else (tokens, 0)


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _base_config(model: torch.nn.Module) -> Any:
    return _base_model(model).config


def _head_gradient_bytes(model: torch.nn.Module) -> tuple[int, bool]:
    """(bytes of the LM head's gradient, 0 if it is frozen; whether it is tied to the input
    embedding)."""
    base = _base_model(model)
    head = getattr(getattr(base, "get_output_embeddings", lambda: None)(), "weight", None)
    embedding = getattr(getattr(base, "get_input_embeddings", lambda: None)(), "weight", None)
    if head is None or not head.requires_grad:
        return 0, False
    return _tensor_bytes(head), embedding is head


def estimate_memory(
    model: torch.nn.Module,
    optimizer: str,
    *,
    batch_size: int,
    seq_len: int,
    device: torch.device | str = "cpu",
    logits_kept: int = 1,
    distribution: str = "auto",
    options: dict[str, Any] | None = None,
) -> MemoryEstimate:
    """Predicted peak bytes of one ``optimizer`` step of ``model`` (already tuned: its
    trainable tensors are those with ``requires_grad``) on a B × T batch.

    ::

        weights      Σ over parameters and buffers of numel · element size
        state        see optimizer_state_bytes (0, 1× or 2× trainable)
        scratch      see scratch_bytes (chunk, noise table, tangents)
        activations  see activation_bytes: "live" for ZO and inference (one layer's
                     working set), twice "live" for Forward-Grad (every activation carries
                     a tangent of the same size); FO below
        gradients    0 without backprop; FO below

    FO: zotune's backprop estimator clears ``.grad`` before each step, so backward
    allocates the gradients while it releases the kept activations A (``"kept"`` mode).
    With G all trainable gradients and G_head the LM head's (V·h·s if trainable, the first
    gradient backward makes), the peak is the larger of its two ends::

        start of backward   A + G_head
        end of backward     G + 2·G_head   if the head is tied to the input embedding:
                                           the embedding's dense V × h gradient is added to
                                           the head's out of place (old, new and sum alive)
                            G              otherwise

    (Measured on CPU: an untied model peaks at G, a tied one at G + 2·V·h·s.) The familiar
    G + A is the peak when gradients persist across steps (``zero_grad(set_to_none=False)``).
    With a large tied vocabulary FO's memory is therefore flat in T until A + G_head
    overtakes G + 2·G_head, then grows with the activations.

    ``optimizer`` is an optimizer key, ``"mezo-ref"`` (the MeZO-style reference step) or
    ``"inference"`` (one no-grad forward); ``options`` are its options (e.g. FO-SGD's
    ``momentum``). Works on a model on the meta device too.
    """
    facts = step_facts(optimizer, options)
    params = list(model.parameters())
    weights = sum(_tensor_bytes(p) for p in params) + sum(_tensor_bytes(b) for b in model.buffers())
    trainable_params = [p for p in params if p.requires_grad]
    trainable = sum(_tensor_bytes(p) for p in trainable_params)
    element_bytes = params[0].element_size() if params else 4
    if optimizer == "inference":
        trainable = 0
    prompt, prefix = _peft_virtual_tokens(model)
    shape = TransformerShape.from_config(_base_config(model))
    mode = "kept" if facts.first_order else "live"
    activations = activation_bytes(
        shape,
        batch_size=batch_size,
        seq_len=seq_len,
        mode=mode,
        element_bytes=element_bytes,
        virtual_tokens=prompt,
        prefix_tokens=prefix,
        logits_kept=logits_kept,
        # peft's prefix tuning hands the prefix to the model as a key/value cache, and every
        # layer appends its own keys and values to it, whatever use_cache says.
        kv_cache=prefix > 0,
    )
    if facts.forward_mode:
        activations *= 2
        mode = "live, with tangents"
    numels = [p.numel() for p in trainable_params] or [0]
    notes = {"shape": asdict(shape), "prompt_tokens": prompt, "prefix_tokens": prefix}
    gradients = 0
    if facts.first_order:
        head, tied = _head_gradient_bytes(model)
        start, end = activations + head, trainable + (2 * head if tied else 0)
        notes.update(kept_activations=activations, all_gradients=trainable, head_gradient=head)
        notes["peak_at"] = "start of backward" if start >= end else "end of backward"
        gradients, activations = (head, activations) if start >= end else (end, 0)
    return MemoryEstimate(
        optimizer=optimizer,
        weights=weights,
        trainable=trainable,
        gradients=gradients,
        optimizer_state=optimizer_state_bytes(optimizer, trainable, options),
        scratch=scratch_bytes(
            optimizer,
            device=device,
            element_bytes=element_bytes,
            largest_trainable_numel=max(numels) if optimizer != "inference" else 0,
            trainable_numel=sum(numels) if optimizer != "inference" else 0,
            distribution=distribution,
            options=options,
        ),
        activations=activations,
        activation_mode=mode,
        notes=notes,
    )
