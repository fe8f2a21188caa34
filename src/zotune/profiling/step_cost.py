"""``zotune profile --step-cost``: what a ZO step costs beyond its two forward passes.

For one model and batch (default: the OPT-125m shape, random init, fp32, B = 16, T = 64),
in one process, after warm-up, as the median of several rounds (each round times one call
of every method of a scheme in turn, so load changes on a shared machine hit all alike):

* ``T_fwd``: one no-grad forward with logits at the scored position only, per scheme;
* ``T_step`` of ZO-SGD (full, LoRA, prefix, prompt), ZO-SGD-MMT and ZO-Adam (full) and,
  for each scheme, the MeZO-style reference step (:mod:`zotune.profiling.mezo_reference`);
* ``ratio = T_step / (2 · T_fwd)``, with the T_fwd of the same model and scheme: 1 would
  mean the step costs exactly its two forwards; the excess is the perturb/restore/update
  passes and the direction sampling;
* ``speed-up = T_step(MeZO-style, same scheme) / T_step``;
* with a compiled forward (``compile=True``): ``compile s``, the first forward of the
  compiled model less a steady one (tracing and code generation, once per process and
  shape); :func:`merge_step_costs` sets beside it the same method's eager step in the same
  dtype, so a row says ``T_step / eager T_step`` and after how many steps the compile time
  is won back (``compile s / (eager T_step − T_step)``);
* ``memory / inference``: the step's memory over that of a no-grad forward of the same
  model and scheme, both as :class:`zotune.profiling.spec.ProfileResult.memory_bytes`
  (weights + peak added by the step). On CPU the memory figures come from one fresh
  subprocess per row (``isolate=True``, the default), because a process that has already
  run other rows keeps their noise table and libraries resident. Rows with a compiled
  forward take theirs in the timing process: a fresh process would compile again, once per
  row (minutes on a CPU for a 30-layer model).
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..utils.tables import table
from .build import build_model, build_step
from .measurement import measure, run_profile
from .render import describe_setup, mb
from .spec import ProfileResult, ProfileSpec, Settings

SCHEMES = ("full", "lora", "prefix", "prompt")


def methods_for(scheme: str) -> tuple[str, ...]:
    """The rows of a scheme: ZO-SGD, ZO-SGD-MMT and ZO-Adam (full only), and the MeZO-style
    reference."""
    if scheme == "full":
        return ("zo-sgd", "zo-sgd-mmt", "zo-adam", "mezo-ref")
    return ("zo-sgd", "mezo-ref")


@dataclass(frozen=True)
class StepCostConfig(Settings):
    steps: int = 5
    schemes: tuple[str, ...] = SCHEMES
    methods: tuple[str, ...] | None = None  # a subset of each scheme's rows; None: all

    def methods_for(self, scheme: str) -> tuple[str, ...]:
        """The rows of ``scheme`` this config times."""
        return tuple(m for m in methods_for(scheme) if self.methods is None or m in self.methods)

    def spec(self, method: str, scheme: str, **changes: Any) -> ProfileSpec:
        """The measurement of ``method`` on ``scheme`` with this config's settings."""
        return ProfileSpec(**{**self.settings(), "method": method, "scheme": scheme, **changes})


@dataclass
class StepCostRow:
    """One method on one scheme: its timing, the scheme's forward, memory (bytes) if known."""

    method: str
    scheme: str
    trainable_parameters: int
    seconds_per_step: float
    step_seconds: list[float]
    forward_seconds: float
    mezo_seconds: float | None
    memory_bytes: int | None = None
    inference_memory_bytes: int | None = None
    estimate: dict[str, Any] = field(default_factory=dict)
    precision: str = "float32"  # the weights' dtype, +compile for a compiled forward
    forward_passes: int = 2
    compile_seconds: float | None = None  # compiled rows: first forward less a steady one
    eager_seconds: float | None = None  # compiled rows: the same step eager (merge_step_costs)

    @property
    def non_forward_seconds(self) -> float:
        """T_step − passes · T_fwd: the perturb, restore and update work of the step."""
        return self.seconds_per_step - self.forward_passes * self.forward_seconds

    @property
    def ratio(self) -> float:
        """T_step / (2 · T_fwd)."""
        return self.seconds_per_step / (2 * self.forward_seconds)

    @property
    def speedup_vs_mezo(self) -> float | None:
        if self.mezo_seconds is None:
            return None
        return self.mezo_seconds / self.seconds_per_step

    @property
    def compiled_over_eager(self) -> float | None:
        """T_step / T_step of the same method, scheme and dtype with an eager forward."""
        if self.eager_seconds is None:
            return None
        return self.seconds_per_step / self.eager_seconds

    @property
    def steps_to_amortise(self) -> float | None:
        """compile s / (eager T_step − T_step): the steps after which compiling has paid for
        itself; None when the compiled step is not faster (it never pays off) or unknown."""
        if self.compile_seconds is None or self.eager_seconds is None:
            return None
        saved = self.eager_seconds - self.seconds_per_step
        return self.compile_seconds / saved if saved > 0 else None

    @property
    def memory_ratio(self) -> float | None:
        if not self.memory_bytes or not self.inference_memory_bytes:
            return None
        return self.memory_bytes / self.inference_memory_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "ratio": self.ratio,
            "non_forward_seconds": self.non_forward_seconds,
            "speedup_vs_mezo": self.speedup_vs_mezo,
            "compiled_over_eager": self.compiled_over_eager,
            "steps_to_amortise": self.steps_to_amortise,
            "memory_ratio": self.memory_ratio,
        }


