"""The fine-tuning loop: one function you can read top to bottom.

config → model + tuning scheme → task splits → loop (estimator → rule) → best-on-validation
→ test once. The checkpoint that is kept is chosen on the validation split, never on test
(ZO-Bench selects on test); test accuracy is measured once, at the end, on that checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import ConfigError, RunConfig, build_config, load_config
from .distributed import (
    broadcast_parameters,
    init_process_group,
    launched_by_torchrun,
    leave_process_group,
    shard_batch,
    sharded_accuracy,
)
from .estimators import NonFiniteLossError, mix_seed
from .files import atomic_write
from .measure import peak_memory_mb
from .mixed_precision import check_autocast, compute_context, under_autocast
from .offload import execution_device, named_resident_parameters
from .optim import OPTIMIZERS, FirstOrderOptimizer, create_optimizer
from .scoring import Scorer
from .tasks import Example, load_splits

# A run stops after this many non-finite losses in a row: one is a bad batch, many a diverged run.
MAX_CONSECUTIVE_NONFINITE = 10


@dataclass
class RunResult:
    """What a run measured. Accuracies are fractions in [0, 1]."""

    test_accuracy: float
    best_val_accuracy: float
    best_step: int
    test_accuracy_before: float | None
    steps: int
    train_seconds: float
    seconds_per_step: float
    peak_memory_mb: float
    skipped_steps: int
    trainable_parameters: int
    forward_passes_per_step: int
    output_dir: str | None
    history: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1
    comm_bytes_per_step: float | None = None  # what one process hands to collectives per step

    def summary(self) -> str:
        before = (
            f"test accuracy before {self.test_accuracy_before:.1%}, "
            if self.test_accuracy_before is not None
            else ""
        )
        gain = (
            f" ({(self.test_accuracy - self.test_accuracy_before) * 100:+.1f} points)"
            if self.test_accuracy_before is not None
            else ""
        )
        return (
            f"{before}after {self.test_accuracy:.1%}{gain}; best val {self.best_val_accuracy:.1%} "
            f"at step {self.best_step}; {self.seconds_per_step:.3f} s/step, "
            f"peak memory {self.peak_memory_mb:.0f} MB"
        )


def batch_for_step(examples: Sequence[Example], step: int, batch_size: int, seed: int) -> list:
    """The examples of a step: epochs of a seeded shuffle, a pure function of (seed, step).

    Being a function of the step alone, the data order needs no state to resume.
    """
    n = len(examples)
    first = step * batch_size
    batch = []
    for position in range(first, first + batch_size):
        epoch, offset = divmod(position, n)
        order = list(range(n))
        random.Random(mix_seed(seed, epoch)).shuffle(order)
        batch.append(examples[order[offset]])
    return batch


def trainable_state(model: torch.nn.Module, copy: bool = True) -> dict[str, torch.Tensor]:
    """The trainable tensors by name; ``copy=False`` gives views for saving without a copy."""
    return {
        n: p.detach().clone() if copy else p.detach()
        for n, p in named_resident_parameters(model)
        if p.requires_grad
    }


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(named_resident_parameters(model))
    missing = [n for n in state if n not in params]
    if missing:
        raise ConfigError(f"checkpoint holds tensors this model lacks, e.g. {missing[0]!r}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


class MetricsLog:
    """Metrics as JSON lines, flushed per line (a crash loses at most the line in flight)."""

    def __init__(self, path: Path | None, append: bool) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a" if append else "w")

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _log(message: str) -> None:
    print(f"zotune: {message}", file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    """The log of processes other than the main one of a distributed run."""


def _build_model(config: RunConfig, device: str | None = None):
    from .models import load_model, place_on_devices, random_model
    from .tuning import apply_tuning, count_parameters

    device = device or config.model.device
    attn = config.model.attn_implementation
    if config.optimizer.name == "forward-grad" and attn in (None, "sdpa"):
        attn = "eager"  # fused SDPA attention has no forward-mode AD
    name = config.model.name
    device_map = config.model.device_map
    if name is not None and name.startswith("random:"):
        loaded = random_model(
            name.removeprefix("random:"),
            dtype=config.model.dtype,
            attn_implementation=attn,
            seed=config.train.seed,
        )
        if device_map is not None:
            place_on_devices(loaded.model, device_map, device)
        elif device != "cpu":
            loaded.model.to(device)
    else:
        loaded = load_model(
            name,
            dtype=config.model.dtype,
            device=device,
            attn_implementation=attn,
            device_map=device_map,
        )
    torch.manual_seed(config.train.seed)  # adapter initialisation
    tuning = config.tuning
    model = apply_tuning(
        loaded.model,
        tuning.scheme,
        tokenizer=loaded.tokenizer,
        lora_r=tuning.lora_r,
        lora_alpha=tuning.lora_alpha,
        prefix_tokens=tuning.prefix_tokens,
        prompt_tokens=tuning.prompt_tokens,
        prompt_init_text=tuning.prompt_init_text,
    )
    model.eval()  # dropout off: a ZO difference needs the same function at θ ± εz
    trainable, total = count_parameters(model)
    return model, loaded, trainable, total


def load_task_splits(config: RunConfig, log=_log):
    """The train/val/test examples a run config asks for (sampled with the run's seed)."""
    task = config.task
    return load_splits(
        task.name,
        data_dir=task.data_dir,
        num_train=task.num_train,
        num_val=task.num_val,
        num_test=task.num_test,
        seed=config.train.seed,
        template=task.template,
        log=log,
    )


def make_scorer(model: torch.nn.Module, loaded, config: RunConfig) -> Scorer:
    """The scorer a run config asks for (reduction, loss, length limit)."""
    return Scorer(
        model,
        loaded.tokenizer,
        kind=loaded.kind,
        reduction=config.task.reduction,
        loss=config.task.loss,
        max_length=config.task.max_length,
    )


def _make_scheduler(optimizer, config: RunConfig):
    steps = max(config.train.steps, 1)
    if config.optimizer.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if config.optimizer.schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / steps))
    raise ConfigError(
        f"optimizer.schedule: unknown schedule {config.optimizer.schedule!r} (constant, linear)"
    )


