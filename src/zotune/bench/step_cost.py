"""``zotune profile --step-cost``: what a ZO step costs beyond its two forward passes.

For one model and batch (default: the OPT-125m shape, random init, fp32, B = 16, T = 64),
in one process, after warm-up, as the median of several steps:

* ``T_fwd``: one no-grad forward with logits at the scored position only, per scheme;
* ``T_step`` of ZO-SGD (full, LoRA, prefix, prompt), ZO-Adam (full) and, for each scheme,
  the MeZO-style reference step (:mod:`zotune.bench.mezo_reference`);
* ``ratio = T_step / (2 · T_fwd)``, with the T_fwd of the same model and scheme: 1 would
  mean the step costs exactly its two forwards; the excess is the perturb/restore/update
  passes and the direction sampling;
* ``speed-up = T_step(MeZO-style, same scheme) / T_step``;
* ``memory / inference``: the step's memory over that of a no-grad forward of the same
  model and scheme, both as :class:`zotune.bench.profile.ProfileResult.memory_bytes`
  (weights + peak added by the step). On CPU the memory figures come from one fresh
  subprocess per row (``isolate=True``, the default), because a process that has already
  run other rows keeps their noise table and libraries resident.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .profile import (
    DEFAULT_MODEL,
    ProfileResult,
    ProfileSpec,
    _mb,
    _table,
    build_model,
    describe_setup,
    measure,
    run_profile,
)

SCHEMES = ("full", "lora", "prefix", "prompt")


def methods_for(scheme: str) -> tuple[str, ...]:
    """The rows of a scheme: ZO-SGD, ZO-Adam (full only), and the MeZO-style reference."""
    return ("zo-sgd", "zo-adam", "mezo-ref") if scheme == "full" else ("zo-sgd", "mezo-ref")


@dataclass(frozen=True)
class StepCostConfig:
    model: str = DEFAULT_MODEL
    batch_size: int = 16
    seq_len: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    steps: int = 5
    warmup: int = 1
    schemes: tuple[str, ...] = SCHEMES
    lr: float = 1e-6
    seed: int = 0
    attn_implementation: str | None = None

    def spec(self, method: str, scheme: str, **changes: Any) -> ProfileSpec:
        values = {
            "method": method,
            "model": self.model,
            "scheme": scheme,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "dtype": self.dtype,
            "device": self.device,
            "steps": self.steps,
            "warmup": self.warmup,
            "lr": self.lr,
            "seed": self.seed,
            "attn_implementation": self.attn_implementation,
        }
        values.update(changes)
        return ProfileSpec(**values)


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
    def memory_ratio(self) -> float | None:
        if not self.memory_bytes or not self.inference_memory_bytes:
            return None
        return self.memory_bytes / self.inference_memory_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "ratio": self.ratio,
            "speedup_vs_mezo": self.speedup_vs_mezo,
            "memory_ratio": self.memory_ratio,
        }


@dataclass
class StepCostResult:
    config: StepCostConfig
    rows: list[StepCostRow]
    forward: dict[str, ProfileResult]  # scheme → the inference measurement
    setup: str
    memory_method: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "step-cost",
            "config": dataclasses.asdict(self.config),
            "setup": self.setup,
            "memory_method": self.memory_method,
            "forward": {s: r.as_dict() for s, r in self.forward.items()},
            "rows": [row.as_dict() for row in self.rows],
        }


def run_step_cost(
    config: StepCostConfig,
    *,
    isolate: bool = True,
    log: Callable[[str], None] | None = None,
) -> StepCostResult:
    """Time every row in this process; take memory from subprocesses when ``isolate``.

    Each scheme gets one model (same seed), shared by its forward and its rows, so the
    ratio compares a step against forwards of exactly the model it perturbs.
    """
    say = log or (lambda message: None)
    timed: dict[tuple[str, str], ProfileResult] = {}
    forward: dict[str, ProfileResult] = {}
    for scheme in config.schemes:
        model = build_model(config.spec("inference", scheme))
        spec = config.spec("inference", scheme)
        forward[scheme] = measure(spec, model=model, reuse_heap_for_timing=isolate)
        say(f"{scheme}: forward {forward[scheme].seconds_per_step:.3f} s")
        for method in methods_for(scheme):
            spec = config.spec(method, scheme)
            result = measure(spec, model=model, reuse_heap_for_timing=isolate)
            timed[method, scheme] = result
            say(f"{scheme}: {method} {result.seconds_per_step:.3f} s/step")
        del model
        gc.collect()
    memory = {key: r.memory_bytes for key, r in timed.items()}
    inference_memory = {s: r.memory_bytes for s, r in forward.items()}
    memory_method = "in one process (CPU figures carry earlier rows' resident memory)"
    if isolate:
        say("memory: one fresh process per row")
        keys = [("inference", s) for s in config.schemes] + list(timed)
        specs = [config.spec(m, s, steps=1) for m, s in keys]
        measured = run_profile(specs, isolate=True, log=log)
        by_key = dict(zip(keys, measured, strict=True))
        memory = {key: by_key[key].memory_bytes for key in timed}
        inference_memory = {s: by_key["inference", s].memory_bytes for s in config.schemes}
        memory_method = "one fresh process per row"
    rows = []
    for (method, scheme), result in timed.items():
        mezo = timed.get(("mezo-ref", scheme))
        rows.append(
            StepCostRow(
                method=method,
                scheme=scheme,
                trainable_parameters=result.trainable_parameters,
                seconds_per_step=result.seconds_per_step,
                step_seconds=result.step_seconds,
                forward_seconds=forward[scheme].seconds_per_step,
                mezo_seconds=mezo.seconds_per_step if mezo else None,
                memory_bytes=memory[method, scheme],
                inference_memory_bytes=inference_memory[scheme],
                estimate=result.estimate,
            )
        )
    setup = describe_setup(list(timed.values())).split("; memory =")[0]
    return StepCostResult(config, rows, forward, setup, memory_method)


def step_cost_table(result: StepCostResult, *, markdown: bool = False) -> str:
    header = (
        "method",
        "scheme",
        "trainable",
        "T_step s",
        "T_fwd s",
        "T_step/(2·T_fwd)",
        "speed-up vs MeZO-style",
        "memory MB",
        "memory / inference",
    )
    rows = []
    for row in result.rows:
        speedup, ratio = row.speedup_vs_mezo, row.memory_ratio
        rows.append(
            (
                row.method,
                row.scheme,
                f"{row.trainable_parameters:,}",
                f"{row.seconds_per_step:.3f}",
                f"{row.forward_seconds:.3f}",
                f"{row.ratio:.2f}",
                "–" if speedup is None else f"{speedup:.2f}×",
                _mb(row.memory_bytes),
                "–" if ratio is None else f"{ratio:.2f}",
            )
        )
    return _table(header, rows, markdown)


def render_step_cost_markdown(result: StepCostResult, *, title: str = "Step cost") -> str:
    forward_memory = {row.scheme: row.inference_memory_bytes for row in result.rows}
    forwards = ", ".join(f"{s}: {_mb(m)} MB" for s, m in forward_memory.items())
    lines = [
        f"# {title}",
        "",
        f"{result.setup}; memory measured {result.memory_method}.",
        "",
        step_cost_table(result, markdown=True),
        "",
        f"Inference memory (weights + forward peak) per scheme: {forwards}.",
        "T_step/(2·T_fwd): 1.00 would be a step that costs exactly its two forward passes. "
        "MeZO-style: `zotune.bench.mezo_reference` (global reseed, whole-tensor "
        "`torch.normal`, out-of-place moves, four passes).",
    ]
    return "\n".join(lines) + "\n"