@dataclass
class StepCostResult:
    config: StepCostConfig
    rows: list[StepCostRow]
    memory: list[ProfileResult]  # the memory measurements, inference rows first
    setup: str
    memory_method: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "step-cost",
            "config": dataclasses.asdict(self.config),
            "setup": self.setup,
            "memory_method": self.memory_method,
            "rows": [row.as_dict() for row in self.rows],
            "memory": [r.as_dict() for r in self.memory],
        }


def _time_interleaved(
    config: StepCostConfig, scheme: str, model, methods: tuple[str, ...], failed: Callable,
    passes: dict[str, int] | None = None, say: Callable[[str], None] = lambda message: None,
) -> dict[str, list[float]] | None:
    """Seconds per call of the forward and of each method's step, taken in rounds.

    Round r times one call of every method in turn, so a change in the machine's load
    (other processes, frequency) hits every method alike instead of whichever ran then.
    A method that raises is passed to ``failed(method, error)``, which re-raises or returns;
    then the rounds stop and None is returned: its steps may have left the shared weights
    non-finite, so the others are timed again on a fresh model.
    """
    from ..utils.measure import time_calls

    built = {}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    method = methods[0]
    try:
        for method in methods:
            built[method] = build_step(config.spec(method, scheme), model)
            if passes is not None:
                passes[method] = built[method].forward_passes
            built[method].forward()
            for _ in range(config.warmup + 1):
                built[method].step()
        for number in range(1, config.steps + 1):
            for method in methods:
                times = time_calls(built[method].step, repeats=1, warmup=0, device=config.device)
                seconds[method] += times.seconds
            say(f"{scheme}: round {number}/{config.steps}: " + ", ".join(
                f"{m} {seconds[m][-1]:.3f} s" for m in methods))
    except Exception as error:
        failed(method, error)
        return None
    return seconds


def compile_seconds(config: StepCostConfig, scheme: str, model) -> float:
    """The compile time of ``model``'s forward: its first call less the fastest of three
    more (the model must not have run yet at this shape, dtype and grad mode)."""
    from ..utils.measure import time_calls

    forward = build_step(config.spec("inference", scheme), model).forward
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = time_calls(forward, repeats=1, warmup=0, device=config.device).seconds[0]
        steady = time_calls(forward, repeats=3, warmup=0, device=config.device).seconds
    return max(0.0, first - min(steady))


