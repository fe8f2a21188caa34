"""Gradient estimators: statistics, exactness of the derivative, in-place probing."""

from __future__ import annotations

import math

import pytest
import torch

from zotune.estimators import (
    DirectionSampler,
    ForwardGradientEstimator,
    IndexedParam,
    RandomGradientEstimator,
)
from zotune.estimators.base import shift
from zotune.optim import ForwardGrad, create_optimizer


def logistic_problem(dim: int = 12):
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, dim, generator=gen)
    labels = (torch.rand(64, generator=gen) > 0.5).float()
    w = (0.3 * torch.randn(dim, generator=gen)).requires_grad_()
    loss = lambda: torch.nn.functional.binary_cross_entropy_with_logits(inputs @ w, labels)  # noqa: E731
    return w, loss


def materialize(estimator, params, estimate) -> torch.Tensor:
    """ĝ as a dense vector (tests only: zotune never builds it)."""
    shift(params, estimator.sampler, [(estimate.seeds[-1], -estimate.offset)])
    return sum(
        coeff * estimator.sampler.direction(params[0].param, seed, params[0].index)
        for seed, coeff in estimate.terms
    )


@pytest.mark.parametrize("probe", ["two-point", "one-sided"])
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher", "table"])
def test_rge_mean_points_along_the_true_gradient(probe, distribution):
    w, loss = logistic_problem()
    true = torch.autograd.grad(loss(), w)[0]
    estimator = RandomGradientEstimator(eps=1e-3, q=4, probe=probe, distribution=distribution)
    params = [IndexedParam(0, w)]
    mean = torch.zeros_like(w)
    with torch.no_grad():
        for seed in range(1000):
            mean += materialize(estimator, params, estimator.estimate(params, loss, seed)) / 1000
    cosine = torch.nn.functional.cosine_similarity(mean, true, dim=0)
    assert cosine >= 0.9
    # Unbiased: the mean's length matches the gradient's, not just its direction.
    assert mean.norm() == pytest.approx(true.norm().item(), rel=0.2)


@pytest.mark.parametrize("distribution", ["gaussian", "table"])
def test_single_estimate_is_unbiased_in_expectation_per_coordinate(distribution):
    """E[ĝ] = ∇f: the spread of the mean around the gradient shrinks like 1/√n."""
    w, loss = logistic_problem(dim=4)
    true = torch.autograd.grad(loss(), w)[0]
    estimator = RandomGradientEstimator(eps=1e-3, distribution=distribution)
    params = [IndexedParam(0, w)]
    with torch.no_grad():
        samples = torch.stack(
            [
                materialize(estimator, params, estimator.estimate(params, loss, s))
                for s in range(4000)
            ]
        )
    stderr = samples.std(0) / math.sqrt(len(samples))
    assert ((samples.mean(0) - true).abs() < 4 * stderr).all()


@pytest.fixture
def tiny_llama(tiny_config):
    """Factory ``tiny_llama(attn_implementation)``: a seeded tiny LLaMA of 64 tokens."""

    def build(attn_implementation: str):
        from transformers import LlamaForCausalLM

        config = tiny_config(vocab_size=64, max_position_embeddings=32)
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation)
        return model.eval()

    return build


def test_forward_grad_directional_derivative_matches_autograd_on_a_causal_lm(tiny_llama):
    model = tiny_llama("eager")
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    loss = lambda: model(input_ids=ids, labels=ids).loss  # noqa: E731
    params = [IndexedParam(i, p) for i, p in enumerate(model.parameters())]
    estimator = ForwardGradientEstimator()
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        estimate = estimator.estimate(params, loss, seed=7)
    grads = torch.autograd.grad(loss(), list(model.parameters()))
    directional = sum(
        (g * estimator.sampler.direction(item.param, estimate.seeds[0], item.index)).sum()
        for g, item in zip(grads, params, strict=True)
    )
    assert estimate.coeffs[0] == pytest.approx(directional.item(), rel=1e-4)
    # The dual level leaves the parameters as they were, with no tangent attached.
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
        assert torch.autograd.forward_ad.unpack_dual(p).tangent is None


@pytest.mark.parametrize("scheme", ["full", "lora"])
def test_forward_grad_in_fp16_matches_fp32_on_a_layernorm_model(scheme, tiny_config):
    """OPT at its init scale (std 0.02) feeds LayerNorm rows whose rstd³ passes fp16's
    65,504; PyTorch's LayerNorm JVP computes it in the input's dtype, so every tangent after
    the first LayerNorm was NaN, fp32 LoRA adapters over an fp16 base included. The estimate
    must be finite and the fp32 one's, within fp16 rounding."""
    from transformers import OPTForCausalLM

    from zotune.tuning.schemes import apply_tuning

    ids = torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    derivatives = {}
    for dtype in (torch.float32, torch.float16):
        torch.manual_seed(0)
        base = OPTForCausalLM._from_config(tiny_config("tiny-opt"), attn_implementation="eager")
        model = apply_tuning(base.to(dtype).eval(), scheme)
        params = [IndexedParam(i, p) for i, p in enumerate(model.parameters())
                  if p.requires_grad]
        with torch.no_grad():
            estimate = ForwardGradientEstimator().estimate(
                params, lambda m=model: m(input_ids=ids, labels=ids).loss, seed=3
            )
        derivatives[dtype] = estimate.coeffs[0]
    assert math.isfinite(derivatives[torch.float16])
    assert derivatives[torch.float16] == pytest.approx(derivatives[torch.float32], rel=0.05)


