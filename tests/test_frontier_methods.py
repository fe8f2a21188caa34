"""HiZOO, MeZO-SVRG and Sparse-MeZO through ``zotune train``: every tuning scheme, bf16 weights
with stochastic rounding, the forward passes and the state the registry declares."""

from __future__ import annotations

import json

import pytest
import torch

from zotune import cli
from zotune.estimators.base import NonFiniteLossError
from zotune.optim import create_optimizer, entry

OPTIONS = {
    "hizoo": ["--hessian-smooth", "1e-6"],
    "mezo-svrg": ["--anchor-lr", "1e-2", "--anchor-batch-size", "8", "--anchor-every", "2"],
    "mezo-svrg-paper": ["--anchor-lr", "1e-2", "--anchor-batch-size", "8",
                        "--control-at", "anchor"],
    "sparse-mezo": ["--sparsity", "0.5"],
}


@pytest.mark.parametrize(
    ("method", "scheme"),
    [(m, s) for m in OPTIONS for s in ("full", "lora", "prefix", "prompt")
     if not m.endswith("-paper") or s == "full"],
)
def test_it_trains_every_scheme_in_bf16(method, scheme, sst2_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main([
        "train", "--model", "random:tiny-llama", "--data-dir", str(sst2_dir), "--task", "sst2",
        "--num-train", "16", "--num-val", "6", "--num-test", "6", "--steps", "4",
        "--batch-size", "4", "--eval-every", "4", "--dtype", "bfloat16", "--tuning", scheme,
        "--optimizer", method.removesuffix("-paper"), "--lr", "1e-3", *OPTIONS[method],
        "--no-progress", "--output-dir", str(out),
    ])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in steps if "loss" in r)  # finite, not skipped
    expected = {"hizoo": 3, "sparse-mezo": 2}.get(method, (2 * 8 / 4 + 4) / 2)
    assert result["forward_passes_per_step"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("key", "options", "state", "passes"),
    [
        ("hizoo", {}, 1, 3),
        ("mezo-svrg", {}, 0, 3),  # (2 + 4) / 2: the anchor counted as one batch here
        ("mezo-svrg", {"control_at": "anchor", "anchor_every": 4}, 1, (2 + 3 * 4) / 4),
        ("sparse-mezo", {}, 0, 2),
    ],
)
def test_the_entry_declares_its_state_and_passes(key, options, state, passes):
    spec = entry(key)
    assert spec.state_tensors(**options) == state
    assert spec.forward_passes(**options) == pytest.approx(passes)


@pytest.mark.parametrize(
    ("key", "options", "problem"),
    [
        ("hizoo", {"q": 2}, "unexpected keyword argument 'q'"),
        ("hizoo", {"block_level": "layer"}, "hessian and block-wise steps cannot be combined"),
        ("mezo-svrg", {"hybrid_layers": 1}, "svrg and hybrid steps cannot be combined"),
        ("mezo-svrg", {"control_at": "θ̄"}, "Unknown control_at"),
        ("sparse-mezo", {"sparsity_mode": "uniform"}, "Unknown sparsity_mode"),
        ("hizoo", {"hessian_smooth": 2.0}, r"Invalid hessian_smooth: 2.0 \(must be in \[0, 1\]\)"),
    ],
)
def test_a_combination_it_cannot_make_is_refused_by_name(key, options, problem):
    model = torch.nn.Linear(3, 2)
    with pytest.raises((ValueError, TypeError), match=problem):
        create_optimizer(key, model, lr=1e-3, **options)


def test_hizoo_keeps_its_hessian_in_fp32_for_bf16_weights():
    x = torch.ones(8, dtype=torch.bfloat16, requires_grad=True)
    optimizer = create_optimizer("hizoo", [x], lr=1e-2, hessian_smooth=0.5)
    for _ in range(3):
        optimizer.step(lambda: (x.float() ** 2).sum())
    hessian = optimizer.state[x]["hessian"]
    assert hessian.dtype == torch.float32 and not torch.equal(hessian, torch.ones(8))
    reloaded = create_optimizer("hizoo", [x], lr=1e-2, hessian_smooth=0.5)
    reloaded.load_state_dict(optimizer.state_dict())
    assert torch.equal(reloaded.state[x]["hessian"], hessian)
    assert reloaded.state[x]["hessian"].dtype == torch.float32


@pytest.mark.parametrize(
    ("key", "options"),
    [("hizoo", {}), ("sparse-mezo", {}), ("zo-sgd", {"sparsity": 0.5})],
)
def test_bf16_probes_land_back_on_the_weights(key, options):
    """With lr = 0 and rounding to nearest, five steps of probes leave bf16 weights where
    they were but for exact rounding ties (HiZOO's legs had moved by an fp32 amount, masked
    table legs by addcmul_: 0.2–1.6% of the weights moved)."""
    theta = (1.25 + 0.5 * torch.rand(2000, generator=torch.Generator().manual_seed(3)))
    theta = theta.to(torch.bfloat16)
    weights = theta.clone().requires_grad_()
    direction = torch.linspace(-1, 1, 2000)
    optimizer = create_optimizer(key, [weights], lr=0.0, eps=1e-2, stochastic_rounding=False,
                                 **options)
    for _ in range(5):
        optimizer.step(lambda: (weights.float() * direction).sum().detach())
    assert (weights.detach() != theta).float().mean().item() <= 0.001


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])  # fused sweep, torch ops
@pytest.mark.parametrize("failure", ["nan", "raise"])
@pytest.mark.parametrize("at_call", [2, 3])  # the +ε probe's loss, the −ε probe's
def test_hizoo_restores_the_weights_when_a_probe_fails(dtype, failure, at_call):
    """A non-finite loss or an exception in a probe leaves θ where the step found it (the
    restore is otherwise the first leg of the update's pass): bf16 legs land back exactly,
    fp32 moves within one rounding each way (≤ 1 ulp; θ in [1.25, 1.75), ulp 2⁻²³)."""
    theta = (1.25 + 0.5 * torch.rand(2000, generator=torch.Generator().manual_seed(4)))
    weights = theta.to(dtype).requires_grad_()
    start = weights.detach().clone()
    optimizer = create_optimizer("hizoo", [weights], lr=1e-2, eps=1e-2, hessian_smooth=0.5)
    optimizer.step(lambda: weights.detach().float().square().sum())  # H no longer 1
    start = weights.detach().clone()
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == at_call:
            if failure == "raise":
                raise RuntimeError("interrupted")
            return torch.tensor(float("nan"))
        return weights.detach().float().square().sum()

    with pytest.raises(RuntimeError if failure == "raise" else NonFiniteLossError):
        optimizer.step(closure)
    if dtype == torch.bfloat16:
        assert torch.equal(weights.detach(), start)
    else:
        assert ((weights.detach() - start).abs() <= 2**-23).all()
