"""The analytic memory model: the bytes a training step holds at its peak.

:func:`estimate_memory` predicts them as the sum of weights, gradients, optimizer state,
direction scratch and activations; the formulas are in the docstrings of
:func:`optimizer_state_bytes`, :func:`scratch_bytes` and
:func:`zotune.profiling.activations.activation_bytes`. They are deliberately simple (a
handful of terms per layer) and meant to match measurements to within tens of percent, which
is enough to see which term dominates and how it scales. What the model knows about an
optimizer comes from its registry entry (:func:`step_facts`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..models.anatomy import base_model
from ..optim.rules import state_dtype
from ..utils.measure import MB
from .activations import TransformerShape, activation_bytes
from .methods import REFERENCE_METHODS, all_methods


@dataclass(frozen=True)
class StepFacts:
    """What the memory model needs to know about a method, read from its registry entry."""

    state_tensors: int  # parameter-sized state tensors per trainable tensor
    first_order: bool  # keeps activations for backprop and makes gradients
    forward_mode: bool  # carries whole-model tangents through the forward
    linear: bool  # update fused into the restore pass (no scratch chunk of z)
    factored: bool = False  # its own direction sampler: low-rank factors drawn per step


def step_facts(method: str, options: dict[str, Any] | None = None) -> StepFacts:
    """The facts of ``method`` (a registry key or one of :data:`REFERENCE_METHODS`) with its
    options (FO-SGD keeps a momentum buffer only with ``momentum`` > 0)."""
    from ..optim.registry import entry

    if method in REFERENCE_METHODS:
        return StepFacts(0, False, False, True)
    if method not in all_methods():
        choices = ", ".join(all_methods())
        raise ValueError(f"unknown optimizer {method!r} (choose from {choices})")
    spec = entry(method)
    options = options or {}
    return StepFacts(
        state_tensors=spec.state_tensors(**options),
        first_order=spec.first_order,
        forward_mode=spec.forward_mode,
        linear=spec.is_linear(**options),
        factored=spec.directions is not None,
    )


def factor_state_bytes(
    optimizer: str, shapes_and_dtypes, options: dict[str, Any] | None = None
) -> int:
    """State a method's own direction sampler keeps (LOZO's V, SubZero's bases, LOZO-M's
    factor momentum, each seed's factors; :meth:`OptimizerEntry.side_state_values`), in the
    rule dtype of each tensor (fp32 for fp16/bf16 weights)::

        Σ over trainable tensors of values(shape) × state element size
    """
    from ..optim.registry import entry

    if optimizer in REFERENCE_METHODS:
        return 0
    spec = entry(optimizer)
    return sum(
        spec.side_state_values(tuple(shape), **(options or {}))
        * _element_size(state_dtype(dtype))
        for shape, dtype in shapes_and_dtypes
    )


def optimizer_state_bytes(
    optimizer: str,
    trainable_bytes: int,
    options: dict[str, Any] | None = None,
    *,
    weight_dtype: torch.dtype = torch.float32,
) -> int:
    """Parameter-sized state, as the optimizer's rule declares it: 0 for ZO-SGD (and its
    Cons/Sign variants, Forward-Grad, inference), one tensor per trainable tensor for
    momentum (ZO-SGD-MMT, FO-SGD with momentum > 0), two for Adam.

    ``trainable_bytes`` are those of trainable weights of ``weight_dtype``. The state has
    dtype :func:`zotune.optim.rules.state_dtype`: the weights' own, but fp32 for fp16/bf16 weights,
    so Adam on bf16 weights costs 2 × 4 bytes per trainable value, four times the weights::

        state = tensors × (trainable_bytes / weight element size) × state element size
    """
    tensors = step_facts(optimizer, options).state_tensors
    values = trainable_bytes // _element_size(weight_dtype)
    return tensors * values * _element_size(state_dtype(weight_dtype))


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


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
    * a method's own low-rank directions (LOZO, SubZero): two such chunks, the one drawn and
      the product of factors it is cut from (three for a non-linear rule: the estimate's);
    * Forward-Grad: whole-model tangents, one per trainable value, for the duration of the
      forward (plus the table when directions come from it);
    * MeZO-style reference: whole-tensor temporaries, one tensor at a time. The update
      ``θ − lr·(g·z + λ·θ)`` holds z, g·z, λ·θ and their sum at once: four copies of the
      largest trainable tensor (the probes' ``θ + s·z·ε`` hold three).
    """
    from ..estimators.directions import DirectionSampler

    facts = step_facts(optimizer, options)
    if optimizer == "inference" or facts.first_order:
        return 0
    if optimizer == "mezo-ref":
        return 4 * largest_trainable_numel * element_bytes
    sampler = DirectionSampler(distribution)
    kind = sampler.kind(torch.device(device))
    # A bounded chunk; mezo draws whole tensors, so its scratch is the largest one.
    chunk = min(sampler.chunk_numel, largest_trainable_numel) * element_bytes
    table = sampler.table_numel * element_bytes if kind == "table" else 0
    if facts.factored:
        return chunk * (2 if facts.linear else 3)
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
        """``"W 478 + G 0 + S 0 + Z 16 + A 61 = 555 MB"``: see :func:`breakdown`."""
        body = breakdown(asdict(self), lambda value: f"{value / MB:.0f}")
        return f"{body} = {self.total / MB:.0f} MB"


