"""The noise-table sampler: isotropy, independence, wrapping, and the fast paths' arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from zotune.estimators import DISTRIBUTIONS, DirectionSampler, IndexedParam, mix_seed
from zotune.estimators.base import shift
from zotune.estimators.directions import chunk_hashes, noise_table
from zotune.optim import create_optimizer


def all_slices(table: torch.Tensor, n: int) -> torch.Tensor:
    """Every circular slice T[o : o + n] of the table, one per row (o = 0 … N − 1)."""
    index = (torch.arange(len(table))[:, None] + torch.arange(n)) % len(table)
    return table[index]


def test_table_slices_are_exactly_isotropic():
    """E_o,σ[z zᵀ] = I for a slice at a uniform offset o with a fair sign σ, computed exactly.

    Exact because the table is whitened (flat spectrum, so its circular autocorrelation is a
    delta). A raw Gaussian table of the same size is visibly anisotropic at this slice length.
    """
    n, size = 256, 1024
    slices = all_slices(noise_table(size, "cpu", torch.float64), n)
    second_moment = slices.T @ slices / size  # the sign σ² = 1 drops out
    torch.testing.assert_close(second_moment, torch.eye(n, dtype=torch.float64), atol=1e-9, rtol=0)

    raw = torch.randn(size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    raw_slices = all_slices(raw, n)
    off_diagonal = (raw_slices.T @ raw_slices / size - torch.eye(n, dtype=torch.float64)).abs()
    assert off_diagonal.max() > 0.05


def test_table_values_look_standard_normal():
    table = noise_table(1 << 22, "cpu", torch.float32).double()
    assert abs(table.mean().item()) < 1e-3
    assert table.pow(2).mean().item() == pytest.approx(1.0, abs=1e-6)
    assert (table.pow(4).mean().item()) == pytest.approx(3.0, abs=0.02)  # Gaussian kurtosis
    assert table.abs().max().item() < 6


def test_sampler_second_moment_through_the_hashed_offsets():
    """(c) E[z zᵀ] ≈ I on a small tensor, sampled through the real seed → offset, sign path."""
    sampler = DirectionSampler("table")
    like = torch.empty(8, dtype=torch.float64)
    draws = torch.stack([sampler.direction(like, seed, index=3) for seed in range(20000)])
    moment = draws.T @ draws / len(draws)
    tolerance = 5 * math.sqrt(2 / len(draws))  # ≈ 5 standard errors of a product moment
    assert (moment.diagonal() - 1).abs().max() < tolerance
    assert (moment - torch.diag(moment.diagonal())).abs().max() < tolerance
    assert draws.mean(0).abs().max() < 5 / math.sqrt(len(draws))


def test_offsets_cover_the_table_and_signs_are_fair():
    size = 1 << 12
    hashes = torch.tensor(
        [
            mix_seed(seed, index, chunk)
            for seed in range(64)
            for index in range(32)
            for chunk in (0, 1)
        ]
    )
    offsets = hashes & (size - 1)
    counts = torch.bincount(offsets // 64, minlength=size // 64).double()  # 64 bins of 64
    expected = len(hashes) / len(counts)
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 63 + 5 * math.sqrt(2 * 63)  # χ² with 63 degrees of freedom, 5σ
    signs = (hashes >> 62) & 1
    assert abs(signs.double().mean().item() - 0.5) < 5 * 0.5 / math.sqrt(len(hashes))


def test_chunk_hashes_equal_mix_seed():
    assert chunk_hashes(123, 45, 6) == [mix_seed(123, 45, c) for c in range(6)]
    assert chunk_hashes(-1, 2**70, 2) == [mix_seed(-1, 2**70, c) for c in range(2)]


def test_table_draw_is_a_signed_circular_slice():
    size = 1 << 10
    sampler = DirectionSampler("table", chunk_numel=300, table_numel=size)
    table = noise_table(size, "cpu", torch.float32)
    param = torch.empty(1000)
    z = sampler.direction(param, seed=9, index=2)
    for chunk, view in sampler.views(param):
        h = mix_seed(9, 2, chunk)
        sign = -1.0 if h >> 62 else 1.0
        index = ((h % size) + torch.arange(view.numel())) % size
        start = chunk * 300
        assert torch.equal(z[start : start + view.numel()], sign * table[index])


def test_wrapping_chunks_are_covered():
    """Some chunks run past the end of a small table; add_ must wrap them like draw does."""
    size, chunk = 1 << 8, 1 << 7
    sampler = DirectionSampler("table", chunk_numel=chunk, table_numel=size)
    param = torch.zeros(50 * chunk + 17, dtype=torch.float64)
    offsets = [h & (size - 1) for h in chunk_hashes(4, 0, 51)]
    assert any(o + chunk > size for o in offsets) and any(o + chunk <= size for o in offsets)
    sampler.add_([IndexedParam(0, param)], seed=4, alpha=0.5)
    torch.testing.assert_close(param, 0.5 * sampler.direction(param, 4, 0), rtol=0, atol=0)


def plain_add(sampler, params, seed, alpha):
    """The reference pass: draw each chunk into scratch, then add it (no foreach, no merge)."""
    for item in params:
        for chunk, view in sampler.views(item.param):
            view.add_(sampler.draw(view, seed, item.index, chunk), alpha=alpha)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("distribution", ["table", "gaussian"])
def test_grouped_add_matches_the_plain_pass(distribution, dtype):
    """The foreach-grouped pass over many small tensors equals chunk-by-chunk adds."""
    sampler = DirectionSampler(distribution, chunk_numel=1000, table_numel=1 << 12)
    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 96)] * 30 + [(3000,), (7,)]
    fast = [IndexedParam(i, torch.randn(s, generator=gen).to(dtype)) for i, s in enumerate(shapes)]
    slow = [IndexedParam(p.index, p.param.clone()) for p in fast]
    sampler.add_(fast, seed=11, alpha=1e-3)
    plain_add(sampler, slow, seed=11, alpha=1e-3)
    for a, b in zip(fast, slow, strict=True):
        assert torch.equal(a.param, b.param)


def test_non_contiguous_tensor_gets_a_whole_direction():
    sampler = DirectionSampler("table", chunk_numel=64, table_numel=64)
    base = torch.zeros(30, 10, dtype=torch.float64)
    param = base.T  # 300 values > the table: its single chunk wraps (repeats) by design
    assert not param.is_contiguous()
    sampler.add_([IndexedParam(0, param)], seed=1, alpha=1.0)
    z = sampler.draw(param, 1, 0, 0)
    torch.testing.assert_close(param, z, rtol=0, atol=0)


def test_auto_is_table_on_cpu():
    assert DISTRIBUTIONS == ("auto", "gaussian", "rademacher", "table", "mezo")
    sampler = DirectionSampler()
    assert sampler.kind(torch.device("cpu")) == "table"
    assert sampler.kind(torch.device("cuda")) == "gaussian"
    assert DirectionSampler("gaussian").kind(torch.device("cpu")) == "gaussian"


@pytest.mark.parametrize("table_numel", [1000, True, 1])
def test_bad_table_size_names_the_bad_value(table_numel):
    with pytest.raises(ValueError, match=f"Invalid table_numel: {table_numel} "):
        DirectionSampler(table_numel=table_numel)


def test_table_chunks_are_capped_at_the_table_size():
    """A longer chunk would repeat table values within one z; sampled chunks are not capped."""
    assert DirectionSampler("table", chunk_numel=1 << 23).chunk_numel == 1 << 22
    assert DirectionSampler("auto", chunk_numel=100, table_numel=64).chunk_numel == 64
    assert DirectionSampler("gaussian", chunk_numel=1 << 23).chunk_numel == 1 << 23


def test_table_step_allocates_no_scratch_and_one_table():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 2))
    opt = create_optimizer("zo-sgd", model, lr=1e-3, distribution="table", table_numel=1 << 12)
    inputs = torch.randn(8, 64)
    for _ in range(3):
        opt.step(lambda: model(inputs).square().mean())
    # The only buffer a table step adds is the shared table (16 KiB here, 16 MiB by default).
    assert opt.estimator.sampler._scratch == {}
    assert noise_table(1 << 12, "cpu", torch.float32).untyped_storage().nbytes() == 16 << 10


def reference_zo_sgd(params, sampler, loss, *, lr, eps, seed, weight_decay):
    """A plain ZO-SGD step from whole materialised directions: +εz, −2εz, +εz, then update."""
    z = [sampler.direction(p, seed, i) for i, p in enumerate(params)]
    with torch.no_grad():
        for p, d in zip(params, z, strict=True):
            p.add_(d, alpha=eps)
        plus = float(loss())
        for p, d in zip(params, z, strict=True):
            p.add_(d, alpha=-2 * eps)
        minus = float(loss())
        coeff = (plus - minus) / (2 * eps)
        for p, d in zip(params, z, strict=True):
            p.add_(d, alpha=eps)
            if p.ndim >= 2:
                p.mul_(1 - lr * weight_decay)
            p.add_(d, alpha=-lr * coeff)


@pytest.mark.parametrize("distribution", ["table", "gaussian"])
def test_fused_zo_sgd_step_matches_the_plain_step(distribution):
    """Merged legs, foreach passes and the fused restore+update keep the arithmetic."""

    def problem():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.Tanh(), torch.nn.Linear(40, 1))
        model.double()
        inputs = torch.randn(32, 6, dtype=torch.float64)
        return model, lambda: model(inputs).square().mean()

    fast_model, fast_loss = problem()
    opt = create_optimizer(
        "zo-sgd", fast_model, lr=0.05, weight_decay=0.1, distribution=distribution, seed=5
    )
    slow_model, slow_loss = problem()
    params = list(slow_model.parameters())
    sampler = opt.estimator.sampler
    for step in range(5):
        opt.step(fast_loss)
        step_seed = mix_seed(mix_seed(5, step), 0)  # the optimizer's stream, query 0
        reference_zo_sgd(
            params, sampler, slow_loss, lr=0.05, eps=1e-3, seed=step_seed, weight_decay=0.1
        )
    for a, b in zip(fast_model.parameters(), params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_merged_legs_equal_sequential_legs_in_fp32():
    sampler = DirectionSampler("table", chunk_numel=100, table_numel=1 << 10)
    a, b = torch.zeros(300, dtype=torch.float64), torch.zeros(300, dtype=torch.float64)
    shift([IndexedParam(0, a)], sampler, [(1, -1e-3), (2, 0.5), (1, -1e-3)])
    for seed, scale in [(1, -1e-3), (2, 0.5), (1, -1e-3)]:
        plain_add(sampler, [IndexedParam(0, b)], seed, scale)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


def test_cached_pieces_follow_a_replaced_storage():
    """The per-seed pieces are reused across passes, never onto a tensor's old storage."""
    sampler = DirectionSampler("table", chunk_numel=64, table_numel=256)
    param = torch.zeros(300, dtype=torch.float64)
    item = [IndexedParam(0, param)]
    sampler.add_(item, seed=7, alpha=1.0)
    sampler.add_(item, seed=7, alpha=1.0)  # from the cache
    z = sampler.direction(param, 7, 0)
    torch.testing.assert_close(param, 2 * z, rtol=0, atol=0)
    param.data = torch.zeros(300, dtype=torch.float64)  # new storage, same tensor object
    sampler.add_(item, seed=7, alpha=1.0)
    torch.testing.assert_close(param, z, rtol=0, atol=0)
    assert len(sampler._plans) == 1
    for seed in range(10):
        sampler.add_(item, seed=seed, alpha=1e-3)
    assert len(sampler._plans) == 4  # the last few seeds only


