"""The bf16 ZO step's work besides its forwards: fused kernel against torch ops, one process.

    python benchmarks/bf16_passes.py [--rounds 5] [--threads 2] [--model random:smollm2-135m] \
        [--batch-size 16] [--seq-len 48]

On one bf16 model (random SmolLM2-135M shape by default), in rounds that time one call of
each in turn (a load change on a shared machine hits all alike), median over rounds:

* ``forward``: one no-grad forward of the last-position loss (F);
* ``zo-sgd step``: a full ZO-SGD step (two forwards, three passes, stochastically rounded);
* ``non-forward``: a ZO-SGD (and ZO-Adam) step whose closure does no model work (it returns
  alternating constants, so the update is not zero): the perturb, restore and update passes
  alone, with the fused kernel (zotune.kernels) and with the torch ops
  (``ZOTUNE_FUSED_KERNELS=0``, switched per call).

Printed: each median, and (2F + non-forward) / 2F — the step over its two forwards that the
non-forward part implies — next to the measured full step over 2F.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
import warnings

import torch

from zotune import kernels
from zotune.optim import create_optimizer
from zotune.profiling.build import build_model, build_step
from zotune.profiling.spec import ProfileSpec


def with_torch_ops(function):
    """``function`` run with the fused kernels switched off."""
    def call():
        previous = os.environ.get(kernels.SWITCH)
        os.environ[kernels.SWITCH] = "0"
        try:
            return function()
        finally:
            if previous is None:
                del os.environ[kernels.SWITCH]
            else:
                os.environ[kernels.SWITCH] = previous
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="random:smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=48)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)

    def spec(method: str) -> ProfileSpec:
        return ProfileSpec(model=args.model, dtype="bfloat16", batch_size=args.batch_size,
                           seq_len=args.seq_len, method=method)

    model = build_model(spec("inference"))
    counter = itertools.count()

    def constant_loss():
        return torch.tensor(1.0 + 0.01 * (next(counter) % 2))

    sgd = create_optimizer("zo-sgd", model, lr=1e-6)
    adam = create_optimizer("zo-adam", model, lr=1e-6)
    calls = {
        "forward": build_step(spec("inference"), model).step,
        "zo-sgd step [fused]": build_step(spec("zo-sgd"), model).step,
        "zo-sgd non-forward [fused]": lambda: sgd.step(constant_loss),
        "zo-sgd non-forward [torch ops]": with_torch_ops(lambda: sgd.step(constant_loss)),
        "zo-adam non-forward [fused]": lambda: adam.step(constant_loss),
    }
    for call in calls.values():
        call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for number in range(args.rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
        print(f"round {number}: " + ", ".join(f"{n} {s[-1]:.3f}" for n, s in seconds.items()),
              flush=True)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    two_forwards = 2 * median["forward"]
    print(f"{args.model} bf16 B={args.batch_size} T={args.seq_len} threads={args.threads}, "
          f"median of {args.rounds} rounds")
    for name, value in median.items():
        implied = (two_forwards + value) / two_forwards
        over = value / two_forwards
        note = f"step/2F {over:.2f}" if "step" in name else f"(2F + this)/2F {implied:.2f}"
        print(f"  {name:32s} {value:.3f} s  {note}")


if __name__ == "__main__":
    main()
