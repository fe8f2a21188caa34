"""Taking measurements: peak memory and time per step of one :class:`ProfileSpec`.

A measurement (:mod:`zotune.profiling.spec`) runs one method on one model, tuning scheme and
synthetic batch (:mod:`zotune.profiling.build`). It reports:

* memory readings (CPU: process resident set; CUDA: bytes allocated by torch): ``loaded``
  once model, tuning, optimizer and batch exist and one no-grad forward has run (that
  forward loads the lazily imported model code and initialises the kernels, which are the
  runtime's cost, not the step's), and ``peak`` over one step after the ``warmup`` steps
  (so one-time work, such as building the noise table or allocating Adam's state lazily,
  is not counted as a transient, while what it leaves resident is);
* ``above weights = peak − loaded``: what a step adds to a model already in memory
  (gradients, optimizer state, direction scratch, activations), measured;
* ``memory = weights + above weights``, with the weights counted exactly from the
  parameter and buffer tensors: the footprint of training (what the paper's memory table
  reports). A process's resident set also holds the interpreter and libraries (≈ 0.3–0.5
  GB for torch + transformers); counting the weights instead of reading the resident set
  before the model keeps those, and lazily imported code, out of the figure;
* ``seconds_per_step``: the median of ``steps`` timed steps, after one more untimed step;
  with ``repeats`` N, the row is measured in N fresh processes, round by round over the rows
  (a slow spell of the machine then touches every row alike), and the process with the median
  s/step stands for the row, every process's s/step kept beside it
  (:func:`median_process`). Steps within one process agree closely; processes can differ by
  much more (a HiZOO LoRA row ran 5.2 s/step in one process, 1.3× ZO-SGD's in others).

Each memory figure is printed beside the analytic estimate
(:func:`zotune.profiling.memory_model.estimate_memory`) and its breakdown.

On CPU the memory step runs with glibc told to unmap large freed blocks
(:func:`zotune.utils.measure.track_allocations_in_rss`), so the resident set follows the live
tensors. A long-lived process still carries what earlier work left resident, so by default
every measurement runs in its own subprocess (:mod:`zotune.profiling.worker`),
whose timed steps run with heap reuse restored (:func:`zotune.utils.measure.reuse_freed_memory`):
fresh pages for every activation slow a forward by ≈ 5–10%. In-process measurements
(``isolate=False``) keep the pages-per-tensor allocator throughout, so that the next
measurement's memory reading stays honest, and their times carry that cost.

Sequence-length sweep: the same measurement for several T (ZO-SGD, FO-SGD, FO-Adam by
default) shows ZO's memory staying near inference while FO's grows with the activations it
keeps for backprop.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from ..models.anatomy import base_model
from ..utils.measure import MB
from .build import build_step
from .estimates import estimate_for
from .spec import ProfileResult, ProfileSpec

# One measurement ---------------------------------------------------------------------------


def measure(
    spec: ProfileSpec,
    *,
    isolated: bool = False,
    model=None,
    reuse_heap_for_timing: bool | None = None,
) -> ProfileResult:
    """Run one measurement in this process (see the module docstring for what it reports).

    ``model``: an already built model for the spec's model and scheme (its parameters are
    moved by the steps); by default one is built. In a long-lived process the CPU figures
    carry what earlier work left resident (e.g. a noise table built by an earlier ZO
    measurement is not counted again); use :func:`measure_isolated` for clean ones.

    ``reuse_heap_for_timing`` (default: ``isolated``) times the steps with glibc's heap
    reuse restored (≈ 5–10% faster on CPU than fresh pages for every activation). Blocks
    freed meanwhile stay in the heap and are handed out again before fresh pages, so later
    memory readings in the same process undercount: leave it off in a process that goes on
    to measure memory again.
    """
    spec.check()
    if reuse_heap_for_timing is None:
        reuse_heap_for_timing = isolated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft and transformers warn on every forward
        return _measure(spec, isolated, model, reuse_heap_for_timing)


def _measure(spec: ProfileSpec, isolated: bool, model, reuse_heap: bool) -> ProfileResult:
    import torch

    from ..models.loading import resolve_device
    from ..models.matmul import matmul_mode
    from ..tuning.schemes import count_parameters
    from ..utils.environment import hardware_description
    from ..utils.measure import (
        current_memory_bytes,
        release_freed_memory,
        reuse_freed_memory,
        time_calls,
        track_allocations_in_rss,
        track_peak,
    )

    device = resolve_device(spec.device)
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    pinned = device.type == "cpu" and track_allocations_in_rss()
    built = build_step(spec, model)
    trainable, total = count_parameters(built.model)
    estimate = estimate_for(spec, built.model, device=device)
    built.forward()
    gc.collect()
    release_freed_memory()
    loaded = current_memory_bytes(device)
    for _ in range(spec.warmup):
        built.step()
    gc.collect()
    release_freed_memory()
    with track_peak(device) as window:
        built.step()
    if pinned and reuse_heap:
        reuse_freed_memory()
    # One more untimed step lets the heap grow back to its steady state.
    times = time_calls(built.step, repeats=spec.steps, warmup=1, device=device)
    attn = getattr(base_model(built.model).config, "_attn_implementation", None)
    result = ProfileResult(
        spec=spec,
        seconds_per_step=times.median,
        step_seconds=times.seconds,
        weights_bytes=estimate.weights,
        loaded_bytes=loaded,
        peak_bytes=window.peak,
        peak_reset=window.reset,
        isolated=isolated,
        trainable_parameters=trainable if spec.method != "inference" else 0,
        total_parameters=total,
        forward_passes_per_step=built.forward_passes,
        attn_implementation=attn,
        estimate=estimate.as_dict() if spec.estimated else {},
        hardware=hardware_description(str(device)),
        matmul=matmul_mode(built.model),
    )
    del built
    gc.collect()
    return result


def measure_isolated(spec: ProfileSpec, *, timeout: float | None = None) -> ProfileResult:
    """Run :func:`measure` in a fresh Python process and read its result back."""
    spec.check()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="zotune-profile-") as folder:
        out = Path(folder) / "result.json"
        command = [
            sys.executable,
            "-m",
            "zotune.profiling.worker",
            "--spec",
            json.dumps(asdict(spec)),
            "--out",
            str(out),
        ]
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0 or not out.is_file():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {done.returncode}"
            raise RuntimeError(f"profile worker failed for {spec.label()}: {reason}")
        return ProfileResult.from_dict(json.loads(out.read_text()))


def run_profile(
    specs: Sequence[ProfileSpec],
    *,
    isolate: bool = True,
    repeats: int = 1,
    log: Callable[[str], None] | None = None,
    failures: list[tuple[ProfileSpec, str]] | None = None,
) -> list[ProfileResult]:
    """Measure every spec, in order, each in its own process when ``isolate``; with
    ``repeats`` N, N rounds over the specs, each spec's result the median process of its
    rounds (:func:`median_process`).

    ``failures``: a list to collect ``(spec, first line of the error)`` of each measurement
    that raises, the others going on (a half-precision optimizer that diverges costs its
    row, not the table); without it the first error ends the run. A spec that failed in
    one round is not measured again.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for spec in specs:
        spec.check()
    measured: list[list[ProfileResult]] = [[] for _ in specs]
    failed: set[int] = set()
    total = len(specs) * repeats
    for round_ in range(repeats):
        for i, spec in enumerate(specs):
            if i in failed:
                continue
            count = round_ * len(specs) + i + 1
            start = time.perf_counter()
            try:
                result = measure_isolated(spec) if isolate else measure(spec)
            except Exception as error:
                if failures is None:
                    raise
                failures.append((spec, first_line(error)))
                failed.add(i)
                if log is not None:
                    log(f"[{count}/{total}] {spec.label()}: FAILED: {failures[-1][1]}")
                release_device_memory(spec.device)
                continue
            measured[i].append(result)
            if log is not None:
                log(
                    f"[{count}/{total}] {spec.label()}: {result.seconds_per_step:.3f} s/step, "
                    f"{result.memory_bytes / MB:.0f} MB ({time.perf_counter() - start:.0f}s)"
                )
    return [median_process(runs) for i, runs in enumerate(measured)
            if runs and i not in failed]


def median_process(results: Sequence[ProfileResult]) -> ProfileResult:
    """The result of the process with the median s/step (the lower middle for an even count),
    carrying every process's s/step in ``process_seconds``; one result is returned as is."""
    if len(results) == 1:
        return results[0]
    ordered = sorted(results, key=lambda r: r.seconds_per_step)
    chosen = ordered[(len(ordered) - 1) // 2]
    return dataclasses.replace(chosen, process_seconds=[r.seconds_per_step for r in results])


def first_line(error: BaseException) -> str:
    """``"ValueError: non-finite loss …"``: what a failed measurement reports."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def release_device_memory(device: str) -> None:
    """Free what a failed in-process measurement left (its frames are gone by now)."""
    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
