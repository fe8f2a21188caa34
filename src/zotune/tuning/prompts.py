"""Virtual-token schemes: ``prefix`` (``prefix_tokens`` learned key/value pairs prepended in
every attention layer) and ``prompt`` (``prompt_tokens`` learned input embeddings prepended to
the input; initialised from the embeddings of ``prompt_init_text`` when given, else of random
vocabulary tokens). Applied by the peft library.

Real-activation prefix init (MeZO ``large_models/prefix.py`` and ZO-Bench
``zo-bench/prefix_tuning.py``, ``PrefixTuning(init_by_real_act=True)``; on in MeZO's
``mezo.sh``/``finetune.sh`` and by default in ``zo-bench/run.py``): draw ``t`` of shape
``[1, prefix_tokens]`` with ``torch.randint(0, vocab_size)`` (the global RNG), run the bare
model on it with a key/value cache, and set virtual token ``j`` of layer ``l`` to the cached
``(K_l[:, j], V_l[:, j])``. Masked LMs have no cache and get the random init (MeZO's
``prefix.py`` raises ``NotImplementedError`` for RoBERTa); asking them for ``"real"`` is an
error.

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
from collections.abc import Mapping
from typing import Any

import torch

from ..models.anatomy import model_kind
from ..models.offload import execution_device
from .adapters import quiet_peft, task_type
from .registry import Option, SchemeEntry, positive_int

PREFIX_INITS = ("real", "random")


@quiet_peft
def add_prefix(model: torch.nn.Module, options: Mapping[str, Any], tokenizer) -> torch.nn.Module:
    """Prefix tuning; ``prefix_init`` None picks real for causal LMs, random for masked ones."""
    from peft import PrefixTuningConfig, get_peft_model

    kind = model_kind(model)
    prefix_init = options["prefix_init"]
    if prefix_init is None:
        prefix_init = "real" if kind == "causal" else "random"
    if prefix_init == "real" and kind != "causal":
        raise ValueError(
            "prefix_init='real' needs a causal LM's key/value cache; use 'random' for masked LMs"
        )
    tokens = options["prefix_tokens"]
    # MeZO's prefix is the tokens' cache before any wrapping (large_models/prefix.py).
    real = real_prefix_activations(model, tokens) if prefix_init == "real" else None
    tuned = get_peft_model(
        model, PrefixTuningConfig(task_type=task_type(model), num_virtual_tokens=tokens)
    )
    if real is not None:
        _set_prefix(tuned, real)
    positions_as_trained(tuned)
    return tuned


@quiet_peft
def add_prompt(model: torch.nn.Module, options: Mapping[str, Any], tokenizer) -> torch.nn.Module:
    """Prompt tuning; ``prompt_init_text`` needs the tokenizer."""
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    tokens, init_text = options["prompt_tokens"], options["prompt_init_text"]
    if init_text is None:
        # Random real-token embeddings keep the prompt at the scale of the model's inputs
        # (peft's RANDOM init draws N(0, 1), far larger than typical embeddings).
        config = PromptTuningConfig(
            task_type=task_type(model),
            num_virtual_tokens=tokens,
            prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
        )
        tuned = get_peft_model(model, config)
    else:
        if tokenizer is None:
            raise ValueError("prompt_init_text needs the model's tokenizer (pass tokenizer=...)")
        # peft reloads the tokenizer by path; a saved copy works for in-memory and hub
        # tokenizers alike, offline.
        with tempfile.TemporaryDirectory(prefix="zotune-tokenizer-") as folder:
            tokenizer.save_pretrained(folder)
            config = PromptTuningConfig(
                task_type=task_type(model),
                num_virtual_tokens=tokens,
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=init_text,
                tokenizer_name_or_path=folder,
            )
            tuned = get_peft_model(model, config)
    positions_as_trained(tuned)
    return tuned


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


def positions_as_trained(tuned: torch.nn.Module) -> None:
    """Number the tokens of a peft prefix or prompt model as zotune trains it (module docstring):
    prompt tuning's virtual tokens first; prefix tuning's real tokens from 0, as MeZO and ZO-LLM.
    Call it on a :class:`peft.PeftModel` loaded from an exported adapter."""
    from peft import PeftType

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


# The lines an exported adapter's model card adds after loading it, and why.
LOADING = (
    "# number positions as the run did (see below):",
    "from zotune.tuning import positions_as_trained",
    "positions_as_trained(model)",
)

PREFIX = SchemeEntry(
    key="prefix",
    summary="peft's learned key/value pairs prepended in every attention layer",
    apply=add_prefix,
    options=(
        positive_int("prefix_tokens", 5, "prefix-tuning virtual tokens"),
        Option(
            "prefix_init", None,
            "prefix initialisation: real (the model's own key/values for real tokens, as "
            "MeZO; the default for causal LMs) or random",
            kind=str, choices=PREFIX_INITS, optional=True,
        ),
    ),
    # ZO-LLM zo-bench/sweeps/SST2_opt-1.3b/zo_sgd/zo_sgd_cls_prefix.yml; MeZO README
    eps=1e-1,
    adapter=True,
    after_loading=LOADING,
    loading_note=(
        "**Positions differ in plain peft.** The run numbered the real tokens 0, 1, ... as "
        "MeZO and ZO-LLM do (their prefix lives inside attention); peft numbers them after "
        "the prefix tokens. Without `positions_as_trained` this adapter computes a different "
        "function from the one trained and evaluated, and its predictions differ."
    ),
)

PROMPT = SchemeEntry(
    key="prompt",
    summary="peft's learned input embeddings prepended to the input",
    apply=add_prompt,
    options=(
        positive_int("prompt_tokens", 10, "prompt-tuning virtual tokens"),
        Option("prompt_init_text", None, "initialise the soft prompt from this text", kind=str,
               optional=True),
    ),
    # the middle of zo-bench/sweeps/SST2_opt-1.3b/zo_sgd/zo_sgd_cls_prompt.yml's 1e-2…1e-4
    # (MeZO has no prompt tuning)
    eps=1e-3,
    adapter=True,
    after_loading=LOADING,
    loading_note=(
        "The run numbered a left-padded row's positions from its attention mask; without "
        "`positions_as_trained` peft numbers the columns, so scores of padded rows differ "
        "slightly."
    ),
)
