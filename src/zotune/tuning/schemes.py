"""Tuning schemes: which parameters a run trains. Adapters come from the peft library.

=========== ===================================================================================
scheme      trainable parameters
=========== ===================================================================================
``full``    every parameter of the model
``lora``    rank-r adapters ``ΔW = (α/r)·B·A`` on the attention query and value projections
            (peft's per-model-type targets, as in MeZO), B initialised to 0
``prefix``  ``prefix_tokens`` learned key/value pairs prepended in every attention layer
``prompt``  ``prompt_tokens`` learned input embeddings prepended to the input; initialised from
            the embeddings of ``prompt_init_text`` when given, else of random vocabulary tokens
``head``    the output head only (linear probing): its weight, and bias where it has one. A head
            tied to the input embeddings is untied first (a copy of its own, the config's
            ``tie_word_embeddings`` off), as MeZO's ``--head_tuning --untie_emb``
            (``large_models/run.py``); training the tied tensor would move the inputs too
=========== ===================================================================================

Real-activation prefix init (MeZO ``large_models/prefix.py`` and ZO-Bench
``zo-bench/prefix_tuning.py``, ``PrefixTuning(init_by_real_act=True)``; on in MeZO's
``mezo.sh``/``finetune.sh`` and by default in ``zo-bench/run.py``): draw ``t`` of shape
``[1, prefix_tokens]`` with ``torch.randint(0, vocab_size)`` (the global RNG), run the bare
model on it with a key/value cache, and set virtual token ``j`` of layer ``l`` to the cached
``(K_l[:, j], V_l[:, j])``. Masked LMs have no cache and get the random init (MeZO's
``prefix.py`` raises ``NotImplementedError`` for RoBERTa); asking them for ``"real"`` is an
error.

Causal LMs use peft's ``CAUSAL_LM`` task type. Masked LMs use ``FEATURE_EXTRACTION``: its
wrapper passes the call straight through to the masked-LM model (so the output still holds
MLM logits) and, unlike the task-less base wrapper, applies prefix and prompt tokens.

Prompt tuning prepends its virtual tokens to the model's outputs too: output column
``prompt_tokens + t`` belongs to input column ``t`` (the scorer accounts for it).

Positions of the real tokens. A left-padded row's real tokens must sit at the same positions
whatever the padding, or a row's score depends on the rows batched with it. Plain models get
this from their own code (OPT and RoBERTa derive positions from the mask or the pad ids; RoPE
models see only relative positions between real tokens). With virtual tokens it breaks: RoPE
models number every column, so the distance from a real token to the virtual ones grows with
the padding, and RoBERTa numbers ``inputs_embeds`` columns blindly. So prefix and prompt models
get a forward pre-hook on the base model that derives ``position_ids`` from the attention mask
(padding skipped), the way ``generate`` does:

* prompt tuning: the virtual tokens are input columns and come first (0 … n − 1), the real
  tokens after them, as ZO-LLM's ``prompt_tuning.py`` prepends them to the input embeddings;
* prefix tuning: the real tokens keep positions 0 … T − 1, as MeZO and ZO-LLM compute them.
  Their prefix is injected inside each attention module (MeZO ``large_models/prefix.py:23-55``,
  ZO-LLM ``zo-bench/prefix_tuning.py:24-58``: ``attn_forward_hook`` hands the layer a
  ``past_key_value`` and widens the layer's mask), so the model itself never sees a cache: OPT
  numbers positions from the unwidened mask and LLaMA from ``past_key_values_length = 0``.
  peft instead passes the prefix as the model's cache, and transformers then numbers the real
  tokens from n (peft even adds n to ``position_ids`` a caller or ``generate`` gives). The hook
  numbers them from the mask columns after the n prefix columns, in place of any given; the
  cache positions (where keys are written, which columns the causal mask opens) stay peft's.

An adapter exported from a prefix run and loaded in plain peft therefore scores with shifted
positions (a different function on every model with position information): call
:func:`positions_as_trained` on the loaded peft model (``zotune export`` says so in the model
card).
"""

from __future__ import annotations

import tempfile
import warnings
from typing import Any

import torch
from peft import (
    LoraConfig,
    PeftType,
    PrefixTuningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
)
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from ..config import TuningConfig
from ..models.anatomy import model_kind
from ..models.offload import execution_device

