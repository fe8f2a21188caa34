"""Randomly initialised models of named shapes: tiny ones for tests, and real-size ones
(OPT-125m … LLaMA-7B) for memory and time profiling. They need no files and no network; their
tokenizer is the byte-level one built in memory (:mod:`zotune.models.byte_tokenizer`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaConfig, MistralConfig, OPTConfig, PretrainedConfig, RobertaConfig

from .anatomy import auto_class, config_kind, position_limit
from .byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, byte_tokenizer
from .errors import ModelError
from .loading import LoadedModel, resolve_device, resolve_dtype

TINY_VOCAB = 320  # ≥ BYTE_VOCAB_SIZE, a multiple of 64
_TINY_IDS = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}

# name → (config class, config values). Tiny shapes are for tests; the others carry the real
# models' published config values, for memory and time profiling without downloading them.
SHAPES: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    "tiny-llama": (
        LlamaConfig,
        {
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": TINY_VOCAB,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "tie_word_embeddings": False,
            **_TINY_IDS,
        },
    ),
    "tiny-mistral": (
        MistralConfig,
        {
            "architectures": ["MistralForCausalLM"],
            "vocab_size": TINY_VOCAB,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "sliding_window": 256,
            **_TINY_IDS,
        },
    ),
    "tiny-opt": (
        OPTConfig,
        {
            "architectures": ["OPTForCausalLM"],
            "vocab_size": TINY_VOCAB,
            "hidden_size": 32,
            "word_embed_proj_dim": 32,
            "ffn_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 512,
            "dropout": 0.0,
            **_TINY_IDS,
        },
    ),
    "tiny-roberta": (
        RobertaConfig,
        {
            "architectures": ["RobertaForMaskedLM"],
            "vocab_size": TINY_VOCAB,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 514,  # RoBERTa's positions start after the pad index
            "type_vocab_size": 1,
            **_TINY_IDS,
        },
    ),
    # facebook/opt-125m
    "opt-125m": (
        OPTConfig,
        {
            "architectures": ["OPTForCausalLM"],
            "vocab_size": 50272,
            "hidden_size": 768,
            "word_embed_proj_dim": 768,
            "ffn_dim": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 2048,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 2,
        },
    ),
    # facebook/opt-1.3b
    "opt-1.3b": (
        OPTConfig,
        {
            "architectures": ["OPTForCausalLM"],
            "vocab_size": 50272,
            "hidden_size": 2048,
            "word_embed_proj_dim": 2048,
            "ffn_dim": 8192,
            "num_hidden_layers": 24,
            "num_attention_heads": 32,
            "max_position_embeddings": 2048,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 2,
        },
    ),
    # facebook/opt-13b (MeZO's memory comparison: OPT-13B on MultiRC)
    "opt-13b": (
        OPTConfig,
        {
            "architectures": ["OPTForCausalLM"],
            "vocab_size": 50272,
            "hidden_size": 5120,
            "word_embed_proj_dim": 5120,
            "ffn_dim": 20480,
            "num_hidden_layers": 40,
            "num_attention_heads": 40,
            "max_position_embeddings": 2048,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 2,
        },
    ),
    # meta-llama/Llama-2-7b-hf
    "llama-7b": (
        LlamaConfig,
        {
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    ),
    # HuggingFaceTB/SmolLM2-135M-Instruct (the embedded model)
    "smollm2-135m": (
        LlamaConfig,
        {
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 49152,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "tie_word_embeddings": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 2,
        },
    ),
}


def shape_config(shape: str) -> PretrainedConfig:
    """The config of a named random shape (a fresh object each call)."""
    if shape not in SHAPES:
        raise ModelError(f"unknown model shape {shape!r} (choose from {', '.join(SHAPES)})")
    config_class, values = SHAPES[shape]
    return config_class(**values)


def random_model(
    shape: str,
    *,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> LoadedModel:
    """A randomly initialised model of a named shape (see :data:`SHAPES`), in eval mode.

    The initialisation draws from a forked RNG seeded with ``seed``: the same seed gives the
    same weights, and the caller's global RNG state is left as it was.
    """
    config = shape_config(shape)
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    kind = config_kind(config)
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices), torch_device:
        torch.manual_seed(seed)
        model = auto_class(kind).from_config(
            config, dtype=torch_dtype, attn_implementation=attn_implementation
        )
    model.eval()
    tokenizer = byte_tokenizer(kind, model_max_length=position_limit(config))
    return LoadedModel(model=model, tokenizer=tokenizer, name=f"random:{shape}", kind=kind)
