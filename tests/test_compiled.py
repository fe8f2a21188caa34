"""compile_model: equal to eager within bf16 rounding, no recompiles across ZO moves and
sequence lengths, every tuning scheme, and the eager fallback."""

import warnings

import pytest
import torch

from matmul_helpers import rounded_product_bound
from zotune.models import compiled
from zotune.models import matmul as matmul_module
from zotune.models.compiled import compile_model, is_compiled
from zotune.optim import create_optimizer

needs_backend = pytest.mark.skipif(
    compiled.backend_unavailable() is not None, reason="no torch.compile backend here"
)


def batch(length: int, vocab: int = 256, rows: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(length)
    return torch.randint(5, vocab, (rows, length), generator=generator)


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@needs_backend
@pytest.mark.parametrize(
    ("scheme", "matmul"),
    [("full", "native"), ("lora", "native"), ("prefix", "native"), ("prompt", "native"),
     ("full", "float32"), ("lora", "float32")],
)
def test_compiled_forward_equals_eager_and_survives_in_place_moves(tiny_model, scheme, matmul):
    """Logits within bf16 rounding of eager (a few ulps of bf16 at the logits' scale: the
    compiler may fuse and reorder the fp32 accumulations of each op); ZO steps, which move
    the weights in place, and a new sequence length reuse the compiled graph. The same with
    the products of the bf16 weights in fp32 (``model.matmul=float32``)."""
    torch._dynamo.reset()
    model, _ = tiny_model("tiny-llama", scheme)
    model = model.to(torch.bfloat16)
    if matmul == "float32":
        assert matmul_module.use_float32_matmul(model) > 0
    ids = batch(12)
    with torch.no_grad():
        eager = model(input_ids=ids).logits.float()
    compile_model(model)
    assert is_compiled(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled_logits = model(input_ids=ids).logits.float()
        graphs = unique_graphs()
        tolerance = 16 * 2**-8 * (eager.abs().max().item() + 1)
        assert (compiled_logits - eager).abs().max().item() <= tolerance
        params = [p for p in model.parameters() if p.requires_grad]
        opt = create_optimizer("zo-sgd", params, lr=1e-2, eps=1e-2)
        for _ in range(2):
            opt.step(lambda: model(input_ids=ids).logits.float().square().mean())
        model(input_ids=batch(20))
    assert unique_graphs() == graphs


@needs_backend
def test_compiled_autocast_products_in_fp32_keep_their_casts():
    """fp32 weights under autocast with ``model.matmul=float32`` round input and weight to
    bf16 before an fp32 product; inductor drops a round trip through bf16 unless told to
    emulate the casts, which computed the unrounded product (0.5 off at outputs near 24 here,
    where the rounded product's bound is about 0.1)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(576, 64))
    x = torch.randn(768, 576)
    matmul_module.use_float32_matmul(model, autocast=True)
    layer = model[0]
    exact, bound = rounded_product_bound(x, layer.weight.detach(), layer.bias.detach(),
                                         torch.bfloat16)
    compile_model(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(x)
    assert out.dtype == torch.bfloat16 and ((out.double() - exact).abs() <= bound).all()


def mm_output_dtypes(code: str) -> list[str]:
    """The dtypes of the buffers that inductor's generated ``extern_kernels.mm`` calls write,
    following its buffer reuse (``buf5 = buf1; del buf1  # reuse``) line by line."""
    import re

    dtypes, written = {}, []
    for line in code.splitlines():
        if allocated := re.search(r"(buf\d+) = empty_strided_cpu\(.*, torch\.(\w+)\)", line):
            dtypes[allocated[1]] = allocated[2]
        elif alias := re.search(r"(buf\d+) = (buf\d+)\b", line):
            dtypes[alias[1]] = dtypes.get(alias[2], "?")
        elif product := re.search(r"extern_kernels\.mm\(.*out=(buf\d+)\)", line):
            written.append(dtypes.get(product[1], "?"))
    return written


@needs_backend
@pytest.mark.parametrize(("weights", "autocast"), [(torch.float32, True),
                                                   (torch.bfloat16, False)])
def test_the_compiled_backward_multiplies_in_fp32(weights, autocast):
    """The backward of the fp32 products: traced through, inductor turned its products of
    rounded operands into bf16 GEMMs (bf16 buffers out of ``extern_kernels.mm``), which on
    an AVX2 CPU made a compiled forward and backward 7× slower than eager. As an operator of
    its own (``zotune::rounded_linear``) the layer's backward multiplies in fp32, with the
    gradients still rounded to bf16."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.SiLU(),
                                torch.nn.Linear(48, 32)).to(weights)
    matmul_module.use_float32_matmul(model, autocast=autocast)
    x = torch.randn(16, 64).to(weights).requires_grad_()
    compile_model(model)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(x).float().square().sum().backward()

    _, code = run_and_get_code(step)
    written = [dtype for source in code for dtype in mm_output_dtypes(source)]
    assert written and set(written) == {"float32"}, written
    for grad in (x.grad, model[0].weight.grad):
        assert torch.equal(grad, grad.to(torch.bfloat16).to(grad.dtype))


def test_compile_model_falls_back_to_eager_with_one_line(tiny_model, monkeypatch):
    monkeypatch.setattr(compiled, "backend_unavailable", lambda: "no C++ compiler for test")
    model, _ = tiny_model("tiny-llama")
    with pytest.warns(RuntimeWarning, match="falls back to eager: no C\\+\\+ compiler") as seen:
        assert compile_model(model) is model
    assert len(seen) == 1
    assert not is_compiled(model)


def test_compile_is_a_train_key():
    from zotune.config import build_config

    assert build_config({"train": {"compile": True}}).train.compile is True
    assert build_config({}).train.compile is False


@needs_backend
def test_compile_traces_the_forward_once(tiny_model):
    """Dynamic shapes made dynamo trace float constants as symbols, fail to turn them into
    tensors and restart the trace (two compile attempts, twice the compile time)."""
    from torch._dynamo.utils import compilation_time_metrics

    torch._dynamo.reset()
    compilation_time_metrics.clear()
    model, _ = tiny_model("tiny-llama")
    compile_model(model.to(torch.bfloat16))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(input_ids=batch(12))
    attempts = [name for name in compilation_time_metrics if name.startswith("compile_attempt")]
    assert attempts == ["compile_attempt_0"]
