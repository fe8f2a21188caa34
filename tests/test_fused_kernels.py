"""The fused bf16 passes (zotune.kernels): the same legs as the torch path, exact restore,
unbiased stochastic rounding, a portable trajectory, and the fallback."""

import hashlib
import math

import pytest
import torch

from zotune import kernels
from zotune.enhance.sparse import ThresholdMaskedSampler, magnitude_quantile
from zotune.estimators.base import shift
from zotune.estimators.directions import DirectionSampler, IndexedParam
from zotune.estimators.low_rank import Factored, LOZODirections, SubZeroDirections
from zotune.kernels.passes import split_factored, split_fusable
from zotune.optim import create_optimizer
from zotune.optim.rules import TensorContext
from zotune.optim.stochastic_rounding import apply_update_

needs_kernel = pytest.mark.skipif(kernels.library() is None, reason="no C compiler")

# Small chunks and table so that chunks split tensors and table reads wrap.
SMALL = {"chunk_numel": 1000, "table_numel": 1 << 12}


def weights(numel: int, seed: int, low: float = 1.25, width: float = 0.5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (low + width * torch.rand(numel, generator=generator)).to(torch.bfloat16)


@needs_kernel
@pytest.mark.parametrize("eps", [1e-2, 1e-3, 3e-5])
@pytest.mark.parametrize("sizes", [(5000,), (1, 999, 4097)])
def test_fused_legs_round_once(eps, sizes):
    """Each leg is θ ← bf16(fp32(θ + bf16(s)·z)): the scale rounded to bf16 as torch's
    ``bf16.add_(z, alpha=s)`` rounds it, the sum exact before its fp32 rounding (float64
    holds it exactly here), then rounded to nearest-even bf16. (Torch's own scalar tail
    rounds bf16(s)·z to bf16 first, so the torch path can differ in the last elements.)"""
    params = [IndexedParam(i, weights(n, i)) for i, n in enumerate(sizes)]
    expected = [item.param.clone() for item in params]
    sampler = DirectionSampler(**SMALL)
    legs = [(11, eps), (11, -eps), (11, -eps), (12, 2 * eps)]
    shift(params, sampler, legs[:1])
    shift(params, sampler, legs[1:])
    for item, value in zip(params, expected, strict=True):
        for seed, scale in legs:
            z = sampler.direction(value, seed, item.index).double()
            step = torch.tensor(scale, dtype=torch.bfloat16).double()
            value.copy_((value.double() + step * z).float().to(torch.bfloat16))
        assert torch.equal(item.param.view(torch.int16), value.view(torch.int16))


@needs_kernel
def test_probe_legs_restore_bit_exactly():
    """+εz, −εz −εz, +εz lands on θ for entries away from the power-of-two bands."""
    theta = weights(20000, 0)
    param = theta.clone()
    params, sampler = [IndexedParam(3, param)], DirectionSampler(**SMALL)
    for seed in range(5):
        shift(params, sampler, [(seed, 1e-2)])
        shift(params, sampler, [(seed, -1e-2), (seed, -1e-2)])
        shift(params, sampler, [(seed, 1e-2)])
    assert torch.equal(param.view(torch.int16), theta.view(torch.int16))


@needs_kernel
def test_fused_stochastic_rounding_is_unbiased():
    """E[SR(θ + αz)] = θ + αz: over 64 rounding seeds the mean error, in ulps, is within five
    standard errors of 0, per element band and overall, for a move of ≈ 0.3 ulp."""
    theta = weights(1 << 14, 1)  # ulp 2**-7 in [1.25, 1.75)
    sampler = DirectionSampler(**SMALL)
    z = sampler.direction(theta, 21, 0).float()
    alpha = 0.3 * 2**-7
    target = theta.float() + alpha * z
    errors = []
    for seed in range(64):
        param = theta.clone()
        apply_update_([IndexedParam(0, param)], sampler, [(21, alpha)], seed)
        errors.append((param.float() - target) / 2**-7)
    error = torch.stack(errors)
    assert error.abs().max() < 1  # one of the two neighbours
    # Per element the error has variance p(1 − p) ≤ 1/4 (ulp²), independent across seeds.
    standard_error = 0.5 / math.sqrt(error.numel())
    assert abs(error.mean().item()) < 5 * standard_error
    per_element = error.mean(0)
    assert per_element.abs().max() < 5 * 0.5 / math.sqrt(64) + 0.1


@needs_kernel
def test_fused_restore_and_update_equal_the_torch_path_in_distribution(monkeypatch):
    """The fused restore+update and the torch ops land on the same neighbours: the
    restore is bit-identical and the update differs at most by one ulp (an fp32 product
    rounded with or without fma decides rare carries)."""
    results = []
    for switch in ("1", "0"):
        monkeypatch.setenv(kernels.SWITCH, switch)
        param = weights(5000, 2)
        params, sampler = [IndexedParam(0, param)], DirectionSampler(**SMALL)
        shift(params, sampler, [(8, 1e-3)])
        apply_update_(params, sampler, [(8, 1e-4)], 99, keep=0.999, legs=[(8, -1e-3)])
        results.append(param.float())
    ulps = (results[0] - results[1]).abs() / 2**-7
    assert ulps.max() <= 1
    assert (ulps > 0).float().mean() < 0.01


def masked_sampler(params: list[IndexedParam], keep: float = 0.6) -> ThresholdMaskedSampler:
    """Sparse-MeZO's sampler over ``params``: each tensor masked at its own ``keep``-quantile
    of |θ|, so that chunks carry packed masks (the last one a partial byte)."""
    thresholds = {item.index: magnitude_quantile([item], keep) for item in params}
    sampler = ThresholdMaskedSampler(DirectionSampler(**SMALL), params, thresholds)
    sampler.set_step(0)
    return sampler


def whole_mask(sampler: ThresholdMaskedSampler, item: IndexedParam) -> torch.Tensor:
    """The sampler's mask of a whole tensor, chunk by chunk, as float64 0/1."""
    return torch.cat([sampler.mask(view.numel(), item.index, chunk, view.device).double()
                      for chunk, view in sampler.views(item.param)])


@needs_kernel
@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000, 1027])
@pytest.mark.parametrize("threshold", [0.0, 0.30058125, 0.5, 1e30])
def test_fused_mask_packing_equals_the_torch_ops(numel, threshold):
    """Sparse-MeZO's mask of a bf16 chunk packed in one sweep equals
    pack_bits(|θ| ≤ h) from the torch ops, h rounded to bf16 as torch's comparison rounds it
    (0.30058125 lies below the bf16 value 0.30078125 it rounds to), for ±0, the bf16 values
    around h, negatives and NaN."""
    from zotune.enhance.sparse import pack_bits
    from zotune.kernels.passes import fused_pack_small

    generator = torch.Generator().manual_seed(numel)
    edges = torch.tensor([0.0, -0.0, 0.30078125, -0.30078125, 0.2988281, 0.5, -0.5, float("nan")])
    values = torch.cat([edges, torch.randn(numel, generator=generator)])[:numel]
    view = values[torch.randperm(numel, generator=generator)].to(torch.bfloat16)
    fused = fused_pack_small(view, threshold)
    assert torch.equal(fused, pack_bits(view.abs() <= threshold))