# The terms of an estimate, in the order a breakdown line lists them, with their letters.
BREAKDOWN_TERMS = (
    ("W", "weights"),
    ("G", "gradients"),
    ("S", "optimizer_state"),
    ("Z", "scratch"),
    ("A", "activations"),
)
BREAKDOWN_LEGEND = (
    "W weights, G gradients, S optimizer state, Z direction scratch (noise table, chunk or "
    "tangents), A activations (kept for backprop in FO, one layer's working set otherwise)"
)


def breakdown(estimate: Mapping[str, int], megabytes: Callable[[int], str]) -> str:
    """``"W 478 + G 0 + S 0 + Z 16 + A 61"``: the terms of an estimate (a
    :meth:`MemoryEstimate.as_dict`), each written by ``megabytes``."""
    return " + ".join(f"{letter} {megabytes(estimate[name])}" for letter, name in BREAKDOWN_TERMS)


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


def _head_gradient_bytes(model: torch.nn.Module) -> tuple[int, bool]:
    """(bytes of the LM head's gradient, 0 if it is frozen; whether it is tied to the input
    embedding)."""
    base = base_model(model)
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
    micro_batch_size: int | None = None,
) -> MemoryEstimate:
    """Predicted peak bytes of one ``optimizer`` step of ``model`` (already tuned: its
    trainable tensors are those with ``requires_grad``) on a B × T batch.

    ::

        weights      Σ over parameters and buffers of numel · element size
        state        see optimizer_state_bytes (0, 1 or 2 state tensors per trainable
                     value, fp32 for fp16/bf16 weights) and factor_state_bytes (low-rank
                     factors of LOZO, LOZO-M, SubZero)
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

    Micro-batches (``micro_batch_size`` < ``batch_size``, :mod:`zotune.training.micro_batches`): the
    activations are those of one micro-batch. A FO step accumulates the gradients of every
    micro-batch, so they persist while the next one's activations are kept: the peak is
    G + A_micro (+ G_head when tied), the larger of that and the one-batch ends.

    ``optimizer`` is an optimizer key, ``"mezo-ref"`` (the MeZO-style reference step) or
    ``"inference"`` (one no-grad forward); ``options`` are its options (e.g. FO-SGD's
    ``momentum``). Works on a model on the meta device too.
    """
    facts = step_facts(optimizer, options)
    params = list(model.parameters())
    weights = sum(_tensor_bytes(p) for p in params) + sum(_tensor_bytes(b) for b in model.buffers())
    trainable_params = [p for p in params if p.requires_grad]
    trainable = sum(_tensor_bytes(p) for p in trainable_params)
    trainable_by_dtype: dict[torch.dtype, int] = {}
    for p in trainable_params:
        trainable_by_dtype[p.dtype] = trainable_by_dtype.get(p.dtype, 0) + _tensor_bytes(p)
    element_bytes = params[0].element_size() if params else 4
    if optimizer == "inference":
        trainable = 0
    prompt, prefix = _peft_virtual_tokens(model)
    shape = TransformerShape.from_config(base_model(model).config)
    mode = "kept" if facts.first_order else "live"
    micro = batch_size if micro_batch_size is None else min(micro_batch_size, batch_size)
    activations = activation_bytes(
        shape,
        batch_size=micro,
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
    notes = {
        "shape": asdict(shape), "prompt_tokens": prompt, "prefix_tokens": prefix,
        "micro_batch_size": micro,
    }
    gradients = 0
    if facts.first_order:
        head, tied = _head_gradient_bytes(model)
        start, end = activations + head, trainable + (2 * head if tied else 0)
        if micro < batch_size:  # accumulated gradients live through the next micro-batch
            start += trainable
        notes.update(kept_activations=activations, all_gradients=trainable, head_gradient=head)
        notes["peak_at"] = "start of backward" if start >= end else "end of backward"
        gradients, activations = (start - activations, activations) if start >= end else (end, 0)
    return MemoryEstimate(
        optimizer=optimizer,
        weights=weights,
        trainable=trainable,
        gradients=gradients,
        optimizer_state=sum(
            optimizer_state_bytes(optimizer, size, options, weight_dtype=dtype)
            for dtype, size in trainable_by_dtype.items()
        ) + factor_state_bytes(
            optimizer, [(p.shape, p.dtype) for p in trainable_params], options
        ),
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