def run_step_cost(
    config: StepCostConfig,
    *,
    isolate: bool = True,
    log: Callable[[str], None] | None = None,
    failures: list[tuple[ProfileSpec, str]] | None = None,
) -> StepCostResult:
    """Time every row in this process; take memory from subprocesses when ``isolate``.

    Each scheme gets one model (same seed), shared by its forward and its rows, so the
    ratio compares a step against forwards of exactly the model it perturbs. Without
    ``isolate`` each row's memory is measured in this process first (its CPU figures carry
    what earlier rows left resident) and the timings run with the same allocator settings.

    With ``config.compile`` the forward's compile time is taken first, and memory is measured
    in this process even when ``isolate`` (a fresh process would compile again per row).

    ``failures``: a list to collect ``(spec, first line of the error)`` of each method that
    raises on a scheme, whose row is then left out (every row of the scheme, if its forward
    fails) while the others go on; without it the first error ends the run.
    """
    from ..tuning.schemes import count_parameters
    from ..utils.measure import reuse_freed_memory
    from .measurement import first_line

    say = log or (lambda message: None)
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    broken: set[tuple[str, str]] = set()

    def failed(method: str, scheme: str, error: Exception) -> None:
        if failures is None:
            raise error
        failures.append((config.spec(method, scheme), first_line(error)))
        broken.add((method, scheme))
        say(f"{scheme}: {method} FAILED: {failures[-1][1]}")

    keys = [("inference", s) for s in config.schemes]
    keys += [(m, s) for s in config.schemes for m in config.methods_for(s)]
    memory: dict[tuple[str, str], ProfileResult] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    trainable: dict[str, int] = {}
    passes: dict[tuple[str, str], int] = {}
    compiled: dict[str, float] = {}
    in_process = not isolate or config.compile
    for scheme in config.schemes:
        model = build_model(config.spec("inference", scheme))
        trainable[scheme] = count_parameters(model)[0]
        methods = ("inference", *config.methods_for(scheme))
        if config.compile:
            say(f"{scheme}: compiling the forward ({config.precision()})")
            compiled[scheme] = compile_seconds(config, scheme, model)
            say(f"{scheme}: compiled in {compiled[scheme]:.1f} s")
        if in_process:
            for method in methods:
                try:
                    memory[method, scheme] = measure(config.spec(method, scheme), model=model)
                except Exception as error:
                    failed(method, scheme, error)
                    # Its steps may have left the shared weights non-finite.
                    model = build_model(config.spec("inference", scheme))
        if isolate and config.device == "cpu":
            # Timed as the isolated rows are: heap reuse on, as in a training run's steady
            # state (each in-process measure() pins the threshold again for its reading).
            reuse_freed_memory()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft and transformers warn on every forward
            timed = None
            while remaining := tuple(m for m in methods if (m, scheme) not in broken):
                counted: dict[str, int] = {}
                timed = _time_interleaved(
                    config, scheme, model, remaining,
                    lambda method, error, scheme=scheme: failed(method, scheme, error),
                    counted, say,
                )
                passes.update({(m, scheme): n for m, n in counted.items()})
                if timed is not None:
                    break
                model = build_model(config.spec("inference", scheme))
            for method, times in (timed or {}).items():
                seconds[method, scheme] = times
                say(f"{scheme}: {method} {statistics.median(times):.3f} s")
        del model
        gc.collect()
    memory_method = "in one process (CPU figures carry earlier rows' resident memory)"
    if config.compile and isolate:
        memory_method = ("in the timing process (a fresh process would compile again; CPU "
                         "figures carry earlier rows' resident memory)")
    if not in_process:
        say("memory: one fresh process per row")
        measured_keys = [key for key in keys if key not in broken]
        specs = [config.spec(m, s, steps=1) for m, s in measured_keys]
        memory_failures: list[tuple[ProfileSpec, str]] = []
        measured = run_profile(
            specs, log=log, failures=None if failures is None else memory_failures
        )
        failed_specs = {id(spec) for spec, _ in memory_failures}
        done = [key for key, spec in zip(measured_keys, specs, strict=True)
                if id(spec) not in failed_specs]
        memory = dict(zip(done, measured, strict=True))
        for spec, error in memory_failures:
            failures.append((config.spec(spec.method, spec.scheme), error))
            broken.add((spec.method, spec.scheme))
        memory_method = "one fresh process per row"
    usable = {key for key in keys if key in seconds and key in memory}
    median = {key: statistics.median(seconds[key]) for key in usable}
    rows = [
        StepCostRow(
            method=method,
            scheme=scheme,
            trainable_parameters=trainable[scheme],
            seconds_per_step=median[method, scheme],
            step_seconds=seconds[method, scheme],
            forward_seconds=median["inference", scheme],
            mezo_seconds=median.get(("mezo-ref", scheme)),
            memory_bytes=memory[method, scheme].memory_bytes,
            inference_memory_bytes=memory["inference", scheme].memory_bytes,
            estimate=memory[method, scheme].estimate,
            precision=config.precision(),
            forward_passes=passes.get((method, scheme), 2),
            compile_seconds=compiled.get(scheme),
        )
        for method, scheme in keys
        if method != "inference" and (method, scheme) in usable
        and ("inference", scheme) in usable
    ]
    ordered = [memory[key] for key in keys if key in usable]
    setup = describe_setup(ordered).split("; median of")[0]
    setup += f"; median of {config.steps} interleaved rounds after {config.warmup + 1} warm-up"
    return StepCostResult(config, rows, ordered, setup, memory_method)


