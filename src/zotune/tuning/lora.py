"""LoRA: rank-r adapters ``ΔW = (α/r)·B·A`` beside chosen linear layers (by default the
attention query and value projections, peft's per-model-type targets, as in MeZO), B
initialised to 0. Applied and merged by the peft library."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..optim.options import in_unit, is_int
from .adapters import quiet_peft, task_type
from .registry import Option, SchemeEntry, positive_int


@quiet_peft
def add_lora(model: torch.nn.Module, options: Mapping[str, Any], tokenizer) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    # Dropout acts in train mode only, which first-order steps use; ZO probes run in eval
    # mode, since a ZO difference needs the same function at θ + εz and θ − εz.
    config = LoraConfig(
        task_type=task_type(model),
        r=options["lora_r"],
        lora_alpha=options["lora_alpha"],
        lora_dropout=options["lora_dropout"],
        target_modules=lora_targets(model, options["lora_target_modules"]),
    )
    return get_peft_model(model, config)


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """The base model with ``(α/r)·B·A`` added into the adapted weights."""
    return model.merge_and_unload()


def lora_targets(model: torch.nn.Module, asked: str | None) -> list[str] | str:
    """LoRA's target modules: ``asked`` (comma-separated module-name suffixes, or
    ``all-linear``), each checked to name a linear layer of ``model``; unset, the attention
    projections (:func:`attention_projections`)."""
    if asked is None:
        return attention_projections(model)
    if asked.strip() == "all-linear":
        return "all-linear"
    names = [name.strip() for name in asked.split(",") if name.strip()]
    linear = {name for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear)}
    for target in names:
        if not any(name == target or name.endswith("." + target) for name in linear):
            suffixes = sorted({name.rsplit(".", 1)[-1] for name in linear})
            raise ValueError(
                f"tuning.lora_target_modules: {target!r} names no linear layer of the model "
                f"(its linear layers end in {', '.join(suffixes)})"
            )
    if not names:
        raise ValueError("tuning.lora_target_modules: empty; name modules or unset it")
    return names


def attention_projections(model: torch.nn.Module) -> list[str]:
    """Names of the attention projections LoRA adapts (module-name suffixes, peft style).

    peft's per-model-type defaults when it has them (query and value: ``q_proj``/``v_proj``,
    RoBERTa's ``query``/``value``); for other models, the linear layers inside the model's
    attention modules (modules whose class name ends in ``Attention``).
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if known:
        return list(known)
    names = sorted(
        {
            child_name
            for module in model.modules()
            if type(module).__name__.endswith("Attention")
            for child_name, child in module.named_children()
            if isinstance(child, torch.nn.Linear)
        }
    )
    if not names:
        raise ValueError(
            f"cannot find attention projections for LoRA in model type {model_type!r}: "
            "no linear layers inside modules named *Attention"
        )
    return names


LORA = SchemeEntry(
    key="lora",
    label="LoRA",
    summary="peft's rank-r adapters on the attention query and value projections",
    apply=add_lora,
    options=(
        positive_int("lora_r", 8, "LoRA rank r"),
        Option("lora_alpha", 16, "LoRA scaling α", kind=int, check=is_int, problem="an int"),
        Option(
            "lora_target_modules", None,
            "LoRA's modules, comma-separated name suffixes (q_proj,v_proj) or all-linear; "
            "unset: the attention query and value projections (MeZO's)",
            kind=str, optional=True,
        ),
        Option(
            "lora_dropout", 0.0,
            "LoRA dropout (first-order steps only: zeroth-order probes run in eval mode)",
            check=in_unit(), problem="in [0, 1)",
        ),
    ),
    eps=1e-2,  # MeZO README, large_models: "LoRA … EPS 1e-2"
    adapter=True,
    merge=merge_lora,
)
