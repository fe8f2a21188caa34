"""The size of a ZO estimate's coefficients |c| on a suite's run, for a few steps.

    ZOTUNE_DATA_DIR=../shared/datasets python benchmarks/zo_coefficients.py \
        [--suite cpu] [--cell zo-sgd/full] [--lr 1e-5] [--steps 12] [--threads 1] \
        [section.key=value ...]

The first run of the cell at that learning rate is measured (in a suite of several tasks,
the learning rate may pick the task).

A two-point estimate is ĝ = c·z with c = (f(θ+εz) − f(θ−εz)) / 2ε, so ZO-SGD moves
coordinate i by η·|c|·|z_i|, while a sign step (ZO-SGD-Sign) and Adam's early steps move it by
about η whatever c is. The median |c| is therefore the factor by which a sign or Adam learning
rate must exceed ZO-SGD's to move the weights as far; docs/results/README.md quotes it for the
`cpu` suite's full fine-tuning. The steps are the run's own (its config, batches of its
training split, drawn with a fixed seed); nothing is saved.
"""

from __future__ import annotations

import argparse
import random
import statistics

import torch

from zotune.bench.suite import SuiteError, load_suite
from zotune.config import build_config
from zotune.training.run import setup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="cpu")
    parser.add_argument("--cell", default="zo-sgd/full", help="a cell of the suite")
    parser.add_argument("--lr", type=float, default=1e-5, help="which of the cell's runs")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="section.key=value for the run's config")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    try:
        spec = load_suite(args.suite, args.overrides).run_at(args.cell, args.lr)
    except SuiteError as error:
        parser.error(str(error))
    run = setup(build_config(spec.config))
    optimizer = run.optimizer
    if not hasattr(optimizer, "estimate"):
        parser.error(f"{spec.cell.optimizer} is not a zeroth-order optimizer")
    coefficients: list[float] = []
    estimate = optimizer.estimate

    def recording(entries, closure, seed):
        result = estimate(entries, closure, seed)
        coefficients.extend(abs(c) for c in result.coeffs)
        return result

    optimizer.estimate = recording
    batches = random.Random(0)
    train = list(run.splits.train)
    for step in range(args.steps):
        optimizer.step(run.step_closure(batches.sample(train, run.config.train.batch_size)))
        print(f"step {step}: |c| = {coefficients[-1]:.2f}", flush=True)
    values = sorted(coefficients)
    print(f"{args.suite} {spec.cell.task} {args.cell} lr {args.lr:g}, {len(values)} "
          f"coefficients: median |c| {statistics.median(values):.1f}, mean "
          f"{statistics.fmean(values):.1f}, range {values[0]:.1f}–{values[-1]:.1f}")


if __name__ == "__main__":
    main()
