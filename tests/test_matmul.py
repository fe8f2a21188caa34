"""``model.matmul``: products of half-precision weights native or in fp32 (zotune.models.matmul)."""

from __future__ import annotations

import pytest
import torch

from matmul_helpers import rounded_product_bound
from zotune.config import build_config
from zotune.models import matmul
from zotune.models.matmul import (
    Float32MatmulLinear,
    MatmulError,
    apply_matmul,
    resolve_matmul,
    rows_to_pay_for_copy,
    use_float32_matmul,
)
from zotune.models.mixed_precision import compute_context
from zotune.training.run import build_model, check_config


def half_layer(dtype, inputs=24, outputs=40, bias=True):
    torch.manual_seed(0)
    return torch.nn.Linear(inputs, outputs, bias=bias).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_the_fp32_product_is_the_exact_product_rounded_once(dtype, bias):
    layer = half_layer(dtype, bias=bias)
    x = torch.randn(16, 24).to(dtype)
    exact, bound = rounded_product_bound(x, layer.weight, layer.bias, dtype)
    use_float32_matmul(layer)
    out = layer(x)
    assert type(layer) is Float32MatmulLinear and out.dtype == dtype
    assert ((out.double() - exact).abs() <= bound).all()


def products_taken(layer, rows):
    """The dtypes of the operands ``layer``'s product ran on, for an input of ``rows`` rows."""
    seen = []
    linear = torch.nn.functional.linear

    def spy(x, w, b=None):
        seen.append((x.dtype, w.dtype))
        return linear(x, w, b)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "linear", spy)
        layer(torch.randn(rows, 24).to(torch.bfloat16))
    return seen


@pytest.mark.parametrize(("min_rows", "rows", "product"), [
    (0, 1, torch.float32),  # float32 mode: every input
    (16, 8, torch.bfloat16),  # below the rows that pay for the weight's copy: native
    (16, 16, torch.float32),
    (16, 32, torch.float32),
    (128, 96, torch.bfloat16),
])
def test_inputs_below_the_layer_s_rows_keep_the_native_product(min_rows, rows, product):
    layer = half_layer(torch.bfloat16)
    use_float32_matmul(layer, min_rows=min_rows)
    assert products_taken(layer, rows) == [(product, product)]


@pytest.mark.parametrize(("ratio", "rows"), [
    (6.43, 16),  # the AVX2 EPYC: bf16 GEMM 6.4x slower, fp32 from 16 rows (one example-batch)
    (1.85, 128),  # the Xeon with AVX-512 BF16: the 26-token batches of 16 (416 rows) in fp32
    (1.3, 256),
    (1.05, 512),  # at most MAX_MIN_ROWS
    (0.8, 512),
    (65.0, 1),
])
def test_the_rows_that_pay_for_the_copy_of_a_weight(ratio, rows):
    """COPY_ROWS / (ratio − 1), rounded up to a power of two. The fixed 512 it replaces sent
    16 × 26-token batches (416 rows) through the native product on the EPYC, 5× slower."""
    assert rows_to_pay_for_copy(ratio) == rows


@pytest.mark.parametrize(("mode", "ratio", "rows"), [
    ("auto", 6.43, 16), ("auto", 1.85, 128), ("float32", 1.85, 0), ("float32", 0.5, 0),
])
def test_apply_gives_the_layers_their_rows(monkeypatch, mode, ratio, rows):
    monkeypatch.setattr(matmul, "native_over_float32", lambda dtype, threads: ratio)
    layer = half_layer(torch.bfloat16)
    assert apply_matmul(layer, mode, "cpu") == "float32"
    assert layer.min_rows == rows and matmul.float32_rows(layer) == rows
    assert matmul.float32_rows(half_layer(torch.bfloat16)) is None


