"""Activation memory of a transformer step, from the model's shape alone.

:class:`TransformerShape` reads what the formulas need from a Hugging Face config;
:func:`activation_bytes` counts the activations one forward keeps alive (``"live"``) or
keeps for backprop (``"kept"``). The formulas are in its docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Models whose MLP is gated (down(act(gate(x)) * up(x))): four ffn-wide tensors, not two.
GATED_MLP_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo"}
)


@dataclass(frozen=True)
class TransformerShape:
    """What the activation formulas need from a model config.

    ``hidden`` h, ``ffn`` f, ``layers`` L, ``heads`` a, ``kv_hidden`` h_kv = h · kv_heads / a
    (grouped-query attention shrinks K and V), ``vocab`` V, ``gated`` (LLaMA-style MLP),
    ``activation`` (the MLP's nonlinearity: ReLU's backward needs only its output),
    ``eager`` (attention materialises the a × T × T score matrix; SDPA kernels do not).
    """

    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_hidden: int
    vocab: int
    gated: bool
    eager: bool
    activation: str = "gelu"

    @property
    def kept_ffn_tensors(self) -> int:
        """c_f: ffn-wide tensors backprop keeps per layer (4 gated, 1 ReLU, else 2)."""
        if self.gated:
            return 4  # gate out (SiLU input), up out, SiLU out, product (down input)
        return 1 if self.activation == "relu" else 2  # ReLU's output is also fc2's input

    @classmethod
    def from_config(cls, config: Any) -> TransformerShape:
        hidden = config.hidden_size
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        ffn = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
        if ffn is None:
            raise ValueError(f"config of model type {config.model_type!r} names no ffn width")
        attn = getattr(config, "_attn_implementation", None)
        activation = getattr(config, "activation_function", None) or getattr(
            config, "hidden_act", "gelu"
        )
        return cls(
            hidden=hidden,
            ffn=ffn,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_hidden=hidden * kv_heads // heads,
            vocab=config.vocab_size,
            gated=getattr(config, "model_type", "") in GATED_MLP_TYPES,
            eager=attn == "eager",
            activation=str(activation),
        )


def activation_bytes(
    shape: TransformerShape,
    *,
    batch_size: int,
    seq_len: int,
    mode: str,
    element_bytes: int,
    virtual_tokens: int = 0,
    prefix_tokens: int = 0,
    logits_kept: int = 1,
    kv_cache: bool = False,
) -> int:
    """Activation bytes of one forward (``mode="live"``) or kept for backprop (``"kept"``).

    With N = B·T query rows (T includes prompt tuning's virtual tokens), T_k = T + prefix
    tokens key positions, s the activation element size, per transformer layer:

    kept (backprop keeps every layer's inputs for the backward pass; after Korthikanti et
    al., 2022: for f = 4h and GELU it gives their 34·h bytes per token and layer in fp16
    less the 2·h of the two dropout masks, which fine-tuning in eval mode does not make)::

        attention  N · (2h + h + 2h_kv + h)          norm in/out, q k v, context
                 + B · a · T · T_k      (eager)     softmax probabilities (its backward
                                                    needs only its output)
        mlp        N · (2h + c_f · f)               norm in/out; c_f = 2 (act in, act out),
                                                    1 for ReLU (its output serves both),
                                                    4 if gated (gate, up, act, product)
        total      L · (attention + mlp) + N · 3h + B · K · V · 2

    (N · 3h: embeddings out, final norm in/out; B · K · V · 2: the kept logits and their
    softmax, K = ``logits_kept`` scored positions per row.)

    live (a no-grad forward frees each tensor once its consumer has run, so only one layer's
    working set is alive, on top of the residual stream)::

        attention  N · (h + 2h + h_kv·2 + h) + B · a · T · T_k · 2 (eager)
        mlp        N · (h + h + c'_f · f),    c'_f = 2, or 3 if gated (act, up, product)
        total      N · h + max(attention, mlp) + B · K · V · 2

    The logits term counts the model-dtype logits plus their fp32 log-softmax copy as two
    elements of size s each (close enough at K = 1, where it is small).

    ``kv_cache``: a Hugging Face forward called without ``use_cache=False`` also returns
    every layer's keys and values, so they all stay alive to the end of the forward:
    + L · N · 2h_kv in both modes (zotune's profile passes ``use_cache=False``; prefix
    tuning builds the cache regardless, see
    :func:`zotune.profiling.memory_model.estimate_memory`).
    """
    if mode not in ("live", "kept"):
        raise ValueError(f"unknown activation mode {mode!r} (choose from live, kept)")
    h, f, hkv = shape.hidden, shape.ffn, shape.kv_hidden
    t = seq_len + virtual_tokens
    n = batch_size * t
    probs = batch_size * shape.heads * t * (t + prefix_tokens) if shape.eager else 0
    logits = 2 * batch_size * logits_kept * shape.vocab
    if mode == "kept":
        attention = n * (4 * h + 2 * hkv) + probs
        mlp = n * (2 * h + shape.kept_ffn_tensors * f)
        elements = shape.layers * (attention + mlp) + n * 3 * h + logits
    else:
        attention = n * (4 * h + 2 * hkv) + 2 * probs  # scores and probabilities
        mlp = n * (2 * h + (3 if shape.gated else 2) * f)
        elements = n * h + max(attention, mlp) + logits
    if kv_cache:
        elements += shape.layers * n * 2 * hkv
    return elements * element_bytes

