"""A training run set up from its config, as a torchtune recipe sets up: model, tokenizer,
tuning scheme, task splits, scorer, optimizer and scheduler, placed for one process or for
each process of a torchrun group.

``setup(config)`` returns a :class:`Run` holding them; :func:`zotune.training.train.finetune`
runs the loop on it, ``zotune eval`` evaluates with ``setup(config, for_training=False)``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, RunConfig, build_config, load_config, replace
from ..evaluation.baselines import check_calibration, with_demonstrations
from ..evaluation.evaluate import Score, evaluate
from ..evaluation.scoring import Scorer
from ..models.loading import LoadedModel
from ..models.matmul import float32_rows
from ..models.mixed_precision import AUTOCAST_DTYPES, compute_context, under_autocast
from ..models.offload import execution_device
from ..optim import FirstOrderOptimizer
from ..optim.registry import ResolvedOptions
from ..optim.registry import entry as optimizer_entry
from ..optim.registry import names as optimizer_names
from ..tasks import Example, TaskSpec, get_task, load_splits
from ..utils.progress import bar, bars_wanted
from .distributed import broadcast_parameters, shard_batch, sharded_accuracy
from .objectives import check_objective, closure_for


def log_line(message: str) -> None:
    print(f"zotune: {message}", file=sys.stderr, flush=True)


def no_log(message: str) -> None:
    """The log of processes other than the main one of a distributed run."""


def resolve_config(
    config: RunConfig | dict | str | Path | None = None, **overrides: Any
) -> RunConfig:
    """A RunConfig from a RunConfig, a nested dict or a YAML path, with ``section__key``
    overrides (``task__name="copa"``) and the optimizer's run defaults written in, validated
    before anything is loaded (:func:`prepare_run`, without its optimizer options)."""
    return prepare_run(config, **overrides)[0]


def prepare_run(
    config: RunConfig | dict | str | Path | None = None, **overrides: Any
) -> tuple[RunConfig, ResolvedOptions]:
    """The resolved config and its optimizer's options, each value checked once, before
    anything is loaded; :func:`setup` builds the optimizer from these options."""
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict) or config is None:
        config = build_config(config)
    if overrides:
        config = replace(config, **overrides)
    config = config.with_run_defaults()
    check_config(config)
    return config, config.optimizer.resolved(config.train.seed)


def check_config(config: RunConfig) -> None:
    """The checks that need no model: names, counts, modes (the optimizer's options are
    checked where they are resolved: :func:`prepare_run`)."""
    if config.optimizer.name not in optimizer_names():
        raise ConfigError(
            f"optimizer.name: unknown optimizer {config.optimizer.name!r} "
            f"(choose from {', '.join(optimizer_names())})"
        )
    for key in ("steps", "batch_size", "eval_every", "eval_batch_size"):
        value = getattr(config.train, key)
        if value < (0 if key == "steps" else 1):
            raise ConfigError(f"train.{key}: invalid value {value}")
    from .distributed import MODES

    if config.train.parallel not in MODES:
        raise ConfigError(
            f"train.parallel: unknown mode {config.train.parallel!r} (choose from {MODES})"
        )
    from ..models.loading import resolve_device
    from ..models.matmul import check_matmul
    from ..models.mixed_precision import check_autocast

    check_autocast(config.model.autocast, config.model.dtype)
    check_matmul(config.model.matmul)
    if config.model.device_map is None:
        resolve_device(config.model.device)  # CUDA asked for on a machine without it
    from .loggers import check_reporter

    check_reporter(config.train.report_to)
    micro = config.train.micro_batch_size
    if micro is not None and micro < 1:
        raise ConfigError(f"train.micro_batch_size: must be at least 1, got {micro}")
    for key in ("num_train", "num_val", "num_test"):
        value = getattr(config.task, key)
        if value is not None and value < 1:
            raise ConfigError(f"task.{key}: must be at least 1, got {value}")
    for key in ("max_length", "max_new_tokens"):
        value = getattr(config.task, key)
        if value is not None and value < 1:
            raise ConfigError(
                f"task.{key}: must be at least 1, got {value} (leave it unset for the default)"
            )
    if config.task.demos < 0 or config.task.demos > config.task.num_train:
        raise ConfigError(
            f"task.demos: {config.task.demos} demonstrations are drawn from the training split "
            f"(task.num_train={config.task.num_train}); ask for 0 to {config.task.num_train}"
        )
    if config.train.resume and not config.train.output_dir:
        raise ConfigError("--resume needs --output-dir: the folder of the run to continue")
    check_schedule(config)
    _check_scheme_options(config)
    spec = get_task(config.task.name)
    entry = optimizer_entry(config.optimizer.name)
    problem = check_objective(
        config.train.objective,
        metric=spec.metric,
        optimizer=config.optimizer.name,
        gradient_free=entry.finite_difference,
    )
    if problem:
        raise ConfigError(problem)


# A batch may hold each training example at most this many times over: beyond it a run
# spends its steps on copies (``--batch-size 100000`` on 16 examples).
MAX_BATCH_REPEATS = 4


def check_batch_size(batch_size: int, examples: int, log: Callable[[str], None]) -> None:
    """A batch larger than the training split repeats examples within it: said once, and
    refused when each example would appear more than :data:`MAX_BATCH_REPEATS` times."""
    if batch_size <= examples:
        return
    what = (f"train.batch_size {batch_size} is larger than the training split ({examples} "
            "examples)")
    if batch_size > MAX_BATCH_REPEATS * examples:
        raise ConfigError(
            f"{what}: each batch would hold every example about {batch_size // examples} "
            "times; lower it or train on more (task.num_train)"
        )
    log(f"warning: {what}: each batch repeats some examples")


def _check_scheme_options(config: RunConfig) -> None:
    """The scheme is registered, and no option of another scheme is set (it would be ignored)."""
    from ..tuning.registry import foreign_option, get_scheme

    try:
        get_scheme(config.tuning.scheme)
    except ValueError as error:
        raise ConfigError(f"tuning.scheme: {error}") from None
    problem = foreign_option(config.tuning.scheme, config.tuning.settings)
    if problem:
        raise ConfigError(problem)


@dataclass
class TunedModel:
    """The model with its tuning scheme applied, and what it was loaded from."""

    model: torch.nn.Module
    loaded: LoadedModel
    trainable_parameters: int
    total_parameters: int
    matmul: str = "native"  # what model.matmul resolved to (zotune.models.matmul)


def build_model(config: RunConfig, device: str | None = None) -> TunedModel:
    """Load the model (hub, folder, embedded, random shape), place it and apply the tuning
    scheme, in eval mode, with the attention implementation the optimizer needs."""
    from ..models.loading import load_model
    from ..models.matmul import apply_matmul
    from ..models.placement import place_on_devices
    from ..models.random_shapes import random_model
    from ..tuning.schemes import apply_tuning, count_parameters

    device = device or config.model.device
    attn = optimizer_entry(config.optimizer.name).attention_implementation(
        config.model.attn_implementation
    )
    name = config.model.name
    device_map = config.model.device_map
    if name is not None and name.startswith("random:"):
        # Built on its device (a 13B shape never passes through CPU memory) unless accelerate
        # places it.
        loaded = random_model(
            name.removeprefix("random:"),
            dtype=config.model.dtype,
            attn_implementation=attn,
            seed=config.train.seed,
            device="cpu" if device_map is not None else device,
        )
        if device_map is not None:
            place_on_devices(loaded.model, device_map, device)
    else:
        loaded = load_model(
            name,
            dtype=config.model.dtype,
            device=device,
            attn_implementation=attn,
            device_map=device_map,
        )
    # Before the tuning scheme: adapters wrap the base layers as they will compute.
    matmul = "native" if device_map is not None else apply_matmul(
        loaded.model, config.model.matmul, device, AUTOCAST_DTYPES.get(config.model.autocast)
    )
    torch.manual_seed(config.train.seed)  # adapter initialisation
    model = apply_tuning(loaded.model, config.tuning, tokenizer=loaded.tokenizer)
    model.eval()  # dropout off: a ZO difference needs the same function at θ ± εz
    if config.train.compile:
        from ..models.compiled import compile_model

        compile_model(model)
    trainable, total = count_parameters(model)
    return TunedModel(model, loaded, trainable, total, matmul)


def load_task_splits(config: RunConfig, log: Callable[[str], None] = log_line):
    """The train/val/test examples a run config asks for (sampled with its data seed)."""
    task = config.task
    return load_splits(
        task.name,
        data_dir=task.data_dir,
        num_train=task.num_train,
        num_val=task.num_val,
        num_test=task.num_test,
        seed=task.data_seed,
        template=task.template,
        template_version=task.template_version,
        log=log,
    )


def make_scorer(model: torch.nn.Module, loaded: LoadedModel, config: RunConfig) -> Scorer:
    """The scorer a run config asks for (reduction, loss, length limit)."""
    return Scorer(
        model,
        loaded.tokenizer,
        kind=loaded.kind,
        reduction=config.task.reduction,
        loss=config.task.loss or get_task(config.task.name).loss,
        max_length=config.task.max_length,
    )


SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(schedule: str, step: int, steps: int, warmup: int) -> float:
    """The multiple of lr at ``step``: ``step/warmup`` during the warmup, then over the
    remaining ``n = steps − warmup`` steps (t counted from the warmup's end) 1 (constant),
    ``1 − t/n`` (linear) or ``(1 + cos(π t/n))/2`` (cosine), as transformers' schedules."""
    if step < warmup:
        return step / warmup
    t, n = step - warmup, max(steps - warmup, 1)
    if schedule == "linear":
        return max(0.0, 1 - t / n)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(t, n) / n))
    return 1.0


