"""Half-precision GEMM against fp32 GEMM of upcast operands, on this CPU (``model.matmul``).

    python benchmarks/bf16_matmul.py [--threads 1] [--dtype bfloat16] [--repeats 5]

For the linear layers of SmolLM2-135M (576 → 1536, 1536 → 576, the 49152 × 576 head) and
a range of rows (batch × positions), the fastest of ``--repeats`` calls of

* ``native``: ``F.linear(x, w)`` with ``x``, ``w`` in ``--dtype``;
* ``fp32``: ``F.linear(x.float(), w.float()).to(dtype)``, the upcast copies included,

and their ratio (native / fp32: above 1, the fp32 product is faster). Then the ratio that
``model.matmul: auto`` decides on (zotune.models.matmul.native_over_float32) and its choice.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from zotune.models.matmul import SLOWER_BY, native_over_float32, rows_to_pay_for_copy
from zotune.utils.measure import time_calls

LAYERS = {"up 576→1536": (1536, 576), "down 1536→576": (576, 1536), "head 576→49152": (49152, 576)}
ROWS = (16, 64, 128, 256, 512, 768, 1536)


def best_of(function, repeats: int) -> float:
    return min(time_calls(function, repeats=repeats).seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"{args.dtype}, {args.threads} thread(s); ms, fastest of {args.repeats}")
    print("| layer | rows | native ms | fp32 ms | native / fp32 |\n|---|---:|---:|---:|---:|")
    for name, (outer, inner) in LAYERS.items():
        w = torch.randn(outer, inner).to(dtype)
        for rows in ROWS:
            x = torch.randn(rows, inner).to(dtype)
            native = best_of(lambda x=x, w=w: F.linear(x, w), args.repeats)
            upcast = best_of(lambda x=x, w=w: F.linear(x.float(), w.float()).to(dtype),
                             args.repeats)
            print(f"| {name} | {rows} | {native * 1e3:.2f} | {upcast * 1e3:.2f} | "
                  f"{native / upcast:.2f} |", flush=True)
    ratio = native_over_float32(dtype, args.threads)
    if ratio >= SLOWER_BY:
        choice = f"float32, for inputs of ≥ {rows_to_pay_for_copy(ratio)} rows"
    else:
        choice = "native"
    print(f"model.matmul auto: native / fp32 = {ratio:.2f} on the probe shape "
          f"(threshold {SLOWER_BY}) → {choice}")


if __name__ == "__main__":
    main()
