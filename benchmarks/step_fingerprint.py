"""Time the first steps of a run and fingerprint the weights they leave.

    ZOTUNE_DATA_DIR=../shared/datasets python benchmarks/step_fingerprint.py CONFIG \
        [--steps 3] [--threads 1] [section.key=value ...]

CONFIG is a run config YAML or a stored run's record.json (``docs/results/cpu/runs/<id>/
record.json``: a store keeps each run's config there, and its config.yaml only on the machine
that ran it). A
change meant to make training faster, and nothing else, must leave every trajectory as it
was. Run this at two commits (``git worktree add /tmp/before <commit>``, then
``PYTHONPATH=/tmp/before/src python benchmarks/step_fingerprint.py …``): equal fingerprints
mean the steps updated the trainable weights bitwise alike, and the step times and peak
memory say what the change saved. The steps are the run's own (its config, and the batches
``zotune train`` draws for its first steps); nothing is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import torch

from zotune.config import ConfigError, RunConfig, config_from, load_config
from zotune.training.run import resolve_config, setup
from zotune.training.train import batch_for_step
from zotune.utils.measure import peak_memory_mb


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the trainable tensors' bytes, in parameter order (16 hex digits)."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def read_config(path: str, overrides: list[str]) -> RunConfig:
    """The run config in ``path`` (a YAML config or a record.json) with ``overrides``, checked
    as ``zotune train`` checks it, before anything is loaded."""
    if Path(path).suffix != ".json":
        return resolve_config(load_config(path, overrides))
    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = json.loads(Path(path).read_text()).get("config")
    except (json.JSONDecodeError, AttributeError):
        data = None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} has no run config (a run's record.json has it under 'config')")
    return resolve_config(config_from(data, overrides))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a run config YAML, or a stored run's record.json")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="section.key=value for the run's config")
    args = parser.parse_intermixed_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    try:
        config = read_config(args.config, args.overrides)
    except ConfigError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    run = setup(config)
    train_config = run.config.train
    seconds: list[float] = []
    for step in range(args.steps):
        batch = batch_for_step(run.splits.train, step, train_config.batch_size, train_config.seed)
        closure = run.step_closure(batch)
        start = time.perf_counter()
        loss = run.optimizer.step(closure)
        seconds.append(time.perf_counter() - start)
        print(f"step {step}: loss {float(loss):.6f}, {seconds[-1]:.2f} s", flush=True)
    print(f"{config.optimizer.name}/{config.tuning.scheme} lr {config.optimizer.lr:g} on "
          f"{config.task.name}, {args.steps} steps: "
          f"weights {weights_fingerprint(run.model)}, median {statistics.median(seconds):.2f} "
          f"s/step, peak {peak_memory_mb(run.device):.0f} MB")


if __name__ == "__main__":
    main()
