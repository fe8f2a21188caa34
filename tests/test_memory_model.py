"""The analytic memory model: optimizer state, direction scratch, activations, the estimate."""

from __future__ import annotations

import pytest
import torch

from zotune.models.random_shapes import shape_config
from zotune.optim import OPTIMIZERS
from zotune.profiling.activations import TransformerShape, activation_bytes
from zotune.profiling.memory_model import (
    MemoryEstimate,
    estimate_memory,
    factor_state_bytes,
    optimizer_state_bytes,
    scratch_bytes,
)
from zotune.utils.measure import MB


def test_state_per_optimizer():
    trainable = 1000
    assert {name: optimizer_state_bytes(name, trainable) for name in OPTIMIZERS} == {
        "zo-sgd": 0,
        "zo-sgd-mmt": 1000,
        "zo-sgd-cons": 0,
        "zo-sgd-sign": 0,
        "zo-adam": 2000,
        "forward-grad": 0,
        "fo-sgd": 0,
        "fo-adam": 2000,
        "lozo": 0,  # their state is low-rank factors: factor_state_bytes
        "lozo-m": 0,
        "subzero": 0,
        "hizoo": 1000,  # the Hessian estimate
        "mezo-svrg": 0,  # the anchor estimate is a seed and a scalar
        "sparse-mezo": 0,
    }
    assert optimizer_state_bytes("fo-sgd", trainable, {"momentum": 0.9}) == 1000
    assert optimizer_state_bytes("subzero", trainable, {"momentum": 0.9}) == 1000
    assert optimizer_state_bytes("mezo-svrg", trainable, {"control_at": "anchor"}) == 1000
    with pytest.raises(ValueError, match="'sgd'"):
        optimizer_state_bytes("sgd", trainable)


def test_low_rank_factor_state():
    """LOZO keeps V (n×r) and the U of each probed and update seed (m×r); SubZero U, V and
    U Σ; vectors their z; fp32 for bf16 weights, never parameter-sized for matrices."""
    shapes = [((64, 32), torch.float32), ((32,), torch.float32)]
    assert factor_state_bytes("lozo", shapes, {"lozo_rank": 2}) == 4 * (
        (32 + 2 * 64) * 2 + 2 * 32
    )
    assert factor_state_bytes("lozo-m", shapes, {"lozo_rank": 2}) == 4 * (
        (32 + 2 * 64 + 64 + 32) * 2 + 3 * 32
    )
    assert factor_state_bytes("subzero", shapes, {"subzero_rank": 4}) == 4 * (
        (64 + 32 + 64 + 4) * 4 + 32
    )
    bf16 = [((64, 32), torch.bfloat16)]
    assert factor_state_bytes("lozo", bf16) == factor_state_bytes(
        "lozo", [((64, 32), torch.float32)]
    )
    assert factor_state_bytes("zo-sgd", shapes) == 0


@pytest.mark.parametrize(
    ("optimizer", "dtype", "per_value"),
    [
        ("zo-adam", torch.bfloat16, 8),
        ("zo-adam", torch.float16, 8),
        ("zo-adam", torch.float32, 8),
        ("zo-sgd-mmt", torch.bfloat16, 4),
        ("fo-adam", torch.float16, 8),
        ("zo-sgd", torch.bfloat16, 0),
    ],
    ids=["zo-adam-bf16", "zo-adam-fp16", "zo-adam-fp32", "mmt-bf16", "fo-adam-fp16",
         "zo-sgd-bf16"],
)
def test_state_of_half_weights_is_fp32(optimizer, dtype, per_value):
    """State bytes per trainable value: fp16/bf16 weights keep fp32 state (2 × 4 bytes for
    Adam, four times the weights' 2 bytes)."""
    values = 1000
    trainable = values * torch.empty((), dtype=dtype).element_size()
    assert optimizer_state_bytes(optimizer, trainable, weight_dtype=dtype) == per_value * values


def test_estimate_counts_fp32_state_for_bf16_weights(tiny_model):
    model, _ = tiny_model("tiny-llama")
    model.to(torch.bfloat16)
    values = sum(p.numel() for p in model.parameters() if p.requires_grad)
    estimate = estimate_memory(model, "zo-adam", batch_size=2, seq_len=8)
    assert estimate.optimizer_state == 2 * 4 * values


