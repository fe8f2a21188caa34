"""Tiny models in float64 throughout, for tests that pin or compare trajectories in float64.

transformers computes some values in fp32 whatever the model's dtype: LlamaRMSNorm's x / rms(x)
and the eager attention's softmax (llama's, OPT's). In a float64 model each such value is
rounded to fp32, a knife edge: two computations of the same step that differ by 1e-16 (another
CPU, another order of the same moves) now and then round one value differently, a jump of
~6e-8 relative that the following steps carry (tests/test_trajectories.py's docstring).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import LlamaRMSNorm, repeat_kv


class Float64RMSNorm(LlamaRMSNorm):
    """LlamaRMSNorm in its input's dtype (transformers' computes x / rms(x) in fp32)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


FLOAT64_EAGER = "zotune-test-float64-eager"


def float64_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0,
                            **kwargs):
    """transformers' eager attention (llama's, OPT's) without its softmax in fp32 (the same
    knife edge as the norm's); the tests' models have no dropout."""
    groups = getattr(module, "num_key_value_groups", 1)  # OPT's attention has none
    key, value = (repeat_kv(t, groups) for t in (key, value))
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = weights.softmax(dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(FLOAT64_EAGER, float64_eager_attention)
AttentionMaskInterface.register(FLOAT64_EAGER, eager_mask)


def in_float64(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in float64 throughout: its norms and eager attention without their fp32
    casts, so no value passes through fp32 and the trajectory is as portable as float64."""
    model = model.double()
    for module in model.modules():
        if type(module) is LlamaRMSNorm:
            module.__class__ = Float64RMSNorm
    if model.config._attn_implementation == "eager":
        model.set_attn_implementation(FLOAT64_EAGER)
    return model