@needs_kernel
@pytest.mark.parametrize("sizes", [(5000,), (3, 999, 4097)])
def test_fused_masked_legs_move_only_the_kept_values_and_round_once(sizes):
    """Sparse-MeZO's legs in the fused pass: θ ← bf16(fp32(θ + bf16(s)·(m ⊙ z))) from the
    packed masks, computed here in float64 from the sampler's unpacked ones; masked-out
    values keep their bits."""
    params = [IndexedParam(i, weights(n, 20 + i, low=-1.0, width=2.0)) for i, n in
              enumerate(sizes)]
    sampler = masked_sampler(params)
    assert split_fusable(params, sampler)[0] == params
    expected = [item.param.clone() for item in params]
    legs = [(11, 1e-2), (11, -1e-2), (11, -1e-2), (12, 2e-3)]
    shift(params, sampler, legs)
    for item, value in zip(params, expected, strict=True):
        kept = whole_mask(sampler, item)
        assert 0.3 < kept.mean() < 0.9
        for seed, scale in legs:
            z = DirectionSampler(**SMALL).direction(value, seed, item.index).double() * kept
            step = torch.tensor(scale, dtype=torch.bfloat16).double()
            value.copy_((value.double() + step * z).float().to(torch.bfloat16))
        assert torch.equal(item.param.view(torch.int16), value.view(torch.int16))
        untouched = kept == 0
        assert torch.equal(item.param[untouched], value[untouched])