def test_table_values_do_not_depend_on_which_tables_were_built_first():
    from zotune.estimators import directions

    first = noise_table(1 << 10, "cpu", torch.bfloat16).clone()
    directions._TABLES.clear()
    noise_table(1 << 10, "cpu", torch.float32)
    assert torch.equal(noise_table(1 << 10, "cpu", torch.bfloat16), first)
    torch.testing.assert_close(
        noise_table(1 << 10, "cpu", torch.float32).double(),
        noise_table(1 << 10, "cpu", torch.float64),
        rtol=1e-7,
        atol=0,
    )


def mezo_stream(seed: int, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """MeZO's z (large_models/trainer.py:708-711): the global seed, then torch.normal per
    tensor in order."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [
            torch.normal(mean=0, std=1, size=t.size(), dtype=t.dtype) for t in tensors
        ]


@pytest.mark.parametrize(
    "order",
    [[0, 1, 2, 3], [2, 0, 3, 1], [3, 3, 1, 0]],
    ids=["in-order", "shuffled", "repeated"],
)
def test_mezo_draws_equal_mezos_stream_in_any_order(order):
    """The sampler follows the sequential stream whatever order a pass asks in."""
    tensors = [torch.zeros(5, 3), torch.zeros(7), torch.zeros(2, 2, dtype=torch.float64),
               torch.zeros(33)]
    items = [IndexedParam(i, t) for i, t in enumerate(tensors)]
    sampler = DirectionSampler("mezo")
    sampler.cover(items, [1234])
    expected = mezo_stream(1234, tensors)
    for index in order:
        z = sampler.draw(tensors[index], 1234, index, 0)
        assert torch.equal(z, expected[index]), index
    assert torch.equal(sampler.direction(tensors[1], 1234, 1), expected[1])


def test_mezo_refuses_a_tensor_its_estimate_did_not_declare():
    sampler = DirectionSampler("mezo")
    sampler.cover([IndexedParam(0, torch.zeros(3))], [5])
    with pytest.raises(RuntimeError, match="tensor 1 was not declared for seed 5"):
        sampler.draw(torch.zeros(3), 5, 1, 0)


def test_mezo_step_seeds_are_numpys_draws_and_query_zero_is_the_step_seed():
    import numpy as np

    sampler = DirectionSampler("mezo")
    state = np.random.RandomState(42)
    drawn = [int(state.randint(1_000_000_000)) for _ in range(5)]  # MeZO trainer.py:770
    assert [sampler.step_seed(42, t) for t in range(5)] == drawn
    assert sampler.query_seeds(drawn[0], 3)[0] == drawn[0]
    assert len(set(sampler.query_seeds(drawn[0], 3))) == 3
    assert DirectionSampler("gaussian").step_seed(42, 3) == mix_seed(42, 3)


@pytest.mark.parametrize(
    ("key", "options"),
    [
        ("zo-sgd", {"weight_decay": 0.1}),  # linear path, tensors taken bucket by bucket
        ("zo-sgd-mmt", {}),
        ("zo-sgd", {"sparsity": 0.5}),
        ("zo-sgd", {"block_level": "layer"}),
        ("zo-sgd-cons", {"base": "adamw"}),
        ("forward-grad", {}),
    ],
)
def test_mezo_runs_under_every_step_shape(key, options):
    """Every strategy declares its tensors before drawing (none raises), and the run moves."""
    from zotune.models.random_shapes import random_model

    model = random_model("tiny-llama", attn_implementation="eager").model
    ids = torch.randint(5, 300, (2, 8), generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    opt = create_optimizer(key, model, lr=1e-3, distribution="mezo", seed=3, **options)
    for _ in range(2):
        opt.step(lambda: model(input_ids=ids, labels=ids).loss)
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_mezo_seed_must_suit_numpy():
    with pytest.raises(ValueError, match="distribution 'mezo' seeds numpy"):
        create_optimizer("zo-sgd", torch.nn.Linear(2, 1), lr=0.1, distribution="mezo", seed=-1)
