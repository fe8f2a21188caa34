"""Does bf16 ZO-SGD with stochastic rounding lower the training loss like fp32? (~20 steps)

    taskset -c 1 python benchmarks/half_precision_sanity.py [--steps 20] [--lr 3e-5] \
        [--threads 1] [--model smollm2-135m] [--json PATH]

Full-parameter ZO-SGD (the demo recipe: lr 3e-5, ε 1e-3, batch 16) on the embedded
SmolLM2-135M and SST-2 (``$ZOTUNE_DATA_DIR``), three ways from the same weights and seed:
fp32, bf16 weights with stochastically rounded updates, bf16 rounded to nearest. Every step
uses the same fixed batch of 16 training examples, so the loss on it (evaluated at θ before
and after, and on a second fixed batch the steps never see) shows whether the updates take
effect; ~20 steps are a sanity check, not an accuracy study. ``--model random:tiny-llama``
runs the same comparison on a tiny random shape (tests/test_benchmark_scripts.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import torch

from zotune.config import build_config
from zotune.optim import create_optimizer
from zotune.training.run import build_model, load_task_splits, make_scorer, no_log

SETTINGS = {
    "float32": ("float32", True),
    "bfloat16+SR": ("bfloat16", True),
    "bfloat16 nearest": ("bfloat16", False),
}


def run_setting(dtype: str, stochastic: bool, args: argparse.Namespace) -> dict:
    config = build_config(
        {
            "model": {"name": args.model, "dtype": dtype},
            "task": {"name": "sst2", "num_train": 64, "num_val": 16, "num_test": 16},
            "optimizer": {"name": "zo-sgd", "lr": args.lr, "eps": 1e-3},
            "train": {"seed": 0},
        }
    )
    splits = load_task_splits(config, log=no_log)
    tuned = build_model(config)
    model = tuned.model
    scorer = make_scorer(model, tuned.loaded, config)
    seen = scorer.encode_for_loss(splits.train[:16])
    unseen = scorer.encode_for_loss(splits.train[16:32])
    optimizer = create_optimizer(
        "zo-sgd", model, lr=args.lr, eps=1e-3, seed=0, stochastic_rounding=stochastic
    )
    with torch.no_grad():
        before = (float(scorer.loss(seen)), float(scorer.loss(unseen)))
        start = time.perf_counter()
        probe_losses = [float(optimizer.step(lambda: scorer.loss(seen))) for _ in range(args.steps)]
        seconds = time.perf_counter() - start
        after = (float(scorer.loss(seen)), float(scorer.loss(unseen)))
    return {
        "seen_before": before[0],
        "seen_after": after[0],
        "unseen_before": before[1],
        "unseen_after": after[1],
        "probe_losses": probe_losses,
        "seconds_per_step": seconds / args.steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="smollm2-135m",
                        help="the embedded SmolLM2-135M, or any model a run config names")
    parser.add_argument("--json", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        parser.error(f"--steps and --threads must be at least 1, got {args.steps}, {args.threads}")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    results = {}
    for name, (dtype, stochastic) in SETTINGS.items():
        results[name] = row = run_setting(dtype, stochastic, args)
        print(f"{name}: done ({row['seconds_per_step']:.2f} s/step)", file=sys.stderr, flush=True)
    print("| setting | loss on the batch: before → after | Δ | unseen batch: before → after "
          "| Δ | s/step |")
    print("|---|---|---|---|---|---|")
    for name, row in results.items():
        print(
            f"| {name} | {row['seen_before']:.4f} → {row['seen_after']:.4f} "
            f"| {row['seen_after'] - row['seen_before']:+.4f} "
            f"| {row['unseen_before']:.4f} → {row['unseen_after']:.4f} "
            f"| {row['unseen_after'] - row['unseen_before']:+.4f} "
            f"| {row['seconds_per_step']:.2f} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"setup": vars(args), "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
