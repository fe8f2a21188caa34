"""Golden trajectories: zotune's LOZO, LOZO-M and SubZero against their authors' code, written out.

Each reference below is the authors' step transcribed from their repository (file:line at
each function), run on the same tiny OPT in float64 with the same seeds: the authors draw a
step's seed with ``np.random.randint(1000000000)``; here the step is handed the seed zotune's
optimizer uses for it (``mix_seed(mix_seed(seed, t), 0)``, the first query of step t), and
everything drawn from that seed is the authors' own sequence of ``torch.manual_seed`` and
``torch.randn``/``torch.normal`` calls. zotune's optimizers use their own direction samplers
(:mod:`zotune.estimators.low_rank`), no test-only stream. SubZero draws its bases from the
global generator wherever the previous step left it; the reference here seeds it, at each
refresh, with the seed zotune's sampler uses for that period (``basis_seed``), and runs
under torch's default dtype float64 (the authors' ``torch.randn`` there takes no dtype).
"""

from __future__ import annotations

import math

import pytest
import torch

from golden_helpers import SEED, batches, lm_loss, no_decay, tiny_opt
from zotune.estimators import mix_seed
from zotune.optim import create_optimizer

STEPS = 12


def step_seeds(count: int) -> list[int]:
    return [mix_seed(mix_seed(SEED, t), 0) for t in range(count)]


def trainable(model) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


@torch.no_grad()
def lozo_reference(model, data, *, lr, eps, rank, interval, weight_decay=0.0, beta=None):
    """optsuite/LOZO: LOZO as large_models/LOZOtrainer.py ``lowrank_zo_step`` (763-797),
    ``lowrank_zo_perturb_parameters`` (699-719) and ``lowrank_zo_update`` (800-823); LOZO-M
    (``beta``) as medium_models/src/LOZOtrainer.py ``lowrank_zo_update_momentum`` (363-405),
    whose step and perturbation (276-335) are the same as large_models'."""
    named = trainable(model)
    v, v_old, exp_avg_m = {}, {}, {}

    def perturb(step, seed, scaling_factor):
        torch.manual_seed(seed)
        for name, param in named:
            if param.data.ndim >= 2:
                if step % interval == 0:
                    v[name] = torch.randn(param.data.size(1), rank, dtype=param.data.dtype)
                u = torch.randn(param.data.size(0), rank, dtype=param.data.dtype)
                param.data = param.data + scaling_factor * (u @ v[name].t()) * eps
            else:
                z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
                param.data = param.data + scaling_factor * z * eps

    def decayed(name, param):
        return 0.0 if no_decay(name) else weight_decay * param.data

    for step, (ids, seed) in enumerate(zip(data, step_seeds(len(data)), strict=True)):
        perturb(step, seed, 1)
        loss1 = lm_loss(model, ids)
        perturb(step, seed, -2)
        loss2 = lm_loss(model, ids)
        projected_grad = ((loss1 - loss2) / (2 * eps)).item()
        perturb(step, seed, 1)
        torch.manual_seed(seed)
        for name, param in named:
            if param.data.ndim >= 2:
                u = torch.randn(param.data.size(0), rank, dtype=param.data.dtype)
                if beta is None:
                    direction = projected_grad * (u @ v[name].t())
                else:
                    if step % interval == 0:
                        if name in v_old:
                            n = v_old[name].shape[0]
                            exp_avg_m[name] = (
                                beta * exp_avg_m[name] @ v_old[name].t() @ v[name] / n
                                + (1 - beta) * projected_grad * u
                            )
                        else:
                            exp_avg_m[name] = projected_grad * u
                    elif step % interval == interval - 1:
                        v_old[name] = v[name]
                        exp_avg_m[name] = beta * exp_avg_m[name] + (1 - beta) * projected_grad * u
                    else:
                        exp_avg_m[name] = beta * exp_avg_m[name] + (1 - beta) * projected_grad * u
                    direction = exp_avg_m[name] @ v[name].t()
            else:
                z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
                if beta is None:
                    direction = projected_grad * z
                else:
                    if step == 0:
                        exp_avg_m[name] = projected_grad * z
                    else:
                        exp_avg_m[name] = beta * exp_avg_m[name] + (1 - beta) * projected_grad * z
                    direction = exp_avg_m[name]
            param.data = param.data - lr * (direction + decayed(name, param))
    return [p.detach().clone() for _, p in named]


def reshape_matrix(integer):
    """SubZero large_models/trainer.py:1207-1213 (cf6effd)."""
    factor1, factor2 = 1, integer
    for i in range(1, int(math.sqrt(integer)) + 1):
        if int(integer / i) == integer / i:  # noqa: SIM102 (transcribed as written)
            if integer / i - i < factor2 - factor1:
                factor1, factor2 = i, integer / i
    return factor1, int(factor2)


def fast_svd_method_v2(w_shape, device, dtype, rank=8):
    """SubZero large_models/trainer.py:1195-1205 (cf6effd)."""
    U, _ = torch.linalg.qr(torch.randn((w_shape[0], rank), device=device))
    U = U.to(dtype).contiguous()
    V, _ = torch.linalg.qr(torch.randn((w_shape[1], rank), device=device))
    Vt = V.to(dtype).T.contiguous()
    return U, Vt


