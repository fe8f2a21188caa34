"""Schemes that train the model's own tensors: ``full`` (every parameter) and ``head`` (the
output head only, linear probing)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .registry import SchemeEntry


def train_everything(
    model: torch.nn.Module, options: Mapping[str, Any], tokenizer
) -> torch.nn.Module:
    model.requires_grad_(True)
    return model


def train_head(
    model: torch.nn.Module, options: Mapping[str, Any], tokenizer
) -> torch.nn.Module:
    """Freeze everything but the output head (its weight, and bias where it has one).

    A head tied to the input embeddings is untied first (a copy of its own, the config's
    ``tie_word_embeddings`` off), as MeZO's ``--head_tuning --untie_emb``
    (``large_models/run.py``): training the tied tensor would move the inputs too.
    """
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output head to tune (tuning 'head')")
    untie_output_embeddings(model)
    model.requires_grad_(False)
    head.requires_grad_(True)
    return model


def untie_output_embeddings(model: torch.nn.Module) -> bool:
    """Give the output head a weight of its own if it shares the input embeddings'; returns
    whether it did. The config says so too (``tie_word_embeddings=False``), so that a saved
    model loads back untied."""
    head, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or inputs is None or head.weight is not inputs.weight:
        return False
    head.weight = torch.nn.Parameter(inputs.weight.detach().clone())
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    # transformers 5 keeps the tied names apart from the config; save_pretrained reads them.
    model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    return True


FULL = SchemeEntry(
    key="full",
    summary="every parameter of the model",
    apply=train_everything,
    eps=1e-3,  # MeZO's default
)

HEAD = SchemeEntry(
    key="head",
    summary="the output head only (linear probing), untied from the input embeddings",
    apply=train_head,
    eps=1e-3,  # MeZO large_models/run.py's zo_eps default; its --head_tuning runs set no other
)
