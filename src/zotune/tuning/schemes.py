"""A run's tuning scheme applied to its model, through the scheme registry
(:mod:`zotune.tuning.registry`), and the trainable-parameter count."""

from __future__ import annotations

from typing import Any

import torch

from ..config import TuningConfig, build_config
from .registry import get_scheme


def apply_tuning(
    model: torch.nn.Module,
    tuning: TuningConfig | str,
    *,
    tokenizer=None,
    **options: Any,
) -> torch.nn.Module:
    """The model ready for its tuning scheme: exactly its trainable tensors have
    ``requires_grad``.

    ``tuning`` is a run config's tuning section, or a scheme name with that section's keys
    as keywords (``apply_tuning(model, "lora", lora_r=4)``), checked as a config's are.
    ``full`` and ``head`` return ``model`` itself; the adapter schemes wrap it in a peft model
    (which adds adapter tensors and freezes the base model's). ``tokenizer`` is needed for
    ``prompt_init_text``.
    """
    if isinstance(tuning, str):
        tuning = build_config({"tuning": {"scheme": tuning, **options}}).tuning
    elif options:
        raise TypeError(f"apply_tuning got a tuning section and keywords {sorted(options)}")
    entry = get_scheme(tuning.scheme)
    return entry.apply(model, {o.name: getattr(tuning, o.name) for o in entry.options}, tokenizer)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; tied tensors count once."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total