def step_cost_table(result: StepCostResult, *, markdown: bool = False) -> str:
    header = (
        "method",
        "precision",
        "scheme",
        "trainable",
        "T_step s",
        "T_fwd s",
        "T_step/(2·T_fwd)",
        "non-forward s",
        "speed-up vs MeZO-style",
        "memory MB",
        "memory / inference",
    )
    compiled = any(row.compile_seconds is not None for row in result.rows)
    if compiled:
        header += ("compile s", "T_step / eager", "pays off after (steps)")
    rows = []
    for row in result.rows:
        speedup, ratio = row.speedup_vs_mezo, row.memory_ratio
        cells = (
                row.method,
                row.precision,
                row.scheme,
                f"{row.trainable_parameters:,}",
                f"{row.seconds_per_step:.3f}",
                f"{row.forward_seconds:.3f}",
                f"{row.ratio:.2f}",
                f"{row.non_forward_seconds:.3f}",
                "–" if speedup is None else f"{speedup:.2f}×",
                mb(row.memory_bytes),
                "–" if ratio is None else f"{ratio:.2f}",
        )
        if compiled:
            cells += _compile_cells(row)
        rows.append(cells)
    return table(header, rows, markdown=markdown)


def _compile_cells(row: StepCostRow) -> tuple[str, str, str]:
    """compile s, T_step / eager T_step, steps to amortise ("never": not faster)."""
    if row.compile_seconds is None:
        return ("–", "–", "–")
    over = row.compiled_over_eager
    steps = row.steps_to_amortise
    paid = "–" if over is None else "never" if steps is None else f"{steps:,.0f}"
    return (f"{row.compile_seconds:.1f}", "–" if over is None else f"{over:.2f}", paid)


def render_step_cost_markdown(result: StepCostResult, *, title: str = "Step cost",
                              command: str | None = None, note: str | None = None) -> str:
    forward_memory = {(row.precision, row.scheme): row.inference_memory_bytes
                      for row in result.rows}
    forwards = ", ".join(f"{s} [{p}]: {mb(m)} MB" for (p, s), m in forward_memory.items())
    lines = [f"# {title}", ""]
    if command:
        lines += [f"Measured with `{command}`.", ""]
    if note:
        lines += [note, ""]
    lines += [
        f"{result.setup}; memory measured {result.memory_method}.",
        "",
        step_cost_table(result, markdown=True),
        "",
        f"Inference memory (weights + forward peak) per scheme: {forwards}.",
        "T_step/(2·T_fwd): 1.00 would be a step that costs exactly its two forward passes; "
        "non-forward: T_step minus its forward passes (perturb, restore, update). "
        "MeZO-style: `zotune.profiling.mezo_reference` (global reseed, whole-tensor "
        "`torch.normal`, out-of-place moves, four passes).",
    ]
    if any(row.compile_seconds is not None for row in result.rows):
        lines.append(
            "compile s: the compiled model's first forward less a steady one "
            "(`zotune.compile_model`, once per process and shape); T_step / eager: over the "
            "same method's step with an eager forward in the same dtype; pays off after: "
            "compile s / (eager T_step − T_step), the steps that win the compile time back "
            "(never: the compiled step is not faster)."
        )
    return "\n".join(lines) + "\n"


def merge_step_costs(results: list[StepCostResult]) -> StepCostResult:
    """One result holding the rows of several runs (one per precision), side by side;
    each compiled row gets the step of its eager twin (same method, scheme and dtype)."""
    first = results[0]
    setup = first.setup
    precisions = ", ".join(r.config.precision() for r in results)
    if len(results) > 1:
        setup = f"{setup}; precisions {precisions}, each timed in its own interleaved rounds"
    rows = [row for r in results for row in r.rows]
    eager = {(row.method, row.scheme, row.precision): row.seconds_per_step
             for row in rows if row.compile_seconds is None}
    for row in rows:
        if row.compile_seconds is not None:
            twin = (row.method, row.scheme, row.precision.removesuffix("+compile"))
            row.eager_seconds = eager.get(twin)
    methods = dict.fromkeys(f"{r.config.precision()}: {r.memory_method}" for r in results)
    memory_method = first.memory_method if len({r.memory_method for r in results}) == 1 else (
        "; ".join(methods))
    return StepCostResult(
        first.config,
        rows,
        [m for r in results for m in r.memory],
        setup,
        memory_method,
    )