@torch.no_grad()
def subzero_reference(model, data, *, lr, eps, rank, interval, square, momentum, basis_seed):
    """PawnDragon/SubZero at cf6effd (the paper's release), large_models/trainer.py:
    ``zo_subspace_step`` (874-951), ``zo_subspace_perturb_parameters`` (744-761) and
    ``zo_subspace_update`` (979-1005); the optimizer is ``SGD(lr, momentum)`` (324-325)."""
    p_state = {}
    params = [p for _, p in trainable(model)]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)

    def perturb(named, seed, scaling_factor):
        torch.manual_seed(seed)
        for _, param, U, V in named:
            if len(U.shape) == 1:
                z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
                param.data = param.data + scaling_factor * z * eps
            elif len(U.shape) == 2:
                z = torch.normal(mean=0, std=1, size=(U.shape[1], V.shape[0]),
                                 dtype=param.data.dtype)
                z = (U @ z @ V * math.sqrt(param.data.numel() / z.numel())).view(param.data.shape)
                param.data = param.data + scaling_factor * z * eps

    for step, (ids, seed) in enumerate(zip(data, step_seeds(len(data)), strict=True)):
        if step % interval == 0:
            torch.manual_seed(basis_seed(step // interval))
        named = []
        for name, param in trainable(model):
            if len(torch.squeeze(param.data).shape) == 2:
                if step % interval == 0:
                    if square:  # noqa: SIM108 (transcribed: args.mode in lora/prefix/prompt)
                        w_shape = reshape_matrix(param.data.numel())
                    else:
                        w_shape = param.data.shape
                    U, V = fast_svd_method_v2(w_shape=w_shape, device=param.device,
                                              dtype=param.data.dtype, rank=rank)
                    p_state[name] = {"U": U, "V": V}
                named.append((name, param, p_state[name]["U"], p_state[name]["V"]))
            else:
                named.append((name, param, torch.Tensor([1.0]), torch.Tensor([1.0])))
        perturb(named, seed, 1)
        loss1 = lm_loss(model, ids)
        perturb(named, seed, -2)
        loss2 = lm_loss(model, ids)
        projected_grad = ((loss1 - loss2) / (2 * eps)).item()
        perturb(named, seed, 1)
        torch.manual_seed(seed)
        for _, param, U, V in named:
            if len(torch.squeeze(param.data).shape) == 2:
                z0 = torch.normal(mean=0, std=1, size=(rank, rank), dtype=param.data.dtype)
                z = (U @ z0 @ V * math.sqrt(param.data.numel() / z0.numel())).view(
                    param.data.shape).to(param.data.dtype)
            else:
                z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
            param.grad = projected_grad * z
            with torch.enable_grad():
                optimizer.step()
            param.grad = None
    return params


def zotune_trajectory(model, data, name, **options):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = create_optimizer(name, model, seed=SEED, **options)
    for ids in data:
        optimizer.step(lambda ids=ids: lm_loss(model, ids))
    return [p.detach().clone() for p in params], optimizer


def assert_same(reference, ours, start):
    moved = max((a - s).abs().max().item() for a, s in zip(ours, start, strict=True))
    assert moved > 1e-4  # the trajectories went somewhere
    for theirs, mine in zip(reference, ours, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


LOZO_CASES = [
    ("lozo", {"lr": 1e-3, "eps": 1e-3, "lozo_rank": 2, "lozo_interval": 5}, None),
    ("lozo", {"lr": 1e-3, "eps": 1e-3, "lozo_rank": 3, "lozo_interval": 4,
              "weight_decay": 0.1}, None),
    ("lozo-m", {"lr": 1e-3, "eps": 1e-3, "lozo_rank": 2, "lozo_interval": 5,
                "lozo_beta": 0.9}, 0.9),
    ("lozo-m", {"lr": 1e-3, "eps": 1e-3, "lozo_rank": 2, "lozo_interval": 1,
                "lozo_beta": 0.7, "weight_decay": 0.1}, 0.7),
]


@pytest.mark.parametrize(
    ("name", "options", "beta"), LOZO_CASES,
    ids=["lozo", "lozo-weight-decay", "lozo-m", "lozo-m-interval-1"],
)
def test_lozo_follows_the_authors_code_for_12_steps(name, options, beta):
    data = batches(STEPS)
    reference_model, zotune_model = tiny_opt(), tiny_opt()
    start = [p.detach().clone() for p in zotune_model.parameters()]
    reference = lozo_reference(
        reference_model, data, lr=options["lr"], eps=options["eps"],
        rank=options["lozo_rank"], interval=options["lozo_interval"],
        weight_decay=options.get("weight_decay", 0.0), beta=beta,
    )
    ours, _ = zotune_trajectory(zotune_model, data, name, **options)
    assert_same(reference, ours, start)


@pytest.mark.parametrize(
    "options",
    [
        {"subzero_rank": 4, "subzero_interval": 5},
        {"subzero_rank": 3, "subzero_interval": 4, "subzero_square": True, "momentum": 0.9},
    ],
    ids=["subzero", "subzero-square-momentum"],
)
def test_subzero_follows_the_authors_code_for_12_steps(options):
    data = batches(STEPS)
    reference_model, zotune_model = tiny_opt(), tiny_opt()
    start = [p.detach().clone() for p in zotune_model.parameters()]
    ours, optimizer = zotune_trajectory(zotune_model, data, "subzero", lr=1e-3, eps=1e-3,
                                        **options)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        reference = subzero_reference(
            reference_model, data, lr=1e-3, eps=1e-3, rank=options["subzero_rank"],
            interval=options["subzero_interval"], square=options.get("subzero_square", False),
            momentum=options.get("momentum", 0.0),
            basis_seed=optimizer.estimator.sampler.basis_seed,
        )
    finally:
        torch.set_default_dtype(default)
    assert_same(reference, ours, start)