@pytest.mark.parametrize("scheme", ["full", "lora"])
def test_estimate_is_consistent_across_optimizers(tiny_model, scheme):
    model, _ = tiny_model("tiny-llama", scheme)
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    weights = sum(p.numel() * 4 for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )
    kwargs = {"batch_size": 4, "seq_len": 32, "device": "cpu"}
    est = {name: estimate_memory(model, name, **kwargs) for name in (*OPTIMIZERS, "inference")}
    for name, e in est.items():
        assert e.weights == weights, name
        assert e.total == e.weights + e.gradients + e.optimizer_state + e.scratch + e.activations
    assert est["zo-sgd"].optimizer_state == 0 and est["zo-sgd"].gradients == 0
    assert est["zo-adam"].optimizer_state == 2 * trainable
    assert est["zo-sgd-mmt"].optimizer_state == trainable
    for name in ("fo-sgd", "fo-adam"):
        notes = est[name].notes
        assert notes["all_gradients"] == trainable
        assert est[name].gradients + est[name].activations == max(
            notes["kept_activations"] + notes["head_gradient"], trainable
        )  # tiny-llama's head is not tied to its embedding
    assert est["fo-sgd"].optimizer_state == 0
    assert est["fo-adam"].optimizer_state == 2 * trainable
    # FO keeps every layer's activations; ZO and inference hold one layer's working set.
    assert est["fo-sgd"].notes["kept_activations"] > 2 * est["zo-sgd"].activations
    assert est["zo-sgd"].activations == est["inference"].activations
    assert est["forward-grad"].activations == 2 * est["zo-sgd"].activations
    assert est["inference"].trainable == 0 and est["inference"].scratch == 0
    assert est["zo-sgd"].as_dict()["above_weights"] == est["zo-sgd"].total - weights


def test_scratch_is_the_noise_table_on_cpu_and_a_chunk_on_cuda():
    from zotune.estimators.directions import DEFAULT_CHUNK_NUMEL, DEFAULT_TABLE_NUMEL

    args = {"element_bytes": 4, "largest_trainable_numel": 10**8, "trainable_numel": 10**9}
    assert scratch_bytes("zo-sgd", device="cpu", **args) == DEFAULT_TABLE_NUMEL * 4
    assert scratch_bytes("zo-sgd", device="cuda", **args) == DEFAULT_CHUNK_NUMEL * 4
    assert (
        scratch_bytes("zo-adam", device="cpu", **args)
        == (DEFAULT_TABLE_NUMEL + DEFAULT_CHUNK_NUMEL) * 4
    )
    assert scratch_bytes("zo-sgd", device="cpu", distribution="gaussian", **args) == (
        DEFAULT_CHUNK_NUMEL * 4
    )
    assert scratch_bytes("fo-adam", device="cpu", **args) == 0
    assert scratch_bytes("mezo-ref", device="cpu", **args) == 4 * 10**8 * 4
    assert scratch_bytes("forward-grad", device="cuda", **args) == 10**9 * 4
    small = {**args, "largest_trainable_numel": 100}
    assert scratch_bytes("zo-sgd", device="cuda", **small) == 400  # never above the tensor


def test_kept_activations_match_korthikanti_for_a_gelu_transformer():
    """Korthikanti et al.'s 34·h bytes per token and layer in fp16 when f = 4h, less the two
    dropout masks (2·h bytes) that eval-mode fine-tuning does not make."""
    relu = TransformerShape.from_config(shape_config("opt-125m"))
    assert (relu.hidden, relu.ffn, relu.layers, relu.gated) == (768, 3072, 12, False)
    assert relu.activation == "relu" and relu.kept_ffn_tensors == 1
    gelu = TransformerShape(**{**relu.__dict__, "activation": "gelu"})
    one_token = activation_bytes(gelu, batch_size=1, seq_len=1, mode="kept", element_bytes=2)
    logits = 2 * gelu.vocab * 2
    assert one_token == gelu.layers * (34 - 2) * gelu.hidden + 3 * gelu.hidden * 2 + logits
    # ReLU keeps one ffn-wide tensor, not two: 4h fewer elements per layer.
    saved = one_token - activation_bytes(
        relu, batch_size=1, seq_len=1, mode="kept", element_bytes=2
    )
    assert saved == relu.layers * relu.ffn * 2


def test_kv_cache_adds_every_layers_keys_and_values():
    shape = TransformerShape.from_config(shape_config("tiny-llama"))
    args = {"batch_size": 3, "seq_len": 10, "mode": "live", "element_bytes": 4}
    extra = activation_bytes(shape, kv_cache=True, **args) - activation_bytes(shape, **args)
    assert extra == shape.layers * 30 * 2 * shape.kv_hidden * 4