def test_forward_grad_on_fused_attention_names_the_fix(tiny_llama):
    model = tiny_llama("sdpa")
    ids = torch.randint(0, 64, (1, 6))
    opt = ForwardGrad(model, lr=1e-3)
    with pytest.raises(RuntimeError, match="attn_implementation='eager'"):
        opt.step(lambda: model(input_ids=ids, labels=ids).loss)


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher", "table"])
def test_directions_are_reproducible_and_moment_matched(distribution):
    sampler = DirectionSampler(distribution, chunk_numel=1000)
    param = torch.empty(50, 70)  # several chunks, the last one partial
    z = sampler.direction(param, seed=5, index=3)
    assert torch.equal(z, sampler.direction(param, seed=5, index=3))
    assert abs(z.mean().item()) < 0.05
    assert z.var().item() == pytest.approx(1.0, rel=0.05)
    if distribution == "rademacher":
        assert set(z.unique().tolist()) == {-1.0, 1.0}
    pieces = torch.cat(
        [sampler.draw(view, 5, 3, chunk).clone() for chunk, view in sampler.views(param)]
    )
    assert torch.equal(pieces, z.flatten())


def max_abs_correlation(vectors: torch.Tensor) -> float:
    corr = torch.corrcoef(vectors)
    return (corr - torch.eye(len(corr))).abs().max().item()


@pytest.mark.parametrize("distribution", ["gaussian", "table"])
def test_directions_of_different_tensors_steps_queries_and_chunks_are_uncorrelated(distribution):
    chunk = 1 << 13
    sampler = DirectionSampler(distribution, chunk_numel=chunk)
    like = torch.empty(4 * chunk)
    keys = [(0, 0), (0, 1), (1, 0), (2, 7)]  # (query/step seed, tensor index)
    whole = torch.stack([sampler.direction(like, seed, index) for seed, index in keys])
    assert max_abs_correlation(whole) < 0.03  # 32768 entries: 1/√n ≈ 0.0055
    assert max_abs_correlation(whole[0].view(4, chunk)) < 0.05  # 8192 entries: ≈ 0.011


def test_scratch_stays_one_chunk_however_large_the_tensor():
    sampler = DirectionSampler("gaussian", chunk_numel=1 << 10)
    param = torch.zeros(1 << 16)
    shift([IndexedParam(0, param)], sampler, [(1, 1.0)])
    assert all(buf.numel() <= 1 << 10 for buf in sampler._scratch.values())


@pytest.mark.parametrize("distribution", ["gaussian", "table"])
def test_combined_moves_equal_sequential_moves(distribution):
    sampler = DirectionSampler(distribution, chunk_numel=100)
    a, b = torch.zeros(300, dtype=torch.float64), torch.zeros(300, dtype=torch.float64)
    shift([IndexedParam(0, a)], sampler, [(1, 0.5), (2, -0.25)])
    shift([IndexedParam(0, b)], sampler, [(1, 0.5)])
    shift([IndexedParam(0, b)], sampler, [(2, -0.25)])
    torch.testing.assert_close(a, b)


def ulp(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x.abs(), torch.tensor(math.inf, dtype=x.dtype)) - x.abs()


@pytest.mark.parametrize("name", ["zo-sgd", "zo-adam"])
def test_probing_restores_fp32_parameters_to_rounding(name):
    """In place, θ + εz − 2εz + εz equals θ only up to rounding; zotune bounds it.

    Bit-identical in-place restoration is impossible in floating point (about half of the
    entries of a random fp32 tensor differ by an ulp after one cycle). The fused restore
    leaves each entry within a few ulps of |θ| + 2ε|z|, with no drift in expectation.
    """
    torch.manual_seed(0)
    weight = (0.02 * torch.randn(200, 50)).requires_grad_()
    before = weight.detach().clone()
    eps = 1e-3
    opt = create_optimizer(name, [weight], lr=0.0, eps=eps)
    opt.step(lambda: (weight**2).sum())
    # |z| < 6 for every value of the noise table (and for a 10,000-entry normal draw).
    bound = 4 * ulp(before.abs() + 12 * eps)
    assert ((weight.detach() - before).abs() <= bound).all()


def test_thousand_probe_cycles_do_not_drift_fp32():
    torch.manual_seed(0)
    weight = (0.02 * torch.randn(10000)).requires_grad_()
    before = weight.detach().clone()
    opt = create_optimizer("zo-sgd", [weight], lr=0.0, eps=1e-3)
    for _ in range(1000):
        opt.step(lambda: weight.sum())
    drift = (weight.detach() - before).abs()
    # A random walk of ±1-ulp roundings: about √1000 ≈ 32 ulps typical, never systematic.
    assert (drift / ulp(before)).median() < 64
    assert abs((weight.detach() - before).mean().item()) < 1e-9
