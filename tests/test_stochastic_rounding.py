"""Stochastic rounding of fp16/bf16 updates: the problem (round-to-nearest loses sub-ulp
updates), the fix (SR keeps them in expectation), and SR's own contract (unbiased, exact on
representable values, a pure function of its seed).

Statistical bounds. Rounding a value that lies a fraction p of an ulp above its lower
neighbour goes up with probability p, so the rounding error e = SR(x) − x, in ulps, has mean
0 and variance p(1 − p). T roundings of N independent weights give a mean error with standard
deviation σ = √(Σ p(1 − p) / N²) (each weight's T errors add up). The tests allow 5σ (a false
alarm about once in 1.7 million runs; the bits are fixed by the seeds, so each run is
deterministic anyway).
"""

from __future__ import annotations

import math

import pytest
import torch

from zotune.estimators.directions import mix_seed
from zotune.models.random_shapes import random_model
from zotune.optim import ZEROTH_ORDER, create_optimizer
from zotune.optim.stochastic_rounding import (
    ROUNDING_TABLE_NUMEL,
    add_rounded_,
    round_into_,
    rounding_table,
)

HALF = [torch.bfloat16, torch.float16]
MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10}


def ulp_of(values: torch.Tensor) -> torch.Tensor:
    """The spacing above |values| in their own dtype, as float64."""
    magnitude = values.abs()
    return (torch.nextafter(magnitude, magnitude.new_tensor(math.inf)).double()
            - magnitude.double())


def interior_weights(dtype: torch.dtype, n: int, room: int, seed: int = 0) -> torch.Tensor:
    """n weights of both signs, spread over binades, each at least ``room`` ulps below the top
    of its binade (so ``room`` ulps of growth keep its ulp)."""
    gen = torch.Generator().manual_seed(seed)
    steps = 1 << MANTISSA_BITS[dtype]
    mantissa = torch.randint(0, steps - room, (n,), generator=gen).double()
    exponent = torch.randint(-10, 1, (n,), generator=gen).double()
    sign = torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1
    return (sign * torch.exp2(exponent) * (1 + mantissa / steps)).to(dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_thousand_updates_of_a_tenth_ulp(dtype):
    """1,000 updates of +0.1 ulp (away from zero) to 10,000 weights.

    Round to nearest: every update rounds back, the weights never move. Stochastic rounding:
    the mean displacement is the fp32 one (≈ 100 ulp) within 5σ, σ = √(T p(1 − p) / N) ulp,
    and each weight's displacement has the binomial variance T p(1 − p) (its sample estimate
    from N values has relative standard deviation √(2/N) = 1.4%; 5 of them allowed).
    """
    steps, n = 1000, 10_000
    theta = interior_weights(dtype, n, room=110)
    ulp = ulp_of(theta)
    update = (0.1 * ulp * theta.double().sign()).float()

    nearest = theta.clone()
    stochastic = theta.clone()
    exact = theta.float()
    for step in range(steps):
        nearest.add_(update)
        add_rounded_(stochastic, update, 1.0, seed=step, index=0, chunk=0)
        exact.add_(update)
    assert torch.equal(nearest, theta)

    # The fraction of an ulp each SR step rounds: 0.1 ulp as fp32 represents it next to θ.
    p = ((theta.float() + update).double() - theta.double()).abs() / ulp
    sigma = math.sqrt(steps * (p * (1 - p)).sum().item()) / n
    moved = (stochastic.double() - theta.double()) / ulp * theta.double().sign()
    expected = (exact.double() - theta.double()) / ulp * theta.double().sign()
    assert 99 < expected.mean().item() < 101
    assert abs(moved.mean().item() - expected.mean().item()) < 5 * sigma
    variance = (steps * p * (1 - p)).mean().item()
    assert abs(moved.var().item() / variance - 1) < 5 * math.sqrt(2 / n)


def neighbours(values: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) representable neighbours of fp32 ``values`` in ``dtype``, as float64,
    found with round-to-nearest and ``nextafter`` (independently of the implementation)."""
    nearest = values.to(dtype)
    up = torch.nextafter(nearest, nearest.new_tensor(math.inf))
    down = torch.nextafter(nearest, nearest.new_tensor(-math.inf))
    above = nearest.double() > values.double()
    lower = torch.where(above, down.double(), nearest.double())
    upper = torch.where(above, nearest.double(), up.double())
    return lower, upper


# log2 |x| ranges: bf16 reaches its subnormals (below 2^−126) and fp16 its subnormals
# (below 2^−14; from 2^−17 on, where 16 random bits resolve p exactly) and its top binade.
RANGES = {torch.bfloat16: (-133.0, 20.0), torch.float16: (-17.0, 15.9)}


@pytest.mark.parametrize("dtype", HALF)
def test_rounding_is_unbiased(dtype):
    """Every result is one of the two neighbours, and up-roundings happen with probability p.

    U_i, the number of up-roundings of value i over K seeds, is Binomial(K, p_i); the
    standardised sum Σ (U_i − K p_i) / √(Σ K p_i (1 − p_i)) is within 5 of 0, over all values
    and separately over positive/negative normal/subnormal ones (a bias confined to one of
    them would hide in the total).
    """
    seeds, n = 200, 5000
    gen = torch.Generator().manual_seed(1)
    low, high = RANGES[dtype]
    magnitude = torch.exp2(low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64))
    values = (magnitude * (torch.randint(0, 2, (n,), generator=gen) * 2 - 1)).float()
    lower, upper = neighbours(values, dtype)
    p = (values.double() - lower) / (upper - lower)

    ups = torch.zeros(n, dtype=torch.float64)
    for seed in range(seeds):
        out = torch.empty(n, dtype=dtype)
        round_into_(out, values.clone(), seed, index=3, chunk=1)
        result = out.double()
        assert ((result == lower) | (result == upper)).all()
        ups += (result == upper).double()

    subnormal = values.abs() < torch.finfo(dtype).smallest_normal
    groups = {
        "all": torch.ones(n, dtype=torch.bool),
        "positive normal": (values > 0) & ~subnormal,
        "negative normal": (values < 0) & ~subnormal,
        "positive subnormal": (values > 0) & subnormal,
        "negative subnormal": (values < 0) & subnormal,
    }
    for name, members in groups.items():
        assert members.sum() > 50, name
        spread = math.sqrt((seeds * p * (1 - p))[members].sum().item())
        z = (ups - seeds * p)[members].sum().item() / spread
        assert abs(z) < 5, f"{name}: {z:.2f} standard deviations"


SPECIAL = {
    torch.bfloat16: [
        (0.0, 0.0), (-0.0, -0.0), (1.0, 1.0), (-2.5, -2.5), (2.0**-130, 2.0**-130),
        (math.inf, math.inf), (-math.inf, -math.inf),
        (float(torch.finfo(torch.bfloat16).max), float(torch.finfo(torch.bfloat16).max)),
    ],
    torch.float16: [
        (0.0, 0.0), (-0.0, -0.0), (1.0, 1.0), (-2.5, -2.5), (2.0**-24, 2.0**-24),
        (-(2.0**-20), -(2.0**-20)), (65504.0, 65504.0), (math.inf, math.inf),
        (-math.inf, -math.inf),
        # As round-to-nearest: saturate below the halfway point to inf, overflow above it.
        (65510.0, 65504.0), (-65510.0, -65504.0), (70000.0, math.inf), (-70000.0, -math.inf),
    ],
}


@pytest.mark.parametrize(
    ("dtype", "value", "expected"),
    [(dtype, value, expected) for dtype, cases in SPECIAL.items() for value, expected in cases],
)
def test_representable_and_special_values(dtype, value, expected):
    """Representable values (signed zeros, subnormals, the largest finite, ±inf) stay put for
    every seed; fp16 keeps round-to-nearest's overflow; NaN stays NaN."""
    for seed in range(50):
        out = torch.empty(2, dtype=dtype)
        round_into_(out, torch.tensor([value, math.nan]), seed, index=0, chunk=0)
        assert out[0].item() == expected
        assert math.copysign(1.0, out[0].item()) == math.copysign(1.0, expected)
        assert math.isnan(out[1].item())


def test_the_table_holds_every_16_bit_value_equally_often():
    """The condition for exact unbiasedness over a uniform offset."""
    counts = torch.bincount(rounding_table("cpu").long(), minlength=1 << 16)
    assert counts.numel() == 1 << 16
    assert (counts == ROUNDING_TABLE_NUMEL >> 16).all()


@pytest.mark.parametrize("dtype", HALF)
def test_bits_are_a_pure_function_of_seed_tensor_and_chunk(dtype):
    values = torch.rand(50_000, generator=torch.Generator().manual_seed(2)).float()

    def rounded(seed, index, chunk):
        out = torch.empty(values.numel(), dtype=dtype)
        round_into_(out, values.clone(), seed, index, chunk)
        return out

    reference = rounded(7, 1, 0)
    assert torch.equal(reference, rounded(7, 1, 0))
    for other in [(8, 1, 0), (7, 2, 0), (7, 1, 1)]:
        assert not torch.equal(reference, rounded(*other)), other


def least_squares(dtype, name, stochastic, lr=1e-6, steps=1000, seed=0):
    """The issue's problem: 256 weights from N(0, 0.05²), lr 1e-6, ε 1e-3, 1,000 steps.

    f(w) = ‖Aw − b‖² / 128 with A 512 × 256 standard normal: a ZO update is ≈ 0.01–0.1 ulp
    of a bf16 weight. Returns the decrease of f.
    """
    gen = torch.Generator().manual_seed(0)
    matrix = torch.randn(512, 256, generator=gen)
    target = matrix @ (0.05 * torch.randn(256, generator=gen))
    weights = (0.05 * torch.randn(256, generator=gen)).to(dtype).requires_grad_()

    def loss():
        residual = matrix @ weights.float() - target
        return residual.pow(2).sum() / 128

    opt = create_optimizer(
        name, [weights], lr=lr, eps=1e-3, seed=seed, stochastic_rounding=stochastic
    )
    start = float(loss())
    for _ in range(steps):
        opt.step(loss)
    return start - float(loss())


@pytest.mark.parametrize("name", ["zo-sgd", "zo-sgd-mmt"])
def test_bf16_zo_learns_like_fp32_only_with_stochastic_rounding(name):
    """Share of fp32's loss decrease. Measured over seeds 0–4 (zo-sgd, zo-sgd-mmt): round to
    nearest 0.19–0.22 and 0.27–0.29, stochastic rounding 0.85–1.25 and 0.99–1.06."""
    with torch.no_grad():
        reference = least_squares(torch.float32, name, True)
        nearest = least_squares(torch.bfloat16, name, False) / reference
        stochastic = least_squares(torch.bfloat16, name, True) / reference
    assert nearest < 0.35
    assert 0.75 < stochastic < 1.35


def linear_loss(weights: torch.Tensor):
    direction = torch.linspace(-1, 1, weights.numel()) / math.sqrt(weights.numel() / 3)

    def loss():
        return (weights.float() * direction).sum()

    return loss


@pytest.mark.parametrize("name", ZEROTH_ORDER)
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_every_zo_optimizer_keeps_sub_ulp_updates(name, stochastic):
    """Updates of ≈ 0.05 ulp on bf16 weights in [1.25, 1.75) (ulp 2⁻⁷): round to nearest
    leaves the weights where they were (the probes restore them bit-exactly but for rounding
    ties), stochastic rounding
    moves a few percent of them by one ulp per step."""
    theta = (1.25 + 0.5 * torch.rand(2000, generator=torch.Generator().manual_seed(3)))
    theta = theta.to(torch.bfloat16)
    weights = theta.clone().requires_grad_()
    options = {} if name == "forward-grad" else {"eps": 1e-2}  # probes of ≈ 1 ulp
    density = 1.0
    if name == "sparse-mezo":  # updates only the small weights: half of them here
        options["sparsity"] = 0.5
        density = 0.5
    if name == "mezo-svrg":  # its anchor steps move by anchor_lr (default 5·lr: past ½ ulp)
        options["anchor_lr"] = 4e-4
    opt = create_optimizer(name, [weights], lr=4e-4, stochastic_rounding=stochastic, **options)
    for _ in range(5):
        opt.step(linear_loss(weights))
    moved = (weights.detach() != theta).float().mean().item()
    if stochastic:
        assert moved > 0.02 * density
    else:
        assert moved <= 0.001  # exact rounding ties of the probe legs (≈ 2⁻¹⁶ per leg)


def test_decay_is_rounded_stochastically():
    """θ ← SR(κθ) with κ = 1 − 10⁻⁴ (≈ 0.03 ulp on [1.25, 1.75)): E[θ_T] = κ^T θ₀ exactly, so
    the mean of (θ_T − κ^T θ₀)/ulp over N weights is within 5σ, σ = √(T p̄(1 − p̄)/N) with p̄
    the largest per-step fraction; round to nearest never moves them."""
    steps, n = 100, 10_000
    theta = (1.25 + 0.5 * torch.rand(n, generator=torch.Generator().manual_seed(4)))
    theta = theta.to(torch.bfloat16).view(100, 100)
    ulp = ulp_of(theta)
    for stochastic in (False, True):
        weights = theta.clone().requires_grad_()
        opt = create_optimizer(
            "zo-sgd", [weights], lr=1e-3, weight_decay=0.1, stochastic_rounding=stochastic
        )
        for _ in range(steps):
            opt.step(lambda: torch.zeros(()))
        if not stochastic:
            assert torch.equal(weights.detach(), theta)
            continue
        keep = (1 - 1e-3 * 0.1) ** steps
        error = (weights.detach().double() - keep * theta.double()) / ulp
        p = ((1 - (1 - 1e-4)) * theta.double().abs() / ulp).max().item()
        sigma = math.sqrt(steps * p * (1 - p) / n)
        assert ((keep - 1) * theta.double() / ulp).mean() < -1  # it does move
        assert abs(error.mean().item()) < 5 * sigma


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("zo-sgd", {}),
        ("zo-sgd", {"q": 2, "weight_decay": 0.1}),
        ("zo-sgd-mmt", {}),
        ("zo-sgd-cons", {}),
        ("zo-adam", {}),
        ("zo-sgd", {"block_level": "layer"}),
        ("zo-sgd", {"sparsity": 0.5}),
        ("zo-sgd", {"hybrid_layers": 1}),
    ],
    ids=["zo-sgd", "q2-decay", "mmt", "cons", "adam", "block", "sparse", "hybrid"],
)
def test_resumed_bf16_run_is_identical(name, options):
    """The rounding bits come from the step's seed: a run resumed from a checkpoint after 2
    steps ends bit-identical to an uninterrupted one, and a repeat of it too."""

    def fresh():
        model = random_model("tiny-llama", seed=0).model.to(torch.bfloat16)
        ids = torch.randint(0, model.config.vocab_size, (2, 8),
                            generator=torch.Generator().manual_seed(5))

        def loss():
            return model(input_ids=ids, labels=ids).loss

        opt = create_optimizer(name, model, lr=1e-4, seed=11, **options)
        return model, opt, loss

    def state(model):
        return {key: value.clone() for key, value in model.state_dict().items()}

    model, opt, loss = fresh()
    start = state(model)
    for _ in range(4):
        opt.step(loss)
    straight = state(model)
    assert any(not torch.equal(straight[k], start[k]) for k in start)

    model, opt, loss = fresh()
    for _ in range(2):
        opt.step(loss)
    checkpoint = (state(model), opt.state_dict())
    model, opt, loss = fresh()
    model.load_state_dict(checkpoint[0])
    opt.load_state_dict(checkpoint[1])
    for _ in range(2):
        opt.step(loss)
    resumed = state(model)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_rounding_seeds_differ_from_direction_seeds():
    """The update's bits are salted: not the bits of any of its query seeds."""
    from zotune.optim.stochastic_rounding import rounding_seed

    seed = mix_seed(0, 0)
    assert rounding_seed(seed) != seed
    assert rounding_seed(seed, 1) != rounding_seed(seed, 2)


def test_stochastic_rounding_must_be_a_bool():
    with pytest.raises(ValueError, match=r"Invalid stochastic_rounding: 'yes' \(must be true"):
        create_optimizer("zo-sgd", [torch.zeros(2, requires_grad=True)], lr=0.1,
                         stochastic_rounding="yes")