def test_fo_activations_grow_with_seq_len_and_zo_stays_small():
    shape = TransformerShape.from_config(shape_config("tiny-llama"))
    kept = [
        activation_bytes(shape, batch_size=4, seq_len=t, mode="kept", element_bytes=4)
        for t in (64, 128, 256, 512)
    ]
    live = [
        activation_bytes(shape, batch_size=4, seq_len=t, mode="live", element_bytes=4)
        for t in (64, 128, 256, 512)
    ]
    assert kept == sorted(kept) and kept[-1] > 6 * kept[0]
    assert all(k > 2 * v for k, v in zip(kept, live, strict=True))


def test_eager_attention_adds_the_quadratic_score_term():
    sdpa = TransformerShape.from_config(shape_config("tiny-llama"))
    eager = TransformerShape(**{**sdpa.__dict__, "eager": True})
    args = {"batch_size": 2, "mode": "kept", "element_bytes": 4}
    extra = [
        activation_bytes(eager, seq_len=t, **args) - activation_bytes(sdpa, seq_len=t, **args)
        for t in (16, 32)
    ]
    per_layer = 2 * sdpa.heads * 16 * 16 * 4  # B · a · T · T probabilities
    assert extra == [sdpa.layers * per_layer, sdpa.layers * per_layer * 4]
    # A forward holds scores and probabilities at once, but one layer at a time.
    live = {**args, "mode": "live", "seq_len": 16}
    assert 0 < activation_bytes(eager, **live) - activation_bytes(sdpa, **live) <= 2 * per_layer


def test_prompt_tuning_lengthens_the_sequence(tiny_model):
    plain, _ = tiny_model("tiny-llama", "lora")
    prompt, _ = tiny_model("tiny-llama", "prompt", prompt_tokens=10)
    args = {"batch_size": 2, "seq_len": 20}
    est = estimate_memory(prompt, "zo-sgd", **args)
    assert est.notes["prompt_tokens"] == 10
    assert est.activations > estimate_memory(plain, "zo-sgd", **args).activations


def test_estimate_on_the_meta_device_sizes_llama_7b_without_allocating():
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape_config("llama-7b"), dtype=torch.float16)
    est = estimate_memory(model, "fo-adam", batch_size=1, seq_len=64, device="cuda")
    assert 6.7e9 * 2 < est.weights < 6.8e9 * 2
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    # Adam's m and v are fp32 for fp16 weights: 2 × 4 bytes per 2-byte trainable value.
    assert est.optimizer_state == 2 * 4 * (est.weights - buffers) // 2
    assert est.breakdown_mb().startswith("W 1285")


@pytest.mark.parametrize("tied", [True, False])
def test_fo_peak_is_the_larger_end_of_backward(tied, tiny_config):
    from transformers import AutoModelForCausalLM

    config = tiny_config(vocab_size=8000, hidden_size=64, intermediate_size=128,
                         num_key_value_heads=4, tie_word_embeddings=tied)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = 8000 * 64 * 4
    short = estimate_memory(model, "fo-sgd", batch_size=1, seq_len=8)
    assert short.notes["peak_at"] == "end of backward" and short.activations == 0
    assert short.notes["head_gradient"] == head
    assert short.gradients == short.notes["all_gradients"] + (2 * head if tied else 0)
    long = estimate_memory(model, "fo-sgd", batch_size=8, seq_len=2048)
    assert long.notes["peak_at"] == "start of backward"
    assert long.gradients == head and long.activations == long.notes["kept_activations"]


def test_a_frozen_head_has_no_head_gradient(tiny_model):
    model, _ = tiny_model("tiny-llama", "lora")
    est = estimate_memory(model, "fo-adam", batch_size=2, seq_len=8)
    assert est.notes["head_gradient"] == 0


def test_breakdown_line_sums_to_total():
    est = MemoryEstimate("zo-sgd", 10 * MB, 10 * MB, 0, 0, 2 * MB, 3 * MB, "live")
    assert est.breakdown_mb() == "W 10 + G 0 + S 0 + Z 2 + A 3 = 15 MB"


def test_prefix_tuning_counts_the_key_value_cache_it_builds(tiny_model):
    lora, _ = tiny_model("tiny-llama", "lora")
    prefix, _ = tiny_model("tiny-llama", "prefix", prefix_tokens=5)
    est = estimate_memory(prefix, "zo-sgd", batch_size=2, seq_len=20)
    assert est.notes["prefix_tokens"] == 5 and est.notes["prompt_tokens"] == 0
    shape = TransformerShape.from_config(shape_config("tiny-llama"))
    cache = shape.layers * 2 * 20 * 2 * shape.kv_hidden * 4
    plain = estimate_memory(lora, "zo-sgd", batch_size=2, seq_len=20).activations
    assert est.activations >= plain + cache
