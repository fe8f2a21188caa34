"""LOZO, LOZO-M and SubZero: their directions, schemes, half precision, resume and entries.

The update equations are pinned against the authors' code in
tests/test_golden_frontier_lowrank.py; this file checks what the golden trajectories do not:
the shape of the directions, every tuning scheme, bf16 with stochastic rounding, chunked
draws, resuming from a state dict, and what the registry entries tell the rest of zotune.
"""

from __future__ import annotations

import io

import pytest
import torch

from zotune import cli
from zotune.estimators import DirectionSampler, IndexedParam
from zotune.estimators.low_rank import LOZODirections, SubZeroDirections, square_shape
from zotune.optim import create_optimizer, entry

METHODS = [
    ("lozo", {"lozo_rank": 2, "lozo_interval": 3}),
    ("lozo-m", {"lozo_rank": 2, "lozo_interval": 3}),
    ("subzero", {"subzero_rank": 2, "subzero_interval": 3}),
]
METHOD_IDS = [name for name, _ in METHODS]


def batch(model, seed=5):
    return torch.randint(0, model.config.vocab_size, (2, 8),
                         generator=torch.Generator().manual_seed(seed))


def lm_closure(model, ids):
    return lambda: model(input_ids=ids, labels=ids).loss


@pytest.mark.parametrize(("name", "options"), METHODS, ids=METHOD_IDS)
@pytest.mark.parametrize("scheme", ["full", "lora", "prefix", "prompt"])
def test_every_scheme_trains_and_moves_only_its_trainable_tensors(tiny_model, name, options,
                                                                  scheme):
    model, _ = tiny_model("tiny-llama", scheme)
    ids = batch(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = create_optimizer(name, model, lr=1e-2, eps=1e-2, **options)
    for _ in range(4):
        loss = optimizer.step(lm_closure(model, ids))
        assert torch.isfinite(loss)
    moved = [n for n, p in model.named_parameters() if p.requires_grad
             and not torch.equal(p, start[n])]
    assert moved
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), n


def matrix_param(rows=6, columns=5, seed=0):
    return torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk_numel", [7, 5, 1 << 20])
def test_chunks_of_a_direction_are_the_rows_of_its_factors(chunk_numel):
    """A chunk that starts and ends inside rows is cut from the product U Vᵀ exactly."""
    weight, bias = matrix_param(), torch.randn(6)
    params = [IndexedParam(0, weight), IndexedParam(1, bias)]
    base = DirectionSampler("gaussian", chunk_numel=chunk_numel)
    whole = LOZODirections(DirectionSampler("gaussian"), params, 0, rank=2, interval=3)
    chunked = LOZODirections(base, params, 0, rank=2, interval=3)
    for sampler in (whole, chunked):
        sampler.set_step(0)
    for item in params:
        expected = whole.direction(item.param, 123, item.index)
        pieces = [chunked.draw(view, 123, item.index, chunk).clone()
                  for chunk, view in chunked.views(item.param)]
        torch.testing.assert_close(torch.cat(pieces).view_as(expected), expected,
                                   rtol=0, atol=1e-6)


def test_lozo_directions_are_rank_r_with_v_kept_for_nu_steps():
    weight = matrix_param(8, 7)
    params = [IndexedParam(0, weight)]
    sampler = LOZODirections(DirectionSampler(), params, 0, rank=2, interval=3)
    row_spaces = []
    for step in range(6):
        sampler.set_step(step)
        z = sampler.direction(weight, 1000 + step, 0)
        assert torch.linalg.matrix_rank(z) == 2
        row_spaces.append(torch.linalg.svd(z).Vh[:2])

    def same_space(a, b):
        return torch.allclose(a.T @ a, b.T @ b, atol=1e-5)

    assert same_space(row_spaces[0], row_spaces[1]) and same_space(row_spaces[0], row_spaces[2])
    assert not same_space(row_spaces[2], row_spaces[3])
    assert same_space(row_spaces[3], row_spaces[5])