def _check(config: RunConfig) -> None:
    if config.optimizer.name not in OPTIMIZERS:
        raise ConfigError(
            f"optimizer.name: unknown optimizer {config.optimizer.name!r} "
            f"(choose from {', '.join(OPTIMIZERS)})"
        )
    for key in ("steps", "batch_size", "eval_every", "eval_batch_size"):
        value = getattr(config.train, key)
        if value < (0 if key == "steps" else 1):
            raise ConfigError(f"train.{key}: invalid value {value}")
    from .distributed import MODES

    check_autocast(config.model.autocast, config.model.dtype)
    if config.train.parallel not in MODES:
        raise ConfigError(
            f"train.parallel: unknown mode {config.train.parallel!r} (choose from {MODES})"
        )


def finetune(config: RunConfig | dict | str | Path | None = None, **overrides: Any) -> RunResult:
    """Fine-tune a model on a task; returns the measured :class:`RunResult`.

    ``config`` is a RunConfig, a nested dict, or a YAML path; ``overrides`` are dotted keys
    written with ``__`` (``finetune(task__name="copa", optimizer__lr=1e-4)``).
    """
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict) or config is None:
        config = build_config(config)
    if overrides:
        data = config.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition("__")
            data.setdefault(section, {})[name] = value
        config = build_config(data)
    _check(config)
    cfg_train = config.train
    out = Path(cfg_train.output_dir) if cfg_train.output_dir else None

    group = None
    if launched_by_torchrun():
        if config.model.device_map is not None:
            raise ConfigError(
                f"model.device_map={config.model.device_map!r} cannot be combined with "
                "torchrun: each process would place the whole model on every device"
            )
        group = init_process_group(config.model.device)
    main = group is None or group.is_main
    log = _log if main else _quiet
    # Only the main process writes files; every process reads them back on --resume.
    writes = out if main else None

    device_name = str(group.device(config.model.device)) if group else config.model.device
    model, loaded, n_trainable, n_total = _build_model(config, device_name)
    device = execution_device(model)
    log(
        f"model {loaded.name} ({loaded.kind}), tuning {config.tuning.scheme}: "
        f"{n_trainable:,} of {n_total:,} parameters trainable"
    )
    splits = load_task_splits(config, log)
    scorer = make_scorer(model, loaded, config)
    extra = {"seed": cfg_train.seed} if "seed" in _accepted(config.optimizer.name) else {}
    options = config.optimizer.options()
    for key in options:
        if key not in _accepted(config.optimizer.name):
            raise ConfigError(f"optimizer.{key} does not apply to {config.optimizer.name}")
    # The model itself, not its tensors: block-wise and hybrid ZO read its module tree.
    optimizer = create_optimizer(config.optimizer.name, model, **options, **extra)
    scheduler = _make_scheduler(optimizer, config)
    traffic = _distribute(model, optimizer, scorer, config, group, log) if group else None

    def accuracy(examples: Sequence[Example]) -> float:
        with compute_context(config.model.autocast, device):
            if group is None:
                return scorer.accuracy(examples, cfg_train.eval_batch_size)
            return sharded_accuracy(scorer, examples, cfg_train.eval_batch_size, group)

    def local_batch(examples: list) -> list:
        if group is None or (config.train.parallel == "query" and traffic.zeroth_order):
            return examples
        return shard_batch(examples, group)

    start_step, best_val, best_step, before = 0, -1.0, 0, None
    # With an output folder the best state lives only on disk: a copy in memory would double
    # the footprint of full tuning, which ZO exists to keep at inference size.
    best_state = None if out is not None else trainable_state(model)
    if writes is not None:
        atomic_write(out / "config.yaml", lambda p: p.write_text(yaml.safe_dump(config.to_dict())))
    if out is not None and cfg_train.resume and (out / "last.pt").exists():
        ckpt = torch.load(out / "last.pt", weights_only=False, map_location=device)
        load_trainable_state(model, ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_step, best_val, best_step = ckpt["step"], ckpt["best_val"], ckpt["best_step"]
        before = ckpt.get("test_accuracy_before")
        log(f"resumed from {out / 'last.pt'} at step {start_step}")
    metrics = MetricsLog(writes / "metrics.jsonl" if writes else None, append=start_step > 0)

    if cfg_train.eval_test_before and before is None:
        before = accuracy(splits.test)
        log(f"zero-shot test accuracy {before:.1%}")

    def keep_if_best(step: int, val: float) -> None:
        nonlocal best_val, best_step, best_state
        if val <= best_val:
            return
        best_val, best_step = val, step
        if out is None:
            best_state = trainable_state(model)
        elif writes is not None:
            atomic_write(out / "best.pt", lambda p: torch.save(trainable_state(model, False), p))

    if start_step == 0:
        val = accuracy(splits.val)
        keep_if_best(0, val)
        metrics.write({"step": 0, "val_accuracy": val})

    def save_checkpoint(step: int) -> None:
        if writes is None:
            return
        ckpt = {
            "trainable": trainable_state(model, copy=False),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "best_val": best_val,
            "best_step": best_step,
            "test_accuracy_before": before,
        }
        atomic_write(out / "last.pt", lambda p: torch.save(ckpt, p))

    steps = range(start_step, cfg_train.steps)
    autocast = config.model.autocast
    progress = _progress(steps, cfg_train.progress and main, start_step)
    skipped = consecutive_bad = 0
    step_times: list[float] = []
    comm_bytes: list[int] = []
    train_start = time.perf_counter()
    for step in progress:
        examples = batch_for_step(splits.train, step, cfg_train.batch_size, cfg_train.seed)
        batch = scorer.encode_for_loss(local_batch(examples))
        tick = time.perf_counter()
        try:
            closure = under_autocast(lambda batch=batch: scorer.loss(batch), autocast, device)
            loss = optimizer.step(closure)
        except NonFiniteLossError as error:
            skipped += 1
            consecutive_bad += 1
            metrics.write({"step": step + 1, "skipped": str(error)})
            if consecutive_bad >= MAX_CONSECUTIVE_NONFINITE:
                raise NonFiniteLossError(
                    f"{consecutive_bad} non-finite losses in a row at step {step + 1}: the run "
                    f"diverged (lower optimizer.lr, currently {config.optimizer.lr})"
                ) from error
            scheduler.step()
            continue
        consecutive_bad = 0
        step_times.append(time.perf_counter() - tick)
        scheduler.step()
        record = {
            "step": step + 1,
            "loss": float(loss),
            "lr": optimizer.param_groups[0]["lr"],
            "step_seconds": step_times[-1],
            "peak_memory_mb": peak_memory_mb(device),
        }
        if traffic is not None:
            record["comm_bytes"], record["collectives"] = traffic.take()
            comm_bytes.append(record["comm_bytes"])
        if hasattr(progress, "set_postfix"):
            progress.set_postfix(loss=f"{float(loss):.4f}", best_val=f"{best_val:.3f}")
        done = step + 1 == cfg_train.steps
        if (step + 1) % cfg_train.eval_every == 0 or done:
            val = accuracy(splits.val)
            record["val_accuracy"] = val
            keep_if_best(step + 1, val)
            save_checkpoint(step + 1)
        metrics.write(record)
        if not math.isfinite(float(loss)):
            raise NonFiniteLossError(f"non-finite loss at step {step + 1}")
    train_seconds = time.perf_counter() - train_start

    if best_state is None and writes is not None:
        best_state = torch.load(out / "best.pt", weights_only=True, map_location=device)
    if best_state is not None:
        load_trainable_state(model, best_state)
    if group is not None:
        if out is not None:
            broadcast_parameters(model)  # only the main process read the best checkpoint
        per_step = statistics.fmean(comm_bytes) if comm_bytes else 0.0
        log(
            f"{traffic.description} over {group.world_size} processes: "
            f"{per_step:,.0f} bytes per process per step"
        )
    test = accuracy(splits.test)
    result = RunResult(
        test_accuracy=test,
        best_val_accuracy=best_val,
        best_step=best_step,
        test_accuracy_before=before,
        steps=cfg_train.steps,
        train_seconds=train_seconds,
        seconds_per_step=_median(step_times),
        peak_memory_mb=peak_memory_mb(device),
        skipped_steps=skipped,
        trainable_parameters=n_trainable,
        forward_passes_per_step=getattr(optimizer, "forward_passes_per_step", 1),
        output_dir=str(out) if out else None,
        history=metrics.records,
        world_size=group.world_size if group else 1,
        comm_bytes_per_step=statistics.fmean(comm_bytes) if comm_bytes else None,
    )
    final = {k: v for k, v in result.__dict__.items() if k != "history"}
    metrics.write({"step": cfg_train.steps, "final": final})
    metrics.close()
    if writes is not None:
        atomic_write(out / "result.json", lambda p: p.write_text(json.dumps(final, indent=2)))
    if group is not None:
        leave_process_group(group)
    return result


@dataclass
class _Traffic:
    """What a distributed run communicates, read once per step."""

    counter: Any
    description: str
    zeroth_order: bool

    def take(self) -> tuple[int, int]:
        return self.counter.take_traffic()


def _distribute(model, optimizer, scorer, config: RunConfig, group, log) -> _Traffic:
    """Start every process from the main one's θ and route the step's communication."""
    from .distributed import share_probes, wrap_first_order

    broadcast_parameters(model)
    mode = config.train.parallel
    if isinstance(optimizer, FirstOrderOptimizer):
        if mode == "query":
            raise ConfigError(
                f"train.parallel: 'query' deals zeroth-order queries; {config.optimizer.name} "
                "is first-order (use 'data', which wraps it in DistributedDataParallel)"
            )
        scorer.forward_module, counter = wrap_first_order(model, group)
        description = "DistributedDataParallel gradient all-reduce"
        traffic = _Traffic(counter, description, zeroth_order=False)
    else:
        counter = share_probes(optimizer, mode, group)
        traffic = _Traffic(counter, f"{mode}-parallel ZO probe all-reduce", zeroth_order=True)
    log(f"{traffic.description}: {group.world_size} processes, backend {group.backend}")
    return traffic


def _accepted(name: str) -> set[str]:
    import inspect

    return set(inspect.signature(OPTIMIZERS[name].__init__).parameters) - {"self", "params"}


def _median(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _progress(steps: range, enabled: bool, initial: int):
    if not enabled:
        return steps
    from tqdm.auto import tqdm

    return tqdm(
        steps, initial=initial, total=steps.stop, desc="train", unit="step", file=sys.stderr
    )