def test_the_swap_keeps_names_state_and_what_wraps_the_layer():
    model = torch.nn.Sequential(half_layer(torch.bfloat16), torch.nn.Linear(40, 2))
    names = [name for name, _ in model.named_parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_float32_matmul(model) == 1  # the fp32 layer keeps its class
    assert isinstance(model[0], torch.nn.Linear) and type(model[1]) is torch.nn.Linear
    assert [name for name, _ in model.named_parameters()] == names
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_gradients_reach_the_half_precision_weights():
    layer = half_layer(torch.bfloat16)
    use_float32_matmul(layer)
    layer(torch.randn(16, 24).to(torch.bfloat16)).float().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.bfloat16


BF16 = torch.bfloat16


@pytest.mark.parametrize(
    ("mode", "dtype", "autocast", "device", "ratio", "expected"),
    [
        ("auto", torch.float32, None, "cpu", 9.0, "native"),  # fp32 products: nothing to upcast
        ("float32", torch.float32, None, "cpu", 9.0, "native"),
        ("auto", torch.bfloat16, None, "cuda", 9.0, "native"),  # a GPU's half GEMM is fast
        ("auto", torch.bfloat16, None, "cpu", 1.8, "float32"),
        ("auto", torch.bfloat16, None, "cpu", 1.1, "native"),  # within the margin: keep native
        ("auto", torch.float16, None, "cpu", 0.4, "native"),
        ("native", torch.bfloat16, None, "cpu", 9.0, "native"),
        ("float32", torch.bfloat16, None, "cpu", 0.4, "float32"),
        # fp32 weights under autocast: their products are the autocast dtype's
        ("auto", torch.float32, BF16, "cpu", 1.8, "float32"),
        ("auto", torch.float32, BF16, "cpu", 1.1, "native"),
        ("auto", torch.float32, BF16, "cuda", 9.0, "native"),
        ("native", torch.float32, BF16, "cpu", 9.0, "native"),
        ("float32", torch.float32, BF16, "cpu", 0.4, "float32"),
    ],
)
def test_what_each_mode_resolves_to(monkeypatch, mode, dtype, autocast, device, ratio,
                                    expected):
    monkeypatch.setattr(matmul, "native_over_float32", lambda dtype, threads: ratio)
    assert resolve_matmul(mode, dtype, device, autocast) == expected


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_under_autocast_fp32_weights_compute_autocast_s_rounded_product(dtype, bias):
    """Autocast rounds input, weight and bias to the half dtype, multiplies and rounds the
    output: the fp32 layer computes the exact product of the rounded operands rounded once,
    its output in the autocast dtype, and its gradients pass back through the same casts
    (each rounded to the half dtype, as autocast's half GEMMs output them)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40, bias=bias)
    x = torch.randn(16, 24, requires_grad=True)
    exact, bound = rounded_product_bound(x.detach(), layer.weight.detach(),
                                         None if layer.bias is None else layer.bias.detach(),
                                         dtype)
    assert use_float32_matmul(layer, autocast=True) == 1
    with torch.autocast("cpu", dtype=dtype):
        out = layer(x)
    assert out.dtype == dtype and ((out.double() - exact).abs() <= bound).all()
    upstream = torch.randn(out.shape).to(dtype)
    out.backward(upstream)
    expected = {  # each gradient's exact value from the rounded operands, and its bound
        "input": rounded_product_bound(upstream.float(), layer.weight.detach().t(), None, dtype),
        "weight": rounded_product_bound(upstream.float().t(), x.detach().t(), None, dtype),
    }
    for name, grad in (("input", x.grad), ("weight", layer.weight.grad)):
        value, limit = expected[name]
        assert grad.dtype == torch.float32
        assert torch.equal(grad, grad.to(dtype).float()), name  # rounded to the half dtype
        assert ((grad.double() - value).abs() <= limit).all(), name


def test_without_autocast_fp32_weights_keep_the_fp32_product():
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40)
    x = torch.randn(16, 24)
    plain = layer(x)
    use_float32_matmul(layer, autocast=True)
    assert torch.equal(layer(x), plain)


def test_auto_times_this_cpu_once_per_dtype_and_threads():
    matmul.native_over_float32.cache_clear()
    first = matmul.native_over_float32(torch.bfloat16, torch.get_num_threads())
    assert first > 0
    assert matmul.native_over_float32(torch.bfloat16, torch.get_num_threads()) == first
    assert matmul.native_over_float32.cache_info().hits == 1


def test_a_model_says_how_its_products_run():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    assert matmul.matmul_mode(model) == "native"
    model.to(torch.bfloat16)
    matmul.use_float32_matmul(model)
    assert matmul.matmul_mode(model) == "float32"


class BusyMachine:
    """A clock and two workloads (native 2 units, fp32 1 unit) on a machine that something
    else slows fourfold during the first ``busy`` calls: the situation that made the probe
    flip between modes from one process to the next."""

    def __init__(self, busy: int) -> None:
        self.now, self.calls, self.busy = 0.0, 0, busy

    def clock(self) -> float:
        return self.now

    def work(self, units: float):
        def run():
            self.calls += 1
            self.now += units * (4.0 if self.calls <= self.busy else 1.0)
        return run


@pytest.mark.parametrize("busy", [0, 3, 7, 9])
def test_the_probe_pairs_its_two_gemms_so_a_busy_spell_cancels(busy):
    """Each round times the native and fp32 GEMM back to back and the median round decides:
    a slowdown over a run of calls (another process on the core) moves at most the rounds it
    straddles, so the ratio stays 2. Timing five of one and then five of the other would put
    every native call in the busy spell and every fp32 call outside it (ratio 8)."""
    machine = BusyMachine(busy)
    ratio = matmul.paired_ratio(machine.work(2.0), machine.work(1.0), rounds=7,
                                clock=machine.clock)
    assert ratio == pytest.approx(2.0)


def test_an_unknown_mode_is_refused_before_the_model_loads():
    config = build_config({"model": {"name": "random:tiny-llama", "matmul": "fp32"}})
    with pytest.raises(MatmulError, match=r"model\.matmul: unknown mode 'fp32' \(choose from "):
        check_config(config)


@pytest.mark.parametrize("scheme", ["full", "lora"])
@pytest.mark.parametrize(("dtype", "autocast"), [("bfloat16", None), ("float32", "bfloat16")])
def test_a_run_model_computes_as_its_mode_says(scheme, dtype, autocast):
    models = {}
    for mode in ("native", "float32"):
        config = build_config({
            "model": {"name": "random:tiny-llama", "dtype": dtype, "autocast": autocast,
                      "matmul": mode},
            "tuning": {"scheme": scheme},
        })
        tuned = build_model(config)
        assert tuned.matmul == mode
        models[mode] = tuned.model
    swapped = [m for m in models["float32"].modules() if type(m) is Float32MatmulLinear]
    assert swapped and not any(
        type(m) is Float32MatmulLinear for m in models["native"].modules()
    )
    if scheme == "lora":  # the adapters keep nn.Linear; their base layers compute in fp32
        adapters = [m for name, m in models["float32"].named_modules() if "lora_" in name]
        assert adapters and not any(type(m) is Float32MatmulLinear for m in adapters)
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad(), compute_context(autocast, "cpu"):
        native, upcast = (models[m](ids).logits.float() for m in ("native", "float32"))
    # Same weights, sums in another order: equal to bf16 rounding through a few layers.
    assert torch.allclose(native, upcast, rtol=0.05, atol=0.05)


def test_apply_makes_the_layers_compute_as_auto_chose(monkeypatch):
    monkeypatch.setattr(matmul, "native_over_float32", lambda dtype, threads: 9.0)
    layer = half_layer(torch.bfloat16)
    assert apply_matmul(layer, "auto", "cpu") == "float32"
    assert type(layer) is Float32MatmulLinear


@pytest.mark.parametrize("mode", ["native", "float32"])
def test_a_run_records_how_its_products_ran(tiny_run_config, sst2_dir, tmp_path, mode):
    from zotune.training.train import finetune

    result = finetune(tiny_run_config(
        sst2_dir, tmp_path, train__steps=1, model__dtype="bfloat16", model__matmul=mode
    ))
    assert result.matmul == mode
    assert result.record()["matmul"] == mode


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_probe_s_timed_gemms_allocate_nothing(dtype):
    """Under `zotune profile`'s resident-set tracking every allocation of 128 KiB or more is
    fresh zeroed pages: the upcast path's temporaries (copies of x and W, the fp32 product)
    cost more there than in a run and took the ratio from 1.7 to 1.3, flipping the mode from
    one profiled process to the next. The timed calls write into buffers made once."""
    from torch.profiler import ProfilerActivity, profile

    native, upcast = matmul.probe_workloads(dtype)
    native()
    upcast()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        native()
        upcast()
    allocated = sum(max(e.cpu_memory_usage, 0) for e in prof.events())
    assert allocated == 0


@pytest.mark.parametrize(("weights", "autocast"), [(torch.bfloat16, False),
                                                   (torch.float32, True)])
def test_forward_mode_ad_differentiates_the_fp32_product(weights, autocast):
    """Forward-Grad's dual weights: the product's directional derivative is the same linear
    layer's on the tangents (the operator alone has no forward-mode formula and dropped it)."""
    import torch.autograd.forward_ad as fwad

    layer = half_layer(weights)
    use_float32_matmul(layer, autocast=autocast)
    x = torch.randn(16, 24).to(weights)
    tangent = torch.randn_like(layer.weight)
    with fwad.dual_level(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        weight = layer.weight.detach().clone()
        del layer.weight
        layer.weight = fwad.make_dual(weight, tangent)
        out_tangent = fwad.unpack_dual(layer(x)).tangent
    assert out_tangent is not None
    expected = x.to(torch.bfloat16).double() @ tangent.to(torch.bfloat16).double().t()
    assert torch.allclose(out_tangent.double(), expected, rtol=2**-7, atol=2**-7)