def check_schedule(config: RunConfig) -> None:
    optimizer = config.optimizer
    if optimizer.schedule not in SCHEDULES:
        raise ConfigError(
            f"optimizer.schedule: unknown schedule {optimizer.schedule!r} "
            f"({', '.join(SCHEDULES)})"
        )
    if not 0 <= optimizer.warmup_steps <= config.train.steps:
        raise ConfigError(
            f"optimizer.warmup_steps: {optimizer.warmup_steps} must be between 0 and "
            f"train.steps ({config.train.steps})"
        )


def make_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig):
    check_schedule(config)
    schedule = partial(
        lr_factor, config.optimizer.schedule, steps=max(config.train.steps, 1),
        warmup=config.optimizer.warmup_steps,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


@dataclass
class Traffic:
    """What a distributed run communicates, read once per step."""

    counter: Any
    description: str
    zeroth_order: bool

    def take(self) -> tuple[int, int]:
        return self.counter.take_traffic()


@dataclass
class Run:
    """Everything a run trains and evaluates with. ``group`` is the torchrun process group
    (None for one process); ``optimizer`` and ``scheduler`` are None for evaluation."""

    config: RunConfig
    model: torch.nn.Module
    loaded: LoadedModel
    device: torch.device
    trainable_parameters: int
    total_parameters: int
    splits: Any
    scorer: Scorer
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    group: Any = None
    traffic: Traffic | None = None
    log: Callable[[str], None] = log_line
    progress: bool = False  # draw bars (main process, stderr a terminal, train.progress)
    matmul: str = "native"  # how half-precision products run (zotune.models.matmul)

    @property
    def first_order(self) -> bool:
        """Steps by backprop: they run in train mode (dropout on), as the paper's FO runs."""
        return optimizer_entry(self.config.optimizer.name).first_order

    @property
    def is_main(self) -> bool:
        """The process that logs and writes files."""
        return self.group is None or self.group.is_main

    @property
    def task(self) -> TaskSpec:
        return get_task(self.config.task.name)

    @property
    def max_new_tokens(self) -> int:
        return self.config.task.max_new_tokens or self.task.max_new_tokens

    def accuracy(self, examples: Sequence[Example]) -> float:
        """The task's main metric on ``examples``: accuracy, or F1 for generation tasks."""
        return self.score(examples).value

    def score(self, examples: Sequence[Example]) -> Score:
        """The task's metric on ``examples`` (with EM beside F1 for generation tasks)."""
        batch_size = self.config.train.eval_batch_size
        metric = self.task.metric
        task = self.config.task
        if task.demos:
            examples = with_demonstrations(examples, self.splits.train[: task.demos])
        with compute_context(self.config.model.autocast, self.device):
            if task.calibrate:
                check_calibration(examples, task.name)
            elif self.group is not None and metric == "accuracy":
                value = sharded_accuracy(self.scorer, examples, batch_size, self.group)
                return Score("accuracy", value)
            return evaluate(
                self.scorer,
                examples,
                metric=metric,
                max_new_tokens=self.max_new_tokens,
                batch_size=batch_size,
                calibrate=task.calibrate,
                progress=partial(
                    bar, enabled=self.progress, desc="eval", unit="batch", leave=False
                ),
            )

    def step_closure(
        self, examples: list, micro_batch_size: int | None = None
    ) -> Callable[[], torch.Tensor]:
        """The step's closure on this process's share of ``examples``: the task loss, or
        −metric with ``train.objective``, under autocast when the run computes in half
        precision; in micro-batches of ``micro_batch_size`` (default ``train``'s)."""
        train = self.config.train
        closure = closure_for(
            train.objective,
            self.scorer,
            self.local_batch(examples),
            metric=self.task.metric,
            max_new_tokens=self.max_new_tokens,
            batch_size=train.eval_batch_size,
            micro_batch_size=micro_batch_size or train.micro_batch_size,
        )
        return under_autocast(closure, self.config.model.autocast, self.device)

    def local_batch(self, examples: list) -> list:
        """This process's share of a step's examples (all of them for query-parallel ZO)."""
        if self.group is None or (
            self.config.train.parallel == "query" and self.traffic.zeroth_order
        ):
            return examples
        return shard_batch(examples, self.group)


def setup(
    config: RunConfig,
    *,
    group: Any = None,
    for_training: bool = True,
    options: ResolvedOptions | None = None,
) -> Run:
    """Build a :class:`Run` for ``config`` (already resolved, see :func:`resolve_config`);
    the optimizer from ``options`` (:func:`prepare_run`), resolved here when not given."""
    log = log_line if group is None or group.is_main else no_log
    device_name = str(group.device(config.model.device)) if group else config.model.device
    splits = load_task_splits(config, log)  # before the model: bad data fails in seconds
    if for_training and config.train.steps:
        check_batch_size(config.train.batch_size, len(splits.train), log)
    tuned = build_model(config, device_name)
    log(
        f"model {tuned.loaded.name} ({tuned.loaded.kind}), tuning {config.tuning.scheme}: "
        f"{tuned.trainable_parameters:,} of {tuned.total_parameters:,} parameters trainable"
    )
    if tuned.matmul == "float32" and config.model.matmul == "auto":
        log(
            f"model.matmul auto: this CPU's {config.model.autocast or config.model.dtype} GEMM "
            "is slower than fp32, so matrix products of inputs of "
            f"{float32_rows(tuned.model)} rows or more run in fp32 from the half-precision "
            "values (model.matmul=native keeps them native)"
        )
    run = Run(
        config=config,
        model=tuned.model,
        loaded=tuned.loaded,
        device=execution_device(tuned.model),
        trainable_parameters=tuned.trainable_parameters,
        total_parameters=tuned.total_parameters,
        splits=splits,
        scorer=make_scorer(tuned.model, tuned.loaded, config),
        group=group,
        log=log,
        progress=bars_wanted(config.train.progress) and (group is None or group.is_main),
        matmul=tuned.matmul,
    )
    if not for_training:
        return run
    if options is None:
        options = config.optimizer.resolved(config.train.seed)
    # The model itself, not its tensors: block-wise and hybrid ZO read its module tree.
    run.optimizer = optimizer_entry(config.optimizer.name).build(run.model, options)
    run.scheduler = make_scheduler(run.optimizer, config)
    if group is not None:
        run.traffic = distribute(run)
    return run


def distribute(run: Run) -> Traffic:
    """Start every process from the main one's θ and route the step's communication."""
    from .distributed import share_probes, wrap_first_order

    broadcast_parameters(run.model)
    mode, group = run.config.train.parallel, run.group
    if isinstance(run.optimizer, FirstOrderOptimizer):
        if mode == "query":
            raise ConfigError(
                f"train.parallel: 'query' deals zeroth-order queries; "
                f"{run.config.optimizer.name} is first-order (use 'data', which wraps it in "
                "DistributedDataParallel)"
            )
        run.scorer.forward_module, counter = wrap_first_order(run.model, group)
        traffic = Traffic(counter, "DistributedDataParallel gradient all-reduce", False)
    else:
        counter = share_probes(run.optimizer, mode, group)
        traffic = Traffic(counter, f"{mode}-parallel ZO probe all-reduce", zeroth_order=True)
    run.log(f"{traffic.description}: {group.world_size} processes, backend {group.backend}")
    return traffic