def test_subzero_directions_live_in_bases_kept_for_t_steps_with_dense_scale():
    weight = matrix_param(9, 8)
    params = [IndexedParam(0, weight)]
    sampler = SubZeroDirections(DirectionSampler(), params, 0, rank=3, interval=2)
    spaces = []
    for step in range(4):
        sampler.set_step(step)
        z = sampler.direction(weight, 2000 + step, 0)
        assert torch.linalg.matrix_rank(z) == 3  # the tolerance of z's own dtype
        z = z.double()
        u, vt = (b.double() for b in sampler.bases[0])
        torch.testing.assert_close(u.T @ u, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
        torch.testing.assert_close(u @ u.T @ z @ vt.T @ vt, z, atol=1e-5, rtol=1e-5)
        spaces.append(u @ u.T)
    assert torch.allclose(spaces[0], spaces[1]) and not torch.allclose(spaces[1], spaces[2])
    # √(mn/r²)·UΣVᵀ: E‖Z‖² = mn, as a dense Gaussian z's.
    sampler.set_step(0)
    norms = [float(sampler.direction(weight, s, 0).pow(2).sum()) for s in range(400)]
    assert abs(sum(norms) / len(norms) / weight.numel() - 1) < 0.15


def test_square_shape_is_the_references_reshape():
    assert square_shape(8 * 576) == (64, 72)
    assert square_shape(10 * 576) == (72, 80)
    assert square_shape(13) == (1, 13)
    assert square_shape(36) == (6, 6)


@pytest.mark.parametrize(("name", "options"), METHODS, ids=METHOD_IDS)
def test_bf16_with_stochastic_rounding_trains(tiny_model, name, options):
    model, _ = tiny_model("tiny-llama", "full")
    model = model.to(torch.bfloat16)
    ids = batch(model)
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = create_optimizer(name, model, lr=1e-3, eps=1e-2, **options)
    for _ in range(3):
        assert torch.isfinite(optimizer.step(lm_closure(model, ids)))
    changed = sum(int((p != s).sum()) for p, s in zip(model.parameters(), start, strict=True))
    assert changed > 0
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.mark.parametrize(("name", "options"), METHODS, ids=METHOD_IDS)
def test_a_resumed_run_takes_the_same_steps(tiny_model, name, options):
    """Resuming mid-period (step 4 of ν = T = 3) from a state dict saved and loaded as data."""

    def fresh():
        model, _ = tiny_model("tiny-llama", "full")
        return model.double(), create_optimizer(name, model.double(), lr=1e-2, eps=1e-3,
                                                **options)

    model, optimizer = fresh()
    ids = batch(model)
    for _ in range(7):
        optimizer.step(lm_closure(model, ids))
    straight = [p.detach().clone() for p in model.parameters()]

    model, optimizer = fresh()
    for _ in range(4):
        optimizer.step(lm_closure(model, ids))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model, optimizer = fresh()
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    for _ in range(3):
        optimizer.step(lm_closure(model, ids))
    for resumed, expected in zip(model.parameters(), straight, strict=True):
        torch.testing.assert_close(resumed, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", METHOD_IDS)
def test_the_entries_declare_passes_state_and_refusals(name):
    spec = entry(name)
    assert spec.forward_passes() == 2 and spec.forward_passes(q=3) == 6
    assert spec.state_tensors() == 0  # nothing parameter-sized
    assert spec.side_state_values((576, 1536)) > 0
    assert spec.side_state_values((576, 1536)) < 576 * 1536 // 10
    model = torch.nn.Linear(4, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'sparsity'"):
        create_optimizer(name, model, lr=1e-3, sparsity=0.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'distribution'"):
        create_optimizer(name, model, lr=1e-3, distribution="table")


def test_the_options_reach_the_command_line_with_the_references_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in [("--lozo-rank", "default 2"), ("--lozo-interval", "default 50"),
                          ("--lozo-beta", "default 0.9"), ("--subzero-rank", "default 8"),
                          ("--subzero-interval", "default 2000"), ("--subzero-square", "")]:
        assert flag in text
        assert default in text.rsplit(flag, 1)[1][:300]  # its help line, after the usage
    assert entry("subzero").run_defaults("lora")["subzero_square"] is True
    assert entry("subzero").run_defaults("full")["subzero_square"] is False


def test_lozo_m_momentum_lives_in_its_factor():
    weight = torch.zeros(6, 5, dtype=torch.float64, requires_grad=True)
    optimizer = create_optimizer("lozo-m", [weight], lr=1e-2, eps=1e-3, lozo_rank=2,
                                 lozo_interval=4, lozo_beta=0.5)
    target = torch.randn(6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for _ in range(3):
        optimizer.step(lambda: ((weight - target) ** 2).sum())
    sampler = optimizer.estimator.sampler
    momentum = sampler.momentum[0]
    assert momentum.shape == (6, 2)
    assert not optimizer.state[weight].get("momentum_buffer")
    # Every update so far lies in the row space of this period's V.
    v = sampler.v[0]
    projector = v @ torch.linalg.pinv(v)
    assert weight.abs().max() > 1e-3
    torch.testing.assert_close(weight.detach() @ projector, weight.detach(), atol=1e-12, rtol=0)
