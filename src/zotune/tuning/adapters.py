"""What the peft schemes share: the task type a model is wrapped with, and the wrapping."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..models.anatomy import model_kind


def task_type(model: torch.nn.Module):
    """peft's task type for ``model``.

    Causal LMs use ``CAUSAL_LM``. Masked LMs use ``FEATURE_EXTRACTION``: its wrapper passes
    the call straight through to the masked-LM model (so the output still holds MLM logits)
    and, unlike the task-less base wrapper, applies prefix and prompt tokens.
    """
    from peft import TaskType

    return TaskType.CAUSAL_LM if model_kind(model) == "causal" else TaskType.FEATURE_EXTRACTION


def quiet_peft(apply: Callable[..., Any]) -> Callable[..., Any]:
    """``apply`` without the deprecation warning peft's wrapping raises under transformers 5
    (it asks transformers a deprecated question; the user cannot act on it)."""

    @functools.wraps(apply)
    def applied(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated",
                                    category=FutureWarning)
            return apply(*args, **kwargs)

    return applied