@needs_kernel
def test_fused_masked_restore_and_update_equal_the_torch_path(monkeypatch):
    """Sparse-MeZO's restore + stochastically rounded update, fused against the torch ops
    (the mask unpacked and multiplied in every pass): the same bits but for rare one-ulp
    carries, as for the unmasked pass; masked-out values do not move."""
    results = []
    for switch in ("1", "0"):
        monkeypatch.setenv(kernels.SWITCH, switch)
        param = weights(5000, 2, low=-1.0, width=2.0)
        start = param.clone()
        params = [IndexedParam(0, param)]
        sampler = masked_sampler(params)
        assert bool(split_fusable(params, sampler)[0]) == (switch == "1")
        shift(params, sampler, [(8, 1e-3)])
        apply_update_(params, sampler, [(8, 1e-2)], 99, legs=[(8, -1e-3)])
        results.append(param.float())
        kept = whole_mask(sampler, params[0])
    ulps = (results[0] - results[1]).abs() / (results[1].abs() * 2**-7)
    assert ulps.max() <= 1
    assert (ulps > 0).float().mean() < 0.01
    assert torch.equal(results[0][kept == 0], start.float()[kept == 0])
    assert (results[0][kept == 1] != start.float()[kept == 1]).float().mean() > 0.5


def low_rank_sampler(kind: str, params: list[IndexedParam]):
    """LOZO's (rank 2) or SubZero's (rank 4, matrices viewed square) directions over
    ``params``, at step 0, drawing from small chunks so that chunks split rows."""
    base = DirectionSampler(**SMALL)
    if kind == "lozo":
        sampler = LOZODirections(base, params, 3, rank=2, interval=5)
    else:
        sampler = SubZeroDirections(base, params, 3, rank=4, interval=5, square=True)
    sampler.set_step(0)
    return sampler


def matrices(seed: int, low: float = 1.25, width: float = 0.5) -> list[IndexedParam]:
    """Two bf16 matrices (one with rows longer than a chunk) and a vector, which stays dense."""
    shapes = ((40, 130), (3, 1500), (64,))
    return [IndexedParam(i, weights(math.prod(shape), seed + i, low, width).view(shape))
            for i, shape in enumerate(shapes)]


@needs_kernel
@pytest.mark.parametrize("kind", ["lozo", "subzero"])
def test_fused_low_rank_legs_round_once(kind):
    """The factored pass: z = bf16(σ · L R) formed per element, then each leg
    θ ← bf16(fp32(θ + bf16(s)·z)). Factors on a grid of 1/8 in [−2, 2] make every product
    and partial sum exact in fp32, so float64 computes the same z (LOZO: σ = 1; SubZero's σ
    is one fp32 rounding either way); the vector is left to the torch ops."""
    params = matrices(30, low=-1.0, width=2.0)
    sampler = low_rank_sampler(kind, params)
    generator = torch.Generator().manual_seed(1)
    for drawn in sampler.drawn(11).values():
        if isinstance(drawn, Factored):
            for factor in (drawn.left, drawn.right):
                factor.copy_(torch.randint(-16, 17, factor.shape, generator=generator) / 8)
    entries, rest = split_factored(params, sampler, [11])
    fused = [entry.item for entry in entries]
    assert [item.index for item in fused] == [0, 1] and [item.index for item in rest] == [2]
    expected = [item.param.clone() for item in fused]
    legs = [(11, 1e-2), (11, -1e-2), (11, -1e-2), (11, 2e-3)]
    shift(params, sampler, legs)
    for item, value in zip(fused, expected, strict=True):
        drawn = sampler.drawn(11)[item.index]
        product = (drawn.left.double() @ drawn.right.double()).reshape(-1)
        z = (product * torch.tensor(drawn.scale, dtype=torch.float32).double()).float()
        z = z.to(torch.bfloat16).double().view(value.shape)
        for _, scale in legs:
            step = torch.tensor(scale, dtype=torch.bfloat16).double()
            value.copy_((value.double() + step * z).float().to(torch.bfloat16))
        assert torch.equal(item.param.view(torch.int16), value.view(torch.int16))


@needs_kernel
@pytest.mark.parametrize("kind", ["lozo", "subzero"])
def test_fused_low_rank_pass_equals_the_torch_path(monkeypatch, kind):
    """Probe legs, then restore + stochastically rounded update, fused against the torch ops
    (an fp32 block per chunk, rounded into bf16, added per leg): the probes' legs land back
    on θ (away from the power-of-two bands), and the two paths agree but for an element
    whose z a BLAS summed in another order (one bf16 ulp of z, rare)."""
    results = []
    for switch in ("1", "0"):
        monkeypatch.setenv(kernels.SWITCH, switch)
        params = matrices(40)
        start = [item.param.clone() for item in params]
        sampler = low_rank_sampler(kind, params)
        shift(params, sampler, [(8, 1e-2)])
        shift(params, sampler, [(8, -1e-2), (8, -1e-2)])
        shift(params, sampler, [(8, 1e-2)])
        for item, value in zip(params, start, strict=True):
            assert torch.equal(item.param.view(torch.int16), value.view(torch.int16))
        shift(params, sampler, [(8, 1e-2)])
        apply_update_(params, sampler, [(8, -1e-1), (9, 2e-1)], 99, legs=[(8, -1e-2)])
        results.append(torch.cat([item.param.float().view(-1) for item in params]))
    moved = torch.cat([value.float().view(-1) for value in start]) != results[1]
    assert moved.float().mean() > 0.9
    ulps = (results[0] - results[1]).abs() / (results[1].abs() * 2**-7)
    assert ulps.max() <= 1
    assert (ulps > 0).float().mean() < 1e-3


