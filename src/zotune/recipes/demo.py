"""``make demo``: fine-tune the embedded SmolLM2-135M on SST-2 with ZO-SGD, on CPU.

The recipe below was chosen by measurement (README, "The demo"): it gives a real gain over
zero-shot within about ten minutes on two CPU cores. It runs through the same
:func:`zotune.training.train.finetune` as ``zotune train``; the equivalent command is printed first.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import RunConfig, build_config, command_line
from .quickstart import fresh_folder

# Each demo writes a new folder runs/demo-N, so running it again is a new run, never an error.
DEMO_ROOT = Path("runs")

DEMO_RECIPE: dict[str, dict] = {
    # bf16 weights with stochastically rounded ZO updates: as accurate as fp32 on this recipe
    # at about half the step time and memory (docs/results/cpu-settings).
    "model": {"name": "smollm2-135m", "dtype": "bfloat16"},
    "task": {"name": "sst2", "num_train": 1000, "num_val": 200, "num_test": 1000},
    "tuning": {"scheme": "full"},
    "optimizer": {"name": "zo-sgd", "lr": 3e-5, "eps": 1e-3},
    "train": {
        "steps": 250,
        "batch_size": 16,
        "eval_every": 125,
        "eval_test_before": True,
    },
}


def demo_config(steps: int | None = None, root: Path = DEMO_ROOT) -> RunConfig:
    """The demo's recipe, writing into a fresh ``root/demo-N``."""
    recipe = {section: dict(values) for section, values in DEMO_RECIPE.items()}
    recipe["train"]["output_dir"] = str(fresh_folder(root, "demo"))
    if steps is not None:
        recipe["train"]["steps"] = steps
        recipe["train"]["eval_every"] = max(1, min(recipe["train"]["eval_every"], steps))
    return build_config(recipe)


def run_demo(steps: int | None = None, root: Path = DEMO_ROOT) -> None:
    from ..training.train import finetune

    config = demo_config(steps, root)
    print(f"zotune demo: {command_line(config)}", file=sys.stderr, flush=True)
    result = finetune(config)
    before, after = result.test_accuracy_before, result.test_accuracy
    print(
        f"SST-2 test accuracy ({config.task.name}, {config.tuning.scheme}, "
        f"{config.optimizer.name}, {config.train.steps} steps): "
        f"zero-shot {before:.1%} -> fine-tuned {after:.1%} "
        f"(gain {(after - before) * 100:+.1f} points)"
    )
    print(result.summary())
    print(f"run folder {config.train.output_dir}; export it: zotune export "
          f"{config.train.output_dir} --out models/demo; make demo again starts a new run")
