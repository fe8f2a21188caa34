"""The fine-tuning loop, read top to bottom: ``finetune`` = resolve the config, ``setup``
(:mod:`zotune.training.run`), ``train``.

config → model + tuning scheme → task splits → loop (estimator → rule) → best-on-validation
(:mod:`zotune.training.checkpoints`) → test once. The checkpoint that is kept is chosen on the
validation split, never on test (ZO-Bench selects on test); test accuracy is measured once,
at the end, on that checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, RunConfig
from ..estimators import NonFiniteLossError, mix_seed
from ..models.offload import named_resident_parameters
from ..optim.registry import entry as optimizer_entry
from ..tasks import Example
from ..utils.files import atomic_write
from ..utils.measure import peak_memory_mb
from ..utils.progress import bar
from .checkpoints import LAST_FILE, Checkpoints, data_digest
from .distributed import (
    broadcast_parameters,
    check_launcher,
    init_process_group,
    is_main_process,
    launched_by_torchrun,
    leave_process_group,
)
from .learned import untrained_reason
from .loggers import open_reporter
from .run import Run, log_line, prepare_run, setup
from .run_folder import METRICS_FILE, RESULT_FILE, RunFolder

# A run stops after this many non-finite losses in a row: one is a bad batch, many a diverged run.
MAX_CONSECUTIVE_NONFINITE = 10
# A run that skipped more than this fraction of its steps is reported as failed (non-zero
# exit), its result written: it did not train as configured.
MAX_SKIPPED_FRACTION = 0.1
# Per-example scores are kept to this many decimals: F1 over a few answer tokens needs no more,
# and the records stay small.
SCORE_DIGITS = 4


@dataclass
class RunResult:
    """What a run measured. Accuracies are fractions in [0, 1].

    The ``*_accuracy`` fields hold the task's main metric, named by ``metric``: accuracy, or
    F1 for generation tasks (SQuAD, DROP), whose exact match is ``test_em``.
    """

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
    test_examples: int = 0
    val_examples: int = 0
    metric: str = "accuracy"
    test_em: float | None = None
    # Each test example's main metric, in the split's order (see ``Score.per_example``);
    # None where evaluation was sharded across processes.
    test_scores: list[float] | None = None
    # Why the run learned nothing, with a hint (zotune.training.learned); None when it learned.
    untrained: str | None = None
    # How products of half-precision weights ran: native or float32 (zotune.models.matmul).
    matmul: str = "native"
    # The fine-tuned model holding the kept checkpoint (its tuning scheme applied: a peft
    # model for adapters), for save_pretrained or further use; not part of the record.
    model: Any = field(default=None, repr=False, compare=False)

    @property
    def run_dir(self) -> Path | None:
        """The run folder (``train.output_dir``), None where nothing was saved."""
        return Path(self.output_dir) if self.output_dir else None

    def record(self) -> dict[str, Any]:
        """What ``result.json`` holds: the measured fields, without the history and model."""
        return {k: v for k, v in self.__dict__.items() if k not in ("history", "model")}
    # The candidate each test example was given (ranked tasks; None for generation tasks and
    # sharded evaluation): one value throughout is a model that learned nothing of the task.
    test_predictions: list[int] | None = None

    def summary(self) -> str:
        before = ""
        if self.test_accuracy_before is not None:
            gain = (self.test_accuracy - self.test_accuracy_before) * 100
            before = f", {self.test_accuracy_before:.1%} before training, {gain:+.1f} points"
        skipped = f", {self.skipped_steps} steps skipped" if self.skipped_steps else ""
        name = "F1" if self.metric == "f1" else self.metric
        em = f", EM {self.test_em:.1%}" if self.test_em is not None else ""
        line = (
            f"test {name} {self.test_accuracy:.1%}{em} ({self.test_examples} examples{before}) "
            f"with the best validation checkpoint: validation {name} "
            f"{self.best_val_accuracy:.1%} ({self.val_examples} examples) at step "
            f"{self.best_step}; {self.seconds_per_step:.3f} s/step, peak memory "
            f"{self.peak_memory_mb:.0f} MB{skipped}"
        )
        if self.untrained:
            line += f"\nWARNING: {self.untrained}"
        return line


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


# Separates the stream of larger batches a step may ask for from the loop's batches.
_WANTED_SALT = 0x5B7A_A4C4


def step_closure(run: Run, step: int):
    """The closure of step ``step``: on the loop's batch, or on the larger batch the
    optimizer asks for (MeZO-SVRG's anchor steps, ``examples_wanted``), drawn from its own
    seeded shuffle of the training split (the whole split when it asks for as many) and
    evaluated in micro-batches no larger than the loop's batch."""
    train, cfg = run.splits.train, run.config.train
    ask = getattr(run.optimizer, "examples_wanted", None)
    wanted = ask(cfg.batch_size, len(train)) if ask is not None else None
    if wanted is None:
        return run.step_closure(batch_for_step(train, step, cfg.batch_size, cfg.seed))
    examples = batch_for_step(train, step, wanted, mix_seed(cfg.seed, _WANTED_SALT))
    return run.step_closure(examples, micro_batch_size=cfg.micro_batch_size or cfg.batch_size)


class MetricsLog:
    """Metrics as JSON lines, flushed per line (a crash loses at most the line in flight).

    A training step's ``loss`` is the loss the optimizer's step returned: for a two-point ZO
    estimate the mean of f(θ + εz_k) and f(θ − εz_k) over its q queries (block-wise: the
    first block's), for a one-point estimate the mean of f(θ), for Forward-Grad and the
    first-order optimizers f(θ) before the update. MeZO and ZO-LLM log f(θ + εz) alone
    (``zo_step`` returns ``loss1``), so their logged ZO losses sit one-sided, O(ε), off ours.
    """

    def __init__(self, path: Path | None, append: bool, reporter: Any = None) -> None:
        self.path = path
        self.reporter = reporter  # zotune.training.loggers: TensorBoard, wandb
        self.records: list[dict[str, Any]] = []
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if append and path.is_file():
                # A resumed run's history, s/step and peak memory cover its earlier steps too.
                self.records = [json.loads(line) for line in path.read_text().splitlines()]
            self._file = path.open("a" if append else "w")

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self.reporter is not None and "final" not in record:
            self.reporter.log(record)

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.close()
        if self._file is not None:
            self._file.close()


def finetune(config: RunConfig | dict | str | Path | None = None, **overrides: Any) -> RunResult:
    """Fine-tune a model on a task; returns the measured :class:`RunResult`.

    ``config`` is a RunConfig, a nested dict, or a YAML path; ``overrides`` are dotted keys
    written with ``__`` (``finetune(task__name="copa", optimizer__lr=1e-4)``).
    """
    check_launcher()
    config, options = prepare_run(config, **overrides)
    out = config.train.output_dir
    folder = RunFolder(Path(out)) if out else None
    if out is None and not config.train.save_model and is_main_process():
        log_line(
            "warning: no --output-dir, so nothing of this run is saved (no checkpoints, "
            "metrics or result); --save-model DIR exports the model, and finetune() returns "
            "it as result.model"
        )
    if folder is not None:
        folder.check(config)
    if config.train.save_model:
        from ..models.export import check_destination, check_request

        check_destination(config.train.save_model)
        check_request(config, merge=False, dtype=None)
    group = None
    if launched_by_torchrun():
        if config.model.device_map is not None:
            raise ConfigError(
                f"model.device_map={config.model.device_map!r} cannot be combined with "
                "torchrun: each process would place the whole model on every device"
            )
        group = init_process_group(config.model.device)
    locked = folder is not None and (group is None or group.is_main)
    with folder.lock() if locked else contextlib.nullcontext():
        run = setup(config, group=group, options=options)
        result = train(run)
        if config.train.save_model and run.is_main:
            from ..models.export import save_model

            out = save_model(run.model, run.loaded.tokenizer, config, config.train.save_model,
                             result=result.record())
            run.log(f"model exported to {out}")
    if group is not None:
        leave_process_group(group)
    return result


def train(run: Run) -> RunResult:
    """The loop on a set-up run: validate, step, keep the best, test it once at the end."""
    config, cfg_train, log = run.config, run.config.train, run.log
    optimizer, scheduler = run.optimizer, run.scheduler
    out = Path(cfg_train.output_dir) if cfg_train.output_dir else None
    # Only the main process writes files; every process reads them back on --resume.
    writes = out if run.is_main else None
    checkpoints = Checkpoints(run.model, out, writes=run.is_main, data=data_digest(
        (run.splits.train, run.splits.val, run.splits.test)))
    folder = RunFolder(out) if writes is not None else None
    start_step, before, earlier_seconds = 0, None, 0.0
    resumed = checkpoints.resume(optimizer, scheduler, run.device) if cfg_train.resume else None
    if folder is not None:
        folder.start(config)
    if resumed is not None:
        start_step, before = resumed.step, resumed.test_accuracy_before
        earlier_seconds = resumed.train_seconds
        log(f"resumed from {out / LAST_FILE} at step {start_step}")
        if folder is not None:
            folder.truncate_metrics(start_step)
    reporter = open_reporter(cfg_train.report_to, writes, config.to_dict()) if run.is_main else None
    metrics = MetricsLog(
        writes / METRICS_FILE if writes else None, append=start_step > 0, reporter=reporter
    )

    if cfg_train.eval_test_before and before is None:
        before = run.accuracy(run.splits.test)
        log(f"zero-shot test {run.task.metric} {before:.1%}")
    if start_step == 0:
        score = run.score(run.splits.val)
        checkpoints.consider(0, score.value)
        metrics.write({"step": 0, **score.as_dict("val_"), **_test_curve_point(run)})

    steps = range(start_step, cfg_train.steps)
    progress = bar(steps, enabled=run.progress, desc="train", unit="step",
                   total=steps.stop, initial=start_step)
    earlier = metrics.records  # a resumed run's steps before the interruption
    skipped = sum("skipped" in r for r in earlier)
    consecutive_bad = 0
    step_times: list[float] = [r["step_seconds"] for r in earlier if "step_seconds" in r]
    comm_bytes: list[int] = [r["comm_bytes"] for r in earlier if "comm_bytes" in r]
    earlier_peak = max((r["peak_memory_mb"] for r in earlier if "peak_memory_mb" in r),
                       default=0.0)
    train_start = time.perf_counter() - earlier_seconds
    for step in progress:
        closure = step_closure(run, step)
        record: dict[str, Any] = {"step": step + 1}
        tick = time.perf_counter()
        sums = _weight_sums(run) if step == start_step else None
        try:
            loss = _step(run, closure, step)
        except NonFiniteLossError as error:
            skipped += 1
            consecutive_bad += 1
            record["skipped"] = str(error)
            if consecutive_bad >= MAX_CONSECUTIVE_NONFINITE:
                metrics.write(record)
                raise NonFiniteLossError(
                    f"{consecutive_bad} non-finite losses in a row at step {step + 1}: the run "
                    f"diverged ({_non_finite_advice(run)})"
                ) from error
            scheduler.step()
        else:
            consecutive_bad = 0
            step_times.append(time.perf_counter() - tick)
            if sums is not None and _unchanged(sums, _weight_sums(run)):
                log(f"warning: step {step + 1} changed no trainable weight: the update is "
                    f"below the resolution of the {config.model.dtype} weights "
                    f"({_update_settings(config)}); raise them, or train in float32")
            scheduler.step()
            record.update(
                loss=float(loss),
                lr=optimizer.param_groups[0]["lr"],
                step_seconds=step_times[-1],
                peak_memory_mb=peak_memory_mb(run.device),
            )
            if run.traffic is not None:
                record["comm_bytes"], record["collectives"] = run.traffic.take()
                comm_bytes.append(record["comm_bytes"])
            if hasattr(progress, "set_postfix"):
                progress.set_postfix(
                    loss=f"{float(loss):.4f}", best_val=f"{checkpoints.best_val:.3f}"
                )
        done = step + 1 == cfg_train.steps
        if (step + 1) % cfg_train.eval_every == 0 or done:
            _check_weights_finite(run, step + 1, checkpoints, metrics, record)
            score = run.score(run.splits.val)
            record.update(score.as_dict("val_"), **_test_curve_point(run))
            checkpoints.consider(step + 1, score.value)
            checkpoints.save_last(step + 1, optimizer, scheduler, before,
                                  train_seconds=time.perf_counter() - train_start)
        metrics.write(record)
        if "loss" in record and not math.isfinite(record["loss"]):
            raise NonFiniteLossError(f"non-finite loss at step {step + 1}")
    train_seconds = time.perf_counter() - train_start

    checkpoints.restore_best(run.device)
    if run.group is not None:
        if out is not None:
            broadcast_parameters(run.model)  # only the main process read the best checkpoint
        per_step = statistics.fmean(comm_bytes) if comm_bytes else 0.0
        log(
            f"{run.traffic.description} over {run.group.world_size} processes: "
            f"{per_step:,.0f} bytes per process per step"
        )
    test = run.score(run.splits.test)
    result = RunResult(
        test_accuracy=test.value,
        best_val_accuracy=checkpoints.best_val,
        best_step=checkpoints.best_step,
        test_accuracy_before=before,
        steps=cfg_train.steps,
        train_seconds=train_seconds,
        seconds_per_step=_median(step_times),
        peak_memory_mb=max(peak_memory_mb(run.device), earlier_peak),
        skipped_steps=skipped,
        trainable_parameters=run.trainable_parameters,
        forward_passes_per_step=getattr(optimizer, "forward_passes_per_step", 1),
        output_dir=str(out) if out else None,
        history=metrics.records,
        world_size=run.group.world_size if run.group else 1,
        matmul=run.matmul,
        comm_bytes_per_step=statistics.fmean(comm_bytes) if comm_bytes else None,
        test_examples=len(run.splits.test),
        val_examples=len(run.splits.val),
        metric=test.name,
        test_em=test.extra.get("em"),
        test_scores=[round(x, SCORE_DIGITS) for x in test.per_example] or None,
        untrained=untrained_reason(
            best_step=checkpoints.best_step,
            steps=cfg_train.steps,
            val_history=[r[f"val_{test.name}"] for r in metrics.records
                         if f"val_{test.name}" in r],
            predicted=test.predictions,
            scheme=config.tuning.scheme,
            lr=config.optimizer.lr,
            zeroth_order=not optimizer_entry(config.optimizer.name).first_order,
        ),
        model=run.model,
        test_predictions=list(test.predictions) or None,
    )
    if result.untrained:
        log(f"warning: {result.untrained}")
    final = result.record()
    metrics.write({"step": cfg_train.steps, "final": final})
    metrics.close()
    if writes is not None:
        atomic_write(out / RESULT_FILE, lambda p: p.write_text(json.dumps(final, indent=2)))
    steps_run = cfg_train.steps - start_step
    if steps_run and skipped > MAX_SKIPPED_FRACTION * steps_run:
        raise NonFiniteLossError(
            f"{skipped} of {steps_run} steps were skipped for non-finite losses (more than "
            f"{MAX_SKIPPED_FRACTION:.0%}): the run did not train as configured "
            f"({_non_finite_advice(run)})"
        )
    return result


def _test_curve_point(run: Run) -> dict[str, float]:
    """The test split's metrics at an evaluation, when ``train.eval_test_every`` asks for them:
    on a small validation split the checkpoint it picks can sit far from the test curve's
    peak, and only the whole test curve shows how far."""
    if not run.config.train.eval_test_every:
        return {}
    return run.score(run.splits.test).as_dict("test_")


class DivergedError(FloatingPointError):
    """The trainable weights hold non-finite values: the run diverged."""


def _step(run: Run, closure, step: int):
    """One optimizer step; an update that overflows the weights' dtype is named as such.

    First-order steps run in train mode (dropout on), as HF's ``training_step`` runs the
    paper's FO baselines; zeroth-order probes stay in eval mode (MeZO's ``zo_forward``): a
    ZO difference needs the same function at θ ± εz.
    """
    try:
        if run.first_order:
            run.model.train()
        return run.optimizer.step(closure)
    except RuntimeError as error:
        if "overflow" not in str(error):
            raise
        raise DivergedError(
            f"step {step + 1}: the update overflowed the {run.config.model.dtype} weights "
            f"(optimizer.lr={run.config.optimizer.lr:g}); lower the learning rate or train in "
            "float32 or bfloat16"
        ) from None
    finally:
        run.model.eval()


def _check_weights_finite(run: Run, step: int, checkpoints, metrics, record) -> None:
    """A model with a non-finite trainable value is never evaluated as a candidate."""
    with torch.no_grad():  # resident values: offloaded weights are meta tensors in the model
        finite = all(
            bool(torch.isfinite(p).all())
            for _, p in named_resident_parameters(run.model)
            if p.requires_grad
        )
    if finite:
        return
    record["diverged"] = "non-finite trainable weights"
    metrics.write(record)
    raise DivergedError(
        f"step {step}: the trainable weights hold non-finite values, so the run diverged "
        f"(best validation {checkpoints.best_val:.1%} at step {checkpoints.best_step}); lower "
        f"optimizer.lr, currently {run.config.optimizer.lr:g}"
    )


# A perturbation scale at or above this moves the probes θ ± εz beyond any weight's scale
# (ZO-Bench sweeps 1e-4..1e-1): their losses overflow whatever the learning rate.
LARGE_EPS = 1.0


def _non_finite_advice(run: Run) -> str:
    """What to lower after non-finite losses: ε when it is so large that the probes alone
    overflow (fp16 with ε = 1e4), else the learning rate."""
    config = run.config
    eps = config.optimizer.eps
    if not run.first_order and eps is not None and eps >= LARGE_EPS:
        return (
            f"lower optimizer.eps, currently {eps:g}: the probes θ ± εz move the weights far "
            f"beyond their scale, so their losses overflow whatever the learning rate"
        )
    return f"lower optimizer.lr, currently {config.optimizer.lr:g}"


def _weight_sums(run: Run) -> list[tuple[float, float]]:
    """Per trainable tensor, the float64 sum of its values and one ulp of its largest value:
    a read of the weights, no copy (a 13B model has no room for one)."""
    with torch.no_grad():
        return [
            (float(p.sum(dtype=torch.float64)),
             max(-float(p.min()), float(p.max())) * torch.finfo(p.dtype).eps
             if p.numel() else 0.0)
            for _, p in named_resident_parameters(run.model)
            if p.requires_grad and p.is_floating_point()
        ]


def _unchanged(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> bool:
    """Whether a step moved no tensor's sum by one ulp of its largest value: what is left of
    the update (a few subnormal values at most) is no training."""
    return all(abs(a - b) < ulp for (b, ulp), (a, _) in zip(before, after, strict=True))


def _update_settings(config: RunConfig) -> str:
    eps = config.optimizer.eps
    lr = f"optimizer.lr={config.optimizer.lr:g}"
    return lr if eps is None else f"{lr}, optimizer.eps={eps:g}"


def _median(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