@needs_kernel
def test_fused_hessian_legs_land_back_on_theta():
    """HiZOO's probes in the fused pass (d = bf16(z/√H)): +εd, −εd −εd, +εd lands on θ for
    entries away from the power-of-two bands, with H far from 1, and moves θ in between."""
    from zotune.kernels.passes import fused_hessian_pass_, split_hessian

    theta = weights(20000, 5)
    params = [IndexedParam(0, theta.clone())]
    hessian = torch.rand(20000, generator=torch.Generator().manual_seed(6)) * 4 + 0.25
    sampler = DirectionSampler(**SMALL)
    assert split_hessian(params, sampler, [hessian]) == ([0], [])
    for legs in ([1e-2], [-1e-2, -1e-2]):
        fused_hessian_pass_(params, [hessian], sampler, 7, legs)
        assert not torch.equal(params[0].param, theta)
    fused_hessian_pass_(params, [hessian], sampler, 7, [1e-2])
    assert torch.equal(params[0].param.view(torch.int16), theta.view(torch.int16))


@needs_kernel
@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_fused_hizoo_steps_equal_the_torch_path(monkeypatch, decay):
    """Six HiZOO steps on bf16 weights (probes, then restore, H and the stochastically
    rounded update in one sweep) against the torch ops: H agrees to a few fp32 roundings
    and θ but for rare one-ulp carries (fma against separate operations in torch's adds)."""
    results = []
    for switch in ("1", "0"):
        monkeypatch.setenv(kernels.SWITCH, switch)
        params = [weights(math.prod(shape), 50 + i, low=1.0, width=1.0).view(shape)
                  .requires_grad_() for i, shape in enumerate(((30, 100), (64,)))]
        opt = create_optimizer("hizoo", params, lr=1e-3, eps=1e-2, seed=5,
                               hessian_smooth=0.3, weight_decay=decay)
        opt.estimator.sampler = DirectionSampler(**SMALL)
        for _ in range(6):
            opt.step(exact_loss(params))
        hessians = [opt.state[p]["hessian"].clone() for p in params]
        results.append(([p.detach().float() for p in params], hessians))
    (fused, fused_h), (ops, ops_h) = results
    for h, h_ops in zip(fused_h, ops_h, strict=True):
        assert not torch.equal(h_ops, torch.ones_like(h_ops))
        assert ((h - h_ops).abs() <= 8 * torch.finfo(torch.float32).eps * h_ops).all()
    theta, theta_ops = torch.cat([t.view(-1) for t in fused]), torch.cat([t.view(-1) for t in ops])
    ulps = (theta - theta_ops).abs() / (theta_ops.abs() * 2**-7)
    assert ulps.max() <= 1
    assert (ulps > 0).float().mean() < 0.01


def exact_loss(params: list[torch.Tensor]):
    """Σ c·θ with integer c in [−8, 8] on bf16 θ in [0.5, 4): every product and partial sum
    is a multiple of 2**-9 below 2**20, exact in float64, so the value is the same in any
    summation order, on any CPU and any vectorisation."""
    coefficients = [
        (torch.arange(p.numel(), dtype=torch.float64) * 7 % 17 - 8).view(p.shape)
        for p in params
    ]

    def loss():
        return sum((p.double() * c).sum() for p, c in zip(params, coefficients, strict=True))

    return loss


# The bf16 bits after 6 steps of each optimizer, recorded with the fused kernel. Portable:
# the losses are exact (exact_loss), the directions and rounding bits come from the seeds'
# tables, and every fused operation is an IEEE fp32 fma/add/multiply or integer arithmetic,
# so no CPU-dependent kernel touches a bit. Any change of these digests is a change of the
# step's results.
TRAJECTORIES = {
    "zo-sgd": "e41f0b89084967e9",
    "zo-sgd-wd": "d35e19f26017f731",
    "zo-adam": "7af3d1afe1ea06bb",
    "zo-adam-wd": "b3e35e63f1feb575",
    "sparse-mezo": "bde4fccde4da1413",
}