SCHEMES = ("full", "lora", "prefix", "prompt", "head")
PREFIX_INITS = ("real", "random")


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
    as keywords (``apply_tuning(model, "lora", lora_r=4)``). ``full`` returns ``model``
    itself; the others wrap it in a peft model (which adds adapter tensors and freezes the
    base model's). ``tokenizer`` is needed for ``prompt_init_text``. ``prefix_init`` is
    ``"real"`` or ``"random"``; None picks real for causal LMs, random for masked ones.
    """
    if isinstance(tuning, str):
        tuning = TuningConfig(scheme=tuning, **options)
    elif options:
        raise TypeError(f"apply_tuning got a tuning section and keywords {sorted(options)}")
    scheme, prefix_init = tuning.scheme, tuning.prefix_init
    lora_r = tuning.lora_r
    if not 0 <= tuning.lora_dropout < 1:
        raise ValueError(f"invalid lora_dropout: {tuning.lora_dropout!r} (must be in [0, 1))")
    prefix_tokens, prompt_tokens = tuning.prefix_tokens, tuning.prompt_tokens
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tuning scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    kind = model_kind(model)
    if prefix_init is None:
        prefix_init = "real" if kind == "causal" else "random"
    if prefix_init not in PREFIX_INITS:
        raise ValueError(
            f"unknown prefix_init {prefix_init!r} (choose from {', '.join(PREFIX_INITS)})"
        )
    if scheme == "prefix" and prefix_init == "real" and kind != "causal":
        raise ValueError(
            "prefix_init='real' needs a causal LM's key/value cache; use 'random' for masked LMs"
        )
    for value, what in (
        (lora_r, "lora_r"),
        (prefix_tokens, "prefix_tokens"),
        (prompt_tokens, "prompt_tokens"),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"invalid {what}: {value!r} (must be an int >= 1)")
    if scheme == "full":
        model.requires_grad_(True)
        return model
    if scheme == "head":
        return _head_only(model)
    with warnings.catch_warnings():
        # peft asks transformers 5 a deprecated question on wrapping; the user cannot act on it.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated",
                                category=FutureWarning)
        return _peft_scheme(model, scheme, kind, tuning, tokenizer, prefix_init)


def _peft_scheme(model, scheme, kind, tuning, tokenizer, prefix_init):
    """LoRA, prefix or prompt tuning: ``model`` wrapped in its peft model."""
    lora_r, lora_alpha = tuning.lora_r, tuning.lora_alpha
    prefix_tokens, prompt_tokens = tuning.prefix_tokens, tuning.prompt_tokens
    task_type = TaskType.CAUSAL_LM if kind == "causal" else TaskType.FEATURE_EXTRACTION
    if scheme == "lora":
        # Dropout acts in train mode only, which first-order steps use; ZO probes run in eval
        # mode, since a ZO difference needs the same function at θ + εz and θ − εz.
        config = LoraConfig(
            task_type=task_type,
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=tuning.lora_dropout,
            target_modules=lora_targets(model, tuning.lora_target_modules),
        )
        return get_peft_model(model, config)
    if scheme == "prefix":
        # MeZO's prefix is the tokens' cache before any wrapping (large_models/prefix.py).
        real = real_prefix_activations(model, prefix_tokens) if prefix_init == "real" else None
        config = PrefixTuningConfig(task_type=task_type, num_virtual_tokens=prefix_tokens)
        tuned = get_peft_model(model, config)
        if real is not None:
            _set_prefix(tuned, real)
    else:
        tuned = _prompt_tuning(model, task_type, tokenizer, prompt_tokens, tuning.prompt_init_text)
    positions_as_trained(tuned)
    return tuned


def _head_only(model: torch.nn.Module) -> torch.nn.Module:
    """Freeze everything but the output head, untying it from the input embeddings first."""
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


def real_prefix_activations(
    model: torch.nn.Module, num_tokens: int
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """``(tokens, [(K_l, V_l) per layer])``: the key/value cache of ``model`` run on
    ``num_tokens`` tokens drawn uniformly from its vocabulary (``torch.randint``, as
    ``large_models/prefix.py`` draws them). ``K_l``, ``V_l``: [heads, num_tokens, head_dim]."""
    device = execution_device(model)
    tokens = torch.randint(0, model.config.vocab_size, (1, num_tokens), dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(input_ids=tokens.to(device), use_cache=True)
    finally:
        model.train(was_training)
    cache = getattr(output, "cache", None) or output.past_key_values
    return tokens[0], [(layer.keys[0], layer.values[0]) for layer in cache.layers]


def _set_prefix(tuned, real) -> None:
    """Write the per-layer (K, V) into peft's prefix embedding.

    peft reads virtual token ``j``'s embedding row as ``[layers · 2, heads, head_dim]``, row
    ``2l`` the keys and ``2l + 1`` the values of layer ``l`` (``PeftModel.get_prompt``).
    """
    _, layers = real
    embedding = tuned.prompt_encoder[tuned.active_adapter].embedding
    stacked = torch.stack([tensor for pair in layers for tensor in pair])  # [2L, H, n, D]
    rows = stacked.permute(2, 0, 1, 3).reshape(stacked.shape[2], -1)
    if rows.shape != embedding.weight.shape:
        raise ValueError(
            f"the model's key/value cache has shape {tuple(rows.shape)} per prefix, peft's "
            f"prefix embedding {tuple(embedding.weight.shape)}; use prefix_init='random'"
        )
    with torch.no_grad():
        embedding.weight.copy_(rows.to(embedding.weight))


def _prompt_tuning(model, task_type, tokenizer, prompt_tokens, init_text):
    if init_text is None:
        # Random real-token embeddings keep the prompt at the scale of the model's inputs
        # (peft's RANDOM init draws N(0, 1), far larger than typical embeddings).
        config = PromptTuningConfig(
            task_type=task_type,
            num_virtual_tokens=prompt_tokens,
            prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
        )
        return get_peft_model(model, config)
    if tokenizer is None:
        raise ValueError("prompt_init_text needs the model's tokenizer (pass tokenizer=...)")
    # peft reloads the tokenizer by path; a saved copy works for in-memory and hub tokenizers
    # alike, offline.
    with tempfile.TemporaryDirectory(prefix="zotune-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        config = PromptTuningConfig(
            task_type=task_type,
            num_virtual_tokens=prompt_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=init_text,
            tokenizer_name_or_path=folder,
        )
        return get_peft_model(model, config)


def positions_as_trained(tuned: torch.nn.Module) -> None:
    """Number the tokens of a peft prefix or prompt model as zotune trains it (module docstring):
    prompt tuning's virtual tokens first; prefix tuning's real tokens from 0, as MeZO and ZO-LLM.
    Call it on a :class:`peft.PeftModel` loaded from an exported adapter."""
    config = tuned.active_peft_config
    prefix_columns = config.num_virtual_tokens if config.peft_type == PeftType.PREFIX_TUNING else 0
    derive_positions_from_mask(tuned.get_base_model(), prefix_columns=prefix_columns)


def derive_positions_from_mask(model: torch.nn.Module, prefix_columns: int = 0) -> None:
    """Make ``model`` number its tokens by the attention mask when the caller gives no positions.

    The first ``prefix_columns`` columns of the mask (a prefix held in the cache) get no
    position, and position ids passed in are replaced: peft adds ``prefix_columns`` to any it
    is given (``generate`` gives them), which would shift the real tokens again; without a
    mask (``generate`` drops an all-ones one) the real tokens are the cache's columns after the
    prefix. After them, column ``t`` of a row gets ``start + (number of unmasked columns up to
    t) − 1``; ``start`` is 0, or ``padding_idx + 1`` for RoBERTa-style position embeddings that
    reserve the pad index. peft passes the mask already extended over the virtual tokens.
    """
    start = _first_position(model)

    def fill_positions(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        inputs = kwargs.get("input_ids")
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        given = kwargs.get("position_ids") is not None and not prefix_columns
        if given or inputs is None or args:
            return None
        if prefix_columns:
            _one_cache(kwargs)
        if mask is None:  # generate drops an all-ones mask: count the cache's real columns
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if not prefix_columns or cache is None:
                return None
            first = cache.get_seq_length() - prefix_columns + start
            columns = torch.arange(first, first + inputs.shape[1], device=inputs.device)
            kwargs["position_ids"] = columns.expand(inputs.shape[0], -1)
            return args, kwargs
        mask = mask[:, prefix_columns:].long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0) * mask + start
        kwargs["position_ids"] = positions[:, -inputs.shape[1] :]
        return args, kwargs

    model.register_forward_pre_hook(fill_positions, with_kwargs=True)


def _one_cache(kwargs: dict[str, Any]) -> None:
    """Give the model peft's prefix as its one cache during ``generate``.

    transformers 5 names the cache ``cache``; ``generate`` passes its own (empty at first) under
    that name while peft passes the prefix as ``past_key_values``, and the model keeps ``cache``
    and drops the prefix. The prefix goes in while ``generate``'s cache is empty; afterwards the
    cache already holds it (the model returns the cache it wrote to) and peft's fresh copy goes.
    """
    if "cache" not in kwargs or "past_key_values" not in kwargs:
        return
    prefix = kwargs.pop("past_key_values")
    cache = kwargs["cache"]
    if cache is None or not cache.get_seq_length():
        kwargs["cache"] = prefix


def _first_position(model: torch.nn.Module) -> int:
    for module in model.modules():
        table = getattr(module, "position_embeddings", None)
        if isinstance(table, torch.nn.Embedding) and table.padding_idx is not None:
            return table.padding_idx + 1
    return 0


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


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; tied tensors count once."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total
