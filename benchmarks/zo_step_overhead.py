"""Non-forward cost of one ZO-SGD step: perturb, perturb, restore + update, no model.

    python benchmarks/zo_step_overhead.py [--repeats 5] [--dtype fp32] [--json PATH]

Two synthetic parameter lists:

* ``full``: the tensors of OPT-125m (embeddings, 12 decoder layers, 125.2M values);
* ``peft``: 200 tensors of 8×768 (LoRA-like, 1.2M values), where per-tensor overhead shows.

Three steps, all two-point, q = 1, with a closure that does no work (it returns a fresh
number, so the projected gradient is non-zero and the update is not skipped):

* ``gaussian``: :class:`zotune.optim.ZOSGD` with ``distribution="gaussian"`` (sampled chunks);
* ``table``: the same with ``distribution="table"`` (the CPU default, ``auto``);
* ``mezo``: :class:`zotune.profiling.mezo_reference.MezoReferenceStep`, MeZO's own step (global
  ``torch.manual_seed`` per pass, whole-tensor ``torch.normal``, out-of-place moves, update
  regenerating z).

Each step is timed ``--repeats`` times after one warm-up; the table reports the median (the
CPU may be shared, so compare rows of one run, not numbers across runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable

import torch

from zotune.estimators.directions import noise_table
from zotune.optim import ZOSGD
from zotune.profiling.mezo_reference import MezoReferenceStep

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def opt125m_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of OPT-125m (hidden 768, FFN 3072, 12 layers)."""
    d, ffn = 768, 3072
    shapes = [("embed_tokens.weight", (50272, d)), ("embed_positions.weight", (2050, d))]
    for layer in range(12):
        prefix = f"layers.{layer}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes += [(f"{prefix}self_attn.{proj}.weight", (d, d))]
            shapes += [(f"{prefix}self_attn.{proj}.bias", (d,))]
        shapes += [(f"{prefix}self_attn_layer_norm.weight", (d,))]
        shapes += [(f"{prefix}self_attn_layer_norm.bias", (d,))]
        shapes += [(f"{prefix}fc1.weight", (ffn, d)), (f"{prefix}fc1.bias", (ffn,))]
        shapes += [(f"{prefix}fc2.weight", (d, ffn)), (f"{prefix}fc2.bias", (d,))]
        shapes += [(f"{prefix}final_layer_norm.weight", (d,))]
        shapes += [(f"{prefix}final_layer_norm.bias", (d,))]
    return [*shapes, ("final_layer_norm.weight", (d,)), ("final_layer_norm.bias", (d,))]


def peft_shapes() -> list[tuple[str, tuple[int, ...]]]:
    return [(f"lora.{i}.weight", (8, 768)) for i in range(200)]


CASES = {"full": opt125m_shapes, "peft": peft_shapes}


def make_params(shapes, dtype) -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (name, (0.02 * torch.randn(shape, generator=gen)).to(dtype).requires_grad_())
        for name, shape in shapes
    ]


def closure_factory() -> Callable[[], torch.Tensor]:
    counter = itertools.count()
    return lambda: torch.tensor(float(next(counter) % 7) * 1e-3)


def make_step(method: str, named) -> Callable[[Callable], object]:
    lr = 1e-7  # small enough that repeated steps leave the weights' scale alone
    if method == "mezo":
        return MezoReferenceStep(named, lr=lr, eps=1e-3).step
    optimizer = ZOSGD([p for _, p in named], lr=lr, eps=1e-3, distribution=method)
    return optimizer.step


def time_steps(step, repeats: int) -> list[float]:
    closure = closure_factory()
    step(closure)  # warm-up: builds the table, the scratch, the generator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(closure)
        times.append(time.perf_counter() - start)
    return times


def run(cases, methods, dtype_name: str, repeats: int) -> list[dict]:
    rows = []
    for case in cases:
        named = make_params(CASES[case](), DTYPES[dtype_name])
        numel = sum(p.numel() for _, p in named)
        for method in methods:
            times = time_steps(make_step(method, named), repeats)
            rows.append(
                {
                    "case": case,
                    "tensors": len(named),
                    "numel": numel,
                    "dtype": dtype_name,
                    "method": method,
                    "median_s": statistics.median(times),
                    "min_s": min(times),
                    "repeats": repeats,
                }
            )
        reference = next(r for r in rows if r["case"] == case and r["method"] == "mezo")
        for row in rows:
            if row["case"] == case:
                row["speedup_vs_mezo"] = reference["median_s"] / row["median_s"]
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"{'case':5} {'tensors':>7} {'params':>8} {'dtype':5} {'method':9} "
        f"{'median ms':>10} {'min ms':>8} {'vs mezo':>8}"
    )
    for r in rows:
        print(
            f"{r['case']:5} {r['tensors']:7d} {r['numel'] / 1e6:7.1f}M {r['dtype']:5} "
            f"{r['method']:9} {1e3 * r['median_s']:10.1f} {1e3 * r['min_s']:8.1f} "
            f"{r['speedup_vs_mezo']:7.1f}x"
        )
    table = noise_table(1 << 22, "cpu", torch.float32)
    print(
        f"table sampler buffer: {table.untyped_storage().nbytes() / 2**20:.0f} MiB per "
        "(device, dtype); gaussian sampler: one 4 MiB scratch chunk; mezo: two "
        "tensor-sized temporaries per pass"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["full", "peft"])
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows = run(args.cases, ["gaussian", "table", "mezo"], args.dtype, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"torch": torch.__version__, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
