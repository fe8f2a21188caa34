"""What a (possibly peft-wrapped) model is: causal or masked, its base model, its LM head's
input, the longest input its positions allow."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from .errors import ModelError

KINDS = ("causal", "masked")

# RoBERTa numbers positions from padding_idx + 1 = 2, so two of its position embeddings are
# never a token's (transformers' create_position_ids_from_input_ids).
ROBERTA_RESERVED_POSITIONS = 2


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (``get_base_model()``); else ``model``."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the model can compute logits at its last positions only (causal HF models take
    ``logits_to_keep``; masked LMs do not)."""
    return "logits_to_keep" in inspect.signature(base_model(model).forward).parameters


# Set on an LM head once it has the hook below.
HEAD_HOOK_MARK = "zotune_contiguous_input"


def contiguous_head_input(model: torch.nn.Module) -> None:
    """Hand the LM head a contiguous input (once per head; later calls do nothing).

    A causal LM asked for its last logits only (``logits_to_keep``) slices its hidden states,
    ``h[:, -k:]``, a strided view. When the head's weight does not require a gradient (every
    scheme but full), ``torch.matmul`` does not fold that view into one mm: it runs a batched
    mm against a copy of the weight per row. For SmolLM2's 49,152 × 576 head at batch 16 that
    is a 0.9 GB copy per forward, which made a LoRA ZO step 3× slower than a full one. A
    contiguous input folds, and the logits are the same (bitwise in bf16).
    """
    head = base_model(model).get_output_embeddings()
    if head is None or getattr(head, HEAD_HOOK_MARK, False):
        return
    head.register_forward_pre_hook(_contiguous_first_input)
    setattr(head, HEAD_HOOK_MARK, True)


def _contiguous_first_input(module: torch.nn.Module, args: tuple) -> tuple | None:
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def position_limit(config: Any) -> int | None:
    """The longest input a config's position embeddings allow: ``max_position_embeddings``,
    less RoBERTa's reserved positions; None if the config names no limit."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit and getattr(config, "model_type", "") == "roberta":
        return limit - ROBERTA_RESERVED_POSITIONS
    return limit


# Causal or masked --------------------------------------------------------------------------


def config_kind(config: PretrainedConfig) -> str:
    """``"causal"`` or ``"masked"``, read from a model config.

    The config's ``architectures`` decide when they name an LM head. Without them, a model
    type that has a masked-LM head in transformers is an encoder (BERT-like models also have
    a rarely used causal head, so that test comes first); one with only a causal head is causal.
    """
    for architecture in getattr(config, "architectures", None) or ():
        if architecture.endswith("ForMaskedLM"):
            return "masked"
        if architecture.endswith("ForCausalLM"):
            return "causal"
    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    raise ModelError(f"model type {model_type!r} is neither a causal nor a masked language model")


def model_kind(model: torch.nn.Module) -> str:
    """``"causal"`` or ``"masked"`` for a (possibly peft-wrapped) transformers model."""
    base = base_model(model)
    class_name = type(base).__name__
    if class_name in MODEL_FOR_MASKED_LM_MAPPING_NAMES.values():
        return "masked"
    if class_name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return "causal"
    config = getattr(base, "config", None)
    if config is None:
        raise ModelError(f"{class_name} is not a transformers language model (it has no config)")
    return config_kind(config)


def auto_class(kind: str):
    """The transformers auto class that builds a model of ``kind``."""
    return AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM
