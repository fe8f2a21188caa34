"""Every optimizer through the same table of tests, as torch's OptimizerInfo does."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

import pytest
import torch

from zotune.optim import (
    FOSGD,
    OPTIMIZERS,
    ZEROTH_ORDER,
    FOAdam,
    ZOSGDConservative,
    create_optimizer,
    entry,
)


@dataclass(frozen=True)
class OptimizerInfo:
    name: str
    lstsq_lr: float  # a step size that converges on the least-squares problem below
    mlp_lr: float
    options: dict = field(default_factory=dict)


INFOS = [
    OptimizerInfo("zo-sgd", 0.02, 0.05),
    OptimizerInfo("zo-sgd-mmt", 0.005, 0.01, {"momentum": 0.9}),
    OptimizerInfo("zo-sgd-cons", 0.02, 0.05),
    OptimizerInfo("zo-sgd-sign", 0.005, 0.003),
    OptimizerInfo("zo-adam", 0.02, 0.01),
    OptimizerInfo("forward-grad", 0.02, 0.05),
    OptimizerInfo("fo-sgd", 0.05, 0.2),
    OptimizerInfo("fo-adam", 0.05, 0.01),
    OptimizerInfo("lozo", 0.02, 0.02, {"lozo_interval": 5}),
    OptimizerInfo("lozo-m", 0.02, 0.02, {"lozo_interval": 5}),
    OptimizerInfo("subzero", 0.02, 0.05, {"subzero_rank": 2, "subzero_interval": 5}),
    OptimizerInfo("hizoo", 0.02, 0.05, {"hessian_smooth": 1e-6}),
    OptimizerInfo("mezo-svrg", 0.02, 0.05, {"anchor_lr": 0.02}),
    OptimizerInfo("sparse-mezo", 0.02, 0.05,
                  {"sparsity": 0.05, "sparsity_mode": "small-magnitude-step"}),
]
IDS = [info.name for info in INFOS]

# Convergence runs every zeroth-order optimizer with both samplers (auto = table on CPU);
# those with directions of their own (LOZO, SubZero) take no distribution.
CONVERGENCE = [
    pytest.param(info, {"distribution": d} if d else {}, id=name)
    for info in INFOS
    for d, name in (
        [("table", f"{info.name}-table"), ("gaussian", f"{info.name}-gaussian")]
        if "distribution" in entry(info.name).accepted()
        else [(None, info.name)]
    )
]


def test_table_covers_every_optimizer():
    assert sorted(IDS) == sorted(OPTIMIZERS)


def make(info: OptimizerInfo, params, lr: float, **extra):
    return create_optimizer(info.name, params, lr=lr, **{**info.options, **extra})


def lstsq_problem(dim: int = 20, rows: int = 60, dtype=torch.float32):
    """A consistent system A x* = b: the minimum loss is 0, so progress is unambiguous."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(rows, dim, generator=gen, dtype=dtype) / dim**0.5
    b = a @ torch.randn(dim, generator=gen, dtype=dtype)
    x = torch.zeros(dim, requires_grad=True, dtype=dtype)
    return x, lambda: ((a @ x - b) ** 2).mean()


@pytest.mark.parametrize(("info", "sampler"), CONVERGENCE)
def test_reduces_least_squares_tenfold(info, sampler):
    x, loss = lstsq_problem()
    opt = make(info, [x], info.lstsq_lr, **sampler)
    start = float(loss().detach())
    for _ in range(1500):
        opt.step(loss)
    assert float(loss().detach()) < start / 10


def mlp_problem():
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(128, 8, generator=gen)
    labels = (inputs[:, 0] + inputs[:, 1] > 0).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    return model, lambda: torch.nn.functional.cross_entropy(model(inputs), labels)


@pytest.mark.parametrize(("info", "sampler"), CONVERGENCE)
def test_reduces_mlp_classification_loss(info, sampler):
    model, loss = mlp_problem()
    opt = make(info, model, info.mlp_lr, **sampler)
    start = float(loss().detach())
    for _ in range(1000):
        opt.step(loss)
    assert float(loss().detach()) < start / 2


def run(info, seed=0, steps=5, **extra):
    model, loss = mlp_problem()
    if info.name in ZEROTH_ORDER:
        extra["seed"] = seed
    opt = make(info, model, info.mlp_lr, **extra)
    for _ in range(steps):
        opt.step(loss)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("info", INFOS, ids=IDS)
def test_same_seed_same_trajectory(info):
    assert torch.equal(run(info), run(info))


@pytest.mark.parametrize("name", ZEROTH_ORDER)
def test_different_seeds_different_trajectories(name):
    info = INFOS[IDS.index(name)]
    assert not torch.allclose(run(info, seed=0), run(info, seed=1))


@pytest.mark.parametrize("name", ZEROTH_ORDER)
def test_global_rng_untouched(name):
    info = INFOS[IDS.index(name)]
    model, loss = mlp_problem()
    opt = make(info, model, info.mlp_lr)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for _ in range(3):
        opt.step(loss)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("info", INFOS, ids=IDS)
def test_state_dict_resume_continues_identically(info):
    model, loss = mlp_problem()
    opt = make(info, model, info.mlp_lr)
    for _ in range(3):
        opt.step(loss)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for _ in range(3):
        opt.step(loss)
    straight = [p.detach().clone() for p in model.parameters()]

    model.load_state_dict(saved_model)
    resumed = make(info, model, info.mlp_lr, **({"seed": 99} if info.name in ZEROTH_ORDER else {}))
    resumed.load_state_dict(saved_opt)
    for _ in range(3):
        resumed.step(loss)
    for a, b in zip(straight, model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("info", INFOS, ids=IDS)
def test_lr_scheduler_changes_step_size(info):
    def displacement(scale):
        model, loss = mlp_problem()
        before = [p.detach().clone() for p in model.parameters()]
        opt = make(info, model, info.mlp_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 if step == 0 else scale)
        opt.step(loss)
        scheduler.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(info.mlp_lr * scale)
        after_first = [p.detach().clone() for p in model.parameters()]
        opt.step(loss)
        return sum(
            (p.detach() - a).norm() for p, a in zip(model.parameters(), after_first, strict=True)
        ), before

    small, _ = displacement(0.0)
    large, _ = displacement(1.0)
    # At lr 0 only the probes' rounding remains (see test_estimators); Conservative may keep θ.
    assert small < 1e-5
    if info.name != "zo-sgd-cons":
        assert large > 0


@pytest.mark.parametrize("info", INFOS, ids=IDS)
def test_frozen_tensors_never_change(info):
    model, loss = mlp_problem()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    opt = make(info, model.parameters(), info.mlp_lr)
    for _ in range(3):
        opt.step(loss)
    assert torch.equal(model[0].weight, frozen)


def step_both(ours, ours_loss, ref, ref_loss) -> None:
    """One step of our optimizer and one of the torch reference, each on its own copy."""
    ours.step(ours_loss)
    ref.zero_grad()
    ref_loss().backward()
    ref.step()


def test_fo_sgd_matches_torch_sgd():
    for momentum, nesterov in [(0.0, False), (0.9, False), (0.9, True)]:
        ours_model, ours_loss = mlp_problem()
        ref_model, ref_loss = mlp_problem()
        ours = FOSGD(ours_model.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov)
        ref = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov)
        for _ in range(10):
            step_both(ours, ours_loss, ref, ref_loss)
            for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_fo_adam_matches_torch_adam_and_adamw():
    for weight_decay in [0.0, 0.1]:
        ours_model, ours_loss = mlp_problem()
        ref_model, ref_loss = mlp_problem()
        ours = FOAdam(ours_model, lr=0.01, weight_decay=weight_decay)
        groups = [
            {
                "params": [p for p in ref_model.parameters() if p.ndim >= 2],
                "weight_decay": weight_decay,
            },
            {"params": [p for p in ref_model.parameters() if p.ndim < 2], "weight_decay": 0.0},
        ]
        ref = torch.optim.AdamW(groups, lr=0.01)
        for _ in range(10):
            step_both(ours, ours_loss, ref, ref_loss)
        for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fo_step_without_closure_uses_existing_grads():
    model, loss = mlp_problem()
    opt = FOSGD(model, lr=0.1)
    loss().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    assert opt.step() is None
    for p, b, g in zip(model.parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.1 * g)


def test_zo_sgd_matches_forward_grad_on_a_quadratic():
    """Central differences are exact on quadratics: same seeds give the same trajectory."""
    runs = []
    for name in ("zo-sgd", "forward-grad"):
        x, loss = lstsq_problem(dtype=torch.float64)
        opt = create_optimizer(name, [x], lr=0.02, seed=3)
        for _ in range(20):
            opt.step(loss)
        runs.append(x.detach().clone())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-9, atol=1e-12)


def test_zo_sgd_keeps_no_per_parameter_state():
    model, loss = mlp_problem()
    opt = create_optimizer("zo-sgd", model, lr=0.01)
    opt.step(loss)
    assert len(opt.state) == 0


def test_conservative_never_increases_the_loss():
    model, loss = mlp_problem()
    opt = ZOSGDConservative(model, lr=5.0)  # far too large: plain ZO-SGD would diverge
    values = [float(loss().detach())]
    for _ in range(30):
        opt.step(loss)
        values.append(float(loss().detach()))
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(values))


def test_param_groups_get_their_own_lr():
    model, loss = mlp_problem()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    before = [p.detach().clone() for p in second]
    opt = create_optimizer("zo-sgd", [{"params": first}, {"params": second, "lr": 0.0}], lr=0.1)
    opt.step(loss)
    for p, b in zip(second, before, strict=True):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=1e-6)


def test_weight_decay_applies_to_matrices_only():
    model, _ = mlp_problem()
    before = [p.detach().clone() for p in model.parameters()]
    opt = create_optimizer("zo-sgd", model, lr=0.1, weight_decay=0.5)
    opt.step(lambda: torch.tensor(0.0))  # constant loss: ĝ = 0, only decay acts
    for p, b in zip(model.parameters(), before, strict=True):
        expected = b * (1 - 0.05) if p.ndim >= 2 else b
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("zo-sgd", {"lr": -1.0}, "Invalid learning rate: -1.0"),
        ("zo-sgd", {"lr": 0.1, "eps": 0.0}, "eps: 0.0"),
        ("zo-adam", {"lr": 0.1, "eps": -1e-3}, "eps: -0.001"),
        ("zo-sgd", {"lr": 0.1, "q": 0}, "q: 0"),
        ("zo-sgd-sign", {"lr": 0.1, "q": 1.5}, "q: 1.5"),
        ("zo-sgd", {"lr": 0.1, "distribution": "uniform"}, "'uniform'"),
        ("zo-sgd", {"lr": 0.1, "probe": "three-point"}, "'three-point'"),
        ("zo-sgd-mmt", {"lr": 0.1, "momentum": 1.5}, "momentum value: 1.5"),
        ("zo-adam", {"lr": 0.1, "betas": (0.9, 1.0)}, "betas: (0.9, 1.0)"),
        ("fo-adam", {"lr": 0.1, "adam_eps": -1.0}, "adam_eps value: -1.0"),
        ("fo-sgd", {"lr": 0.1, "weight_decay": -0.1}, "weight_decay value: -0.1"),
        ("nadam", {"lr": 0.1}, "Unknown optimizer: 'nadam' (choose from zo-sgd, zo-sgd-mmt"),
        ("zo-sgd-sign", {"lr": 0.1, "base": "lamb"}, "Unknown base: 'lamb'"),
        ("zo-sgd-sign", {"lr": 0.1, "sign_of": "both"}, "Unknown sign_of: 'both'"),
        ("zo-sgd-cons", {"lr": 0.1, "betas": (0.8, 0.9)}, "apply to base='adamw' only"),
        ("zo-sgd-sign", {"lr": 0.1, "adam_eps": 1e-6}, "apply to base='adamw' only"),
        ("zo-sgd", {"lr": 0.1, "distribution": "mezo", "seed": 2**32}, "seeds numpy"),
    ],
)
def test_bad_arguments_name_the_bad_value(name, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_optimizer(name, [torch.zeros(2, requires_grad=True)], **options)


def test_sign_of_coefficient_refuses_the_hybrid_step():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="first-order part has none"):
        create_optimizer(
            "zo-sgd-sign", model, lr=0.1, sign_of="coefficient", hybrid_layers=1
        )


@pytest.mark.parametrize(
    ("options", "state", "rule"),
    [
        ({}, 0, "Rule(Sign, DecoupledWeightDecay)"),
        ({"sign_of": "coefficient"}, 0, "Rule(coefficients=coefficient_signs, "
         "DecoupledWeightDecay)"),
        ({"base": "adamw"}, 2, "Rule(Sign, TransformersAdamW)"),
        ({"base": "adamw", "sign_of": "coefficient"}, 2,
         "Rule(coefficients=coefficient_signs, TransformersAdamW)"),
    ],
)
def test_sign_options_pick_the_rule_and_its_state(options, state, rule):
    """The registry entry answers the memory model's question (state tensors) from the same
    options that build the rule."""
    from zotune.optim.registry import entry

    assert entry("zo-sgd-sign").state_tensors(**options) == state
    opt = create_optimizer("zo-sgd-sign", [torch.zeros(2, requires_grad=True)], lr=0.1, **options)
    assert repr(opt.rule) == rule


def test_sign_of_coefficient_steps_by_sign_c_times_z():
    """u = (1/q) Σ sign(c_k) z_k: with SGD, θ moves by exactly lr · z for a loss that rises
    along z (c > 0), whatever |c|."""
    x = torch.zeros(4, requires_grad=True)
    weights = torch.tensor([1.0, -2.0, 3.0, 0.5])
    opt = create_optimizer(
        "zo-sgd-sign", [x], lr=0.1, sign_of="coefficient", distribution="gaussian", seed=1
    )
    opt.step(lambda: 100 * (weights * x).sum())
    z = opt.estimator.sampler.direction(x, opt.estimator.sampler.query_seeds(
        opt.estimator.sampler.step_seed(1, 0), 1)[0], 0)
    c_sign = 1.0 if float(weights @ z) > 0 else -1.0
    torch.testing.assert_close(x.detach(), -0.1 * c_sign * z, rtol=0, atol=1e-7)


def test_unknown_option_names_the_optimizer():
    with pytest.raises(TypeError, match=r"zo-sgd: .*momentum"):
        create_optimizer("zo-sgd", [torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9)


@pytest.mark.parametrize("name", ZEROTH_ORDER)
def test_zo_step_without_closure_is_a_type_error(name):
    opt = create_optimizer(name, [torch.zeros(2, requires_grad=True)], lr=0.1)
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step()


@pytest.mark.parametrize("name", ["zo-sgd", "zo-adam", "forward-grad"])
def test_non_finite_loss_raises_and_restores(name):
    from zotune.estimators import NonFiniteLossError

    x = torch.ones(4, requires_grad=True)
    opt = create_optimizer(name, [x], lr=0.1)
    before = x.detach().clone()
    with pytest.raises(NonFiniteLossError):
        opt.step(lambda: x.sum() * float("nan"))
    torch.testing.assert_close(x.detach(), before, rtol=0, atol=1e-6)
