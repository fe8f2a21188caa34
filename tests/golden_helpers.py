"""What every golden-trajectory test shares: the tiny float64 OPT, its batches, the float64
next-token loss, the decay rule of MeZO's and ZO-LLM's trainers, and the run's seed.

The references (tests/test_golden_*.py) run the research code's step, written out, on one
copy of the model and zotune's optimizer on another; both sides use these helpers."""

from __future__ import annotations

import torch
from torch.func import functional_call

from float64_models import in_float64
from zotune.models.random_shapes import random_model

# The run's seed: numpy's stream for MeZO-style trainers (transformers' set_seed), zotune's
# `seed` (with distribution="mezo", step t's seed is the t-th np.random.RandomState(SEED)
# .randint(1000000000)).
SEED = 0


def tiny_opt() -> torch.nn.Module:
    # Eager attention: Forward-Grad's jvp needs it (fused SDPA has no forward-mode AD).
    model = in_float64(random_model("tiny-opt", attn_implementation="eager").model)
    model.eval()  # MeZO's zo_forward: no dropout in the probes
    return model


def batches(count: int, batch_size: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(5, 300, (batch_size, 12), generator=gen) for _ in range(count)]


def lm_loss(model: torch.nn.Module, ids: torch.Tensor, params=None) -> torch.Tensor:
    """Next-token cross-entropy in float64 (transformers' own loss casts logits to float32,
    which would turn ulp-level parameter differences into 1e-7 ones in the estimate)."""
    if params is None:
        logits = model(input_ids=ids).logits
    else:
        logits = functional_call(model, params, (), {"input_ids": ids}).logits
    logits = logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    )


def no_decay(name: str) -> bool:
    """MeZO's and ZO-LLM's test: no decay on biases and LayerNorms."""
    return "bias" in name or "layer_norm" in name or "layernorm" in name
