"""The work a measurement times: the spec's model, a synthetic batch, and one step.

The batch is exactly B × T tokens, scored at the last position only (``logits_to_keep=1``,
as :class:`zotune.evaluation.scoring.Scorer` does for a single-token candidate).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..models.anatomy import accepts_logits_to_keep, base_model, contiguous_head_input
from ..models.offload import execution_device
from .spec import ProfileSpec


def attention_for(method: str, attn: str | None) -> str | None:
    """The attention implementation ``method`` needs (its registry entry says; forward-grad
    needs eager), else ``attn``."""
    from ..optim.registry import entry, names

    return entry(method).attention_implementation(attn) if method in names() else attn


def synthetic_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int, device):
    """Token ids [B, T] (no padding), an all-ones mask and one target per row, seeded.

    Ids avoid the first five (the special tokens of zotune's byte tokenizer).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    low = 5 if vocab_size > 5 else 0
    ids = torch.randint(low, vocab_size, (batch_size, seq_len + 1), generator=generator)
    return (
        ids[:, :-1].contiguous().to(device),
        torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
        ids[:, -1].contiguous().to(device),
    )


def last_position_loss(model, batch, keep: bool, micro_batch_size: int | None = None
                       ) -> Callable[[], Any]:
    """The closure: cross-entropy of the last position's next-token logits.

    With ``keep`` the model computes logits for that position only (``logits_to_keep=1``),
    the same saving the scorer makes; otherwise (masked LMs) the full logits are computed
    and the last column is read. ``use_cache=False``: a causal LM otherwise builds a
    key/value cache of every layer that lives to the end of the forward (2·L·h values per
    token, ≈ 2/3 of the no-grad working set of OPT-125m), which training never reads.
    With ``micro_batch_size`` below B the rows go through in parts, the loss their
    row-weighted mean, as a training run's micro-batches (:mod:`zotune.training.micro_batches`).
    """
    import torch.nn.functional as F

    from ..training.micro_batches import accumulate

    input_ids, attention_mask, targets = batch
    extra = {"logits_to_keep": 1, "use_cache": False} if keep else {}

    def rows(start: int, stop: int) -> Callable[[], Any]:
        def loss():
            logits = model(input_ids=input_ids[start:stop],
                           attention_mask=attention_mask[start:stop], **extra).logits
            return F.cross_entropy(logits[:, -1].float(), targets[start:stop])
        return loss

    size = len(input_ids)
    if micro_batch_size is None or micro_batch_size >= size:
        return rows(0, size)
    starts = range(0, size, micro_batch_size)
    parts = [(start, min(start + micro_batch_size, size)) for start in starts]
    losses = [rows(start, stop) for start, stop in parts]
    fractions = [(stop - start) / size for start, stop in parts]
    return lambda: accumulate(losses, fractions)


@dataclass
class BuiltStep:
    """``step()`` makes one step; ``forward()`` one no-grad forward of the same loss."""

    model: Any
    step: Callable[[], Any]
    forward: Callable[[], Any]
    forward_passes: int
    optimizer: Any
    keep: bool


def build_model(spec: ProfileSpec):
    """The spec's model with its tuning scheme applied, in eval mode: a training run's
    :func:`zotune.training.run.build_model` (the same loading, placement, attention and
    tuning), with the global RNG left as it was.

    With ``spec.offload`` the model is built on ``spec.device`` (a random OPT-13B
    initialises in seconds on a GPU, in minutes on a CPU), moved to CPU memory and placed
    as ``model.device_map="cpu_offload"`` places it: every weight in CPU memory, copied to
    ``spec.device`` for each module's forward. It must fit on the device once, to be built.
    """
    import torch

    from ..config import build_config
    from ..models.placement import place_on_devices
    from ..optim.registry import names
    from ..training.run import build_model as build_run_model

    config = build_config({
        "model": {
            "name": spec.model, "dtype": spec.dtype, "device": spec.device,
            "attn_implementation": spec.attn_implementation, "matmul": spec.matmul,
        },
        "tuning": {"scheme": spec.scheme},
        # The optimizer decides the attention (forward-grad needs eager); the reference
        # methods (inference, mezo-ref) need none.
        "optimizer": {"name": spec.method if spec.method in names() else "zo-sgd"},
        "train": {"seed": spec.seed},
    })
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_run_model(config).model
    if spec.offload:
        model.to("cpu")  # one module-wise move keeps tied weights tied
        place_on_devices(model, "cpu_offload", spec.device)
    if spec.compile:
        from ..models.compiled import compile_model

        compile_model(model)
    return model


def build_step(spec: ProfileSpec, model=None) -> BuiltStep:
    """A zero-argument callable that makes one step of ``spec.method`` on its batch."""
    import torch

    from ..models.mixed_precision import under_autocast
    from ..optim import create_optimizer
    from .mezo_reference import MezoReferenceStep

    model = build_model(spec) if model is None else model
    device = execution_device(model)
    batch = synthetic_batch(
        base_model(model).config.vocab_size, spec.batch_size, spec.seq_len, spec.seed, device
    )
    keep = accepts_logits_to_keep(model)
    if keep:  # as the scorer does, so the profile measures what training runs
        contiguous_head_input(model)
    loss = under_autocast(
        last_position_loss(model, batch, keep, spec.micro_batch_size), spec.autocast, device
    )
    forward = torch.no_grad()(loss)
    if spec.method == "inference":
        return BuiltStep(model, forward, forward, 1, None, keep)
    if spec.method == "mezo-ref":
        reference = MezoReferenceStep(model.named_parameters(), lr=spec.lr, seed=spec.seed)
        return BuiltStep(model, lambda: reference.step(loss), forward, 2, reference, keep)
    optimizer = create_optimizer(spec.method, model, lr=spec.lr, **spec.options)
    passes = getattr(optimizer, "forward_passes_per_step", 1)
    return BuiltStep(model, lambda: optimizer.step(loss), forward, passes, optimizer, keep)