@needs_kernel
@pytest.mark.parametrize("case", sorted(TRAJECTORIES))
def test_bf16_trajectory_is_pinned(case):
    params = [weights(math.prod(shape), 10 + i, low=1.0, width=1.0).view(shape)
              .requires_grad_() for i, shape in enumerate(((30, 100), (64,), (15, 100)))]
    options = {"weight_decay": 0.1} if case.endswith("-wd") else {}
    opt = create_optimizer(case.removesuffix("-wd"), params, lr=1e-3, eps=1e-2, seed=5,
                           **options)
    sampler = DirectionSampler(**SMALL)
    if case == "sparse-mezo":  # its masks over the small chunks (each tensor's own τ)
        built = opt.estimator.sampler
        sampler = ThresholdMaskedSampler(sampler, [IndexedParam(i, p) for i, p in
                                                   enumerate(params)], built.thresholds)
    opt.estimator.sampler = sampler
    for _ in range(6):
        opt.step(exact_loss(params))
    digest = hashlib.sha256(b"".join(p.detach().view(torch.int16).numpy().tobytes()
                                     for p in params)).hexdigest()[:16]
    assert digest == TRAJECTORIES[case]


@needs_kernel
@pytest.mark.parametrize("step", [1, 7])
@pytest.mark.parametrize("decay", [0.0, 0.1])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.5)])  # β₁ < ½: lerp's other branch
def test_fused_adam_equals_the_rule_and_rounding_of_the_torch_ops(monkeypatch, step, decay,
                                                                   betas):
    """One Adam update of a bf16 chunk: the fused pass against Rule(Adam, decay) then the
    torch ops' stochastic rounding, same bits. The moments agree to fp32 rounding (torch may
    contract to fma), the weights to one bf16 ulp in rare elements."""
    from zotune.optim.rules import adam
    from zotune.optim.stochastic_rounding import adam_rounded_, add_rounded_

    rule = adam()
    group = {"lr": 1e-2, "betas": betas, "adam_eps": 1e-8, "weight_decay": decay}
    generator = torch.Generator().manual_seed(step)
    g = torch.randn(70000, generator=generator) * 3
    moments = (torch.randn(70000, generator=generator) * 0.1,
               torch.rand(70000, generator=generator) * 0.2)
    results = []
    for fused in (True, False):
        monkeypatch.setenv(kernels.SWITCH, "1" if fused else "0")
        view = weights(70000, 3).view(70, 1000)[:, :]
        state = {"exp_avg": moments[0].clone().view(70, 1000),
                 "exp_avg_sq": moments[1].clone().view(70, 1000)}
        grad = g.view(70, 1000)
        done = adam_rounded_(view, grad, state["exp_avg"], state["exp_avg_sq"], lr=group["lr"],
                             betas=betas, eps=1e-8, step=step,
                             decay=rule.decoupled_decay(group, 2), seed=4, index=1, chunk=2)
        assert done is fused
        if not fused:
            u = rule(grad, state, TensorContext(view, 2, step, group))
            add_rounded_(view, u, -group["lr"], 4, 1, 2)
        results.append((view.float(), state["exp_avg"], state["exp_avg_sq"]))
    (theta, m, v), (theta_ops, m_ops, v_ops) = results
    # A few fp32 roundings of the operands' size (m + w₁(g − m) cancels: relative to |m|+|g|).
    eps32 = torch.finfo(torch.float32).eps
    assert ((m - m_ops).abs() <= 4 * eps32 * (moments[0].abs() + g.abs()).view(70, 1000)).all()
    assert ((v - v_ops).abs() <= 4 * eps32 * v_ops).all()
    ulps = (theta - theta_ops).abs() / (theta_ops.abs() * 2**-7)
    assert ulps.max() <= 1
    assert (ulps > 0).float().mean() < 0.01


def test_unavailable_kernel_falls_back_with_one_line(monkeypatch, tmp_path):
    """No compiler: one warning naming the cause, then the torch path (same legs)."""
    monkeypatch.setitem(kernels._loaded, "lib", None)
    monkeypatch.delitem(kernels._loaded, "lib")
    monkeypatch.setenv(kernels.CACHE, str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="fused bf16 kernels unavailable") as caught:
        assert kernels.library() is None
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    param = weights(3000, 4)
    expected = param.clone()
    sampler = DirectionSampler(**SMALL)
    shift([IndexedParam(0, param)], sampler, [(1, 1e-2)])
    sampler.add_([IndexedParam(0, expected)], 1, 1e-2)
    assert torch.equal(param.view(torch.int16), expected.view(torch.int16))
