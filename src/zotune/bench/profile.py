"""``zotune profile``: peak memory and time per step of each optimizer (the paper's tables).

A *measurement* is one method (an optimizer key, ``inference`` for a no-grad forward, or
``mezo-ref`` for the MeZO-style reference step) on one model, tuning scheme and synthetic
batch of exactly B × T tokens, scored at the last position only (``logits_to_keep=1``, as
:class:`zotune.scoring.Scorer` does for a single-token candidate). It reports:

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
* ``seconds_per_step``: the median of ``steps`` timed steps, after one more untimed step.

Each memory figure is printed beside the analytic estimate
(:func:`zotune.measure.estimate_memory`) and its breakdown.

On CPU the memory step runs with glibc told to unmap large freed blocks
(:func:`zotune.measure.track_allocations_in_rss`), so the resident set follows the live
tensors. A long-lived process still carries what earlier work left resident, so by default
every measurement runs in its own subprocess (``python -m zotune.bench.profile --worker``),
whose timed steps run with heap reuse restored (:func:`zotune.measure.reuse_freed_memory`):
fresh pages for every activation slow a forward by ≈ 5–10%. In-process measurements
(``isolate=False``) keep the pages-per-tensor allocator throughout, so that the next
measurement's memory reading stays honest, and their times carry that cost.

Sequence-length sweep: the same measurement for several T (ZO-SGD, FO-SGD, FO-Adam by
default) shows ZO's memory staying near inference while FO's grows with the activations it
keeps for backprop.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..files import atomic_write_text

# Optimizer options the analytic estimate accounts for; with any other (hybrid_layers,
# block_level, sparsity, ...) a row shows its measured memory only.
ESTIMATED_OPTIONS = {"eps", "q", "probe", "distribution", "weight_decay", "seed"}

MB = 2**20
EXTRA_METHODS = ("inference", "mezo-ref")
DEFAULT_OPTIMIZERS = (
    "inference",
    "zo-sgd",
    "zo-sgd-mmt",
    "zo-sgd-cons",
    "zo-sgd-sign",
    "zo-adam",
    "forward-grad",
    "fo-sgd",
    "fo-adam",
)
SWEEP_OPTIMIZERS = ("zo-sgd", "fo-sgd", "fo-adam")
DEFAULT_MODEL = "random:opt-125m"


def all_methods() -> tuple[str, ...]:
    from ..optim import OPTIMIZERS

    return (*OPTIMIZERS, *EXTRA_METHODS)


@dataclass(frozen=True)
class ProfileSpec:
    """One measurement. ``model`` is a hub id, a local folder, ``smollm2-135m`` or
    ``random:<shape>`` (see :data:`zotune.models.SHAPES`)."""

    method: str = "zo-sgd"
    model: str = DEFAULT_MODEL
    scheme: str = "full"
    batch_size: int = 16
    seq_len: int = 64
    dtype: str = "float32"
    autocast: str | None = None  # half-precision compute over fp32 weights (mixed_precision)
    device: str = "cpu"
    steps: int = 3
    warmup: int = 1
    lr: float = 1e-6
    seed: int = 0
    attn_implementation: str | None = None
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    # Optimizer options beyond lr (``{"hybrid_layers": 10}``, ``{"q": 4}``).
    options: dict[str, Any] = field(default_factory=dict)

    def method_label(self) -> str:
        """``zo-sgd``, or ``zo-sgd hybrid_layers=10`` with options, ``zo-sgd [bfloat16]`` in
        another precision than fp32."""
        options = " ".join(f"{k}={v}" for k, v in self.options.items())
        label = f"{self.method} {options}" if options else self.method
        return label if self.precision() == "float32" else f"{label} [{self.precision()}]"

    def precision(self) -> str:
        """``float32``, ``bfloat16`` (the weights' dtype) or ``autocast-bfloat16``."""
        return self.dtype if self.autocast is None else f"autocast-{self.autocast}"

    def label(self) -> str:
        return (
            f"{self.method_label()} {self.scheme} {self.model} "
            f"B={self.batch_size} T={self.seq_len}"
        )

    @property
    def estimated(self) -> bool:
        """Whether the analytic estimate models this step (it does not model every option)."""
        return set(self.options) <= ESTIMATED_OPTIONS

    def check(self) -> None:
        from ..tuning import SCHEMES

        if self.method not in all_methods():
            raise ValueError(
                f"unknown method {self.method!r} (choose from {', '.join(all_methods())})"
            )
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown tuning scheme {self.scheme!r} (choose from {SCHEMES})")
        for name in ("batch_size", "seq_len", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"invalid {name}: {value!r} (must be an int >= 1)")
        from ..mixed_precision import check_autocast

        check_autocast(self.autocast, self.dtype)
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"invalid threads: {self.threads!r} (must be an int >= 1)")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"invalid warmup: {self.warmup!r} (must be an int >= 0)")
        if self.options:
            from ..optim import OPTIMIZERS

            if self.method not in OPTIMIZERS:
                raise ValueError(f"--option applies to optimizers, not to {self.method}")
            accepted = inspect.signature(OPTIMIZERS[self.method].__init__).parameters
            for key in self.options:
                if key not in accepted or key in ("self", "params", "lr"):
                    raise ValueError(f"--option {key}: not an option of {self.method}")


@dataclass
class ProfileResult:
    """What one measurement found; bytes are as :mod:`zotune.measure` defines them."""

    spec: ProfileSpec
    seconds_per_step: float
    step_seconds: list[float]
    weights_bytes: int
    loaded_bytes: int
    peak_bytes: int
    peak_reset: bool
    isolated: bool
    trainable_parameters: int
    total_parameters: int
    forward_passes_per_step: int
    attn_implementation: str | None
    estimate: dict[str, Any] = field(default_factory=dict)
    hardware: str | None = None  # where it ran, read in the measuring process

    @property
    def above_weights_bytes(self) -> int:
        """Peak during the timed steps minus the memory once the model was loaded and warm."""
        return max(0, self.peak_bytes - self.loaded_bytes)

    @property
    def memory_bytes(self) -> int:
        """Weights (counted) plus what the step adds on top of them (measured)."""
        return self.weights_bytes + self.above_weights_bytes

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["memory_bytes"] = self.memory_bytes
        data["above_weights_bytes"] = self.above_weights_bytes
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileResult:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        spec_names = {f.name for f in dataclasses.fields(ProfileSpec)}
        values["spec"] = ProfileSpec(**{k: v for k, v in data["spec"].items() if k in spec_names})
        return cls(**values)


# Building a step ---------------------------------------------------------------------------


def _attn_for(method: str, attn: str | None) -> str | None:
    # Forward-mode AD has no rule for fused SDPA attention (see zotune.train._build_model).
    if method == "forward-grad" and attn in (None, "sdpa"):
        return "eager"
    return attn


def load_for_profile(
    model: str, *, dtype: str, device: str, attn_implementation: str | None, seed: int
):
    """``random:<shape>`` → :func:`zotune.models.random_model`; else :func:`load_model`."""
    from ..models import load_model, random_model

    if model.startswith("random:"):
        return random_model(
            model.removeprefix("random:"),
            dtype=dtype,
            attn_implementation=attn_implementation,
            seed=seed,
            device=device,
        )
    return load_model(model, dtype=dtype, device=device, attn_implementation=attn_implementation)


def _base(model):
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def keeps_logits(model) -> bool:
    """Whether the model can compute logits at the last positions only (causal HF models)."""
    return "logits_to_keep" in inspect.signature(_base(model).forward).parameters


def synthetic_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int, device):
    """Token ids [B, T] (no padding), an all-ones mask and one target per row, seeded.

    Ids avoid the first five (the special tokens of zotune's byte tokenizer).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    low = 5 if vocab_size > 5 else 0
    ids = torch.randint(low, vocab_size, (batch_size, seq_len + 1), generator=generator)
    return (
        ids[:, :-1].contiguous().to(device),
        torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
        ids[:, -1].contiguous().to(device),
    )


def last_position_loss(model, batch, keep: bool) -> Callable[[], Any]:
    """The closure: cross-entropy of the last position's next-token logits.

    With ``keep`` the model computes logits for that position only (``logits_to_keep=1``),
    the same saving the scorer makes; otherwise (masked LMs) the full logits are computed
    and the last column is read. ``use_cache=False``: a causal LM otherwise builds a
    key/value cache of every layer that lives to the end of the forward (2·L·h values per
    token, ≈ 2/3 of the no-grad working set of OPT-125m), which training never reads.
    """
    import torch.nn.functional as F

    input_ids, attention_mask, targets = batch
    extra = {"logits_to_keep": 1, "use_cache": False} if keep else {}

    def closure():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        return F.cross_entropy(logits[:, -1].float(), targets)

    return closure


@dataclass
class BuiltStep:
    """``step()`` makes one step; ``forward()`` one no-grad forward of the same loss."""

    model: Any
    step: Callable[[], Any]
    forward: Callable[[], Any]
    forward_passes: int
    optimizer: Any
    keep: bool


def build_model(spec: ProfileSpec):
    """The spec's model with its tuning scheme applied, in eval mode."""
    import torch

    from ..tuning import apply_tuning

    attn = _attn_for(spec.method, spec.attn_implementation)
    loaded = load_for_profile(
        spec.model, dtype=spec.dtype, device=spec.device, attn_implementation=attn, seed=spec.seed
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)  # adapter initialisation
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = apply_tuning(loaded.model, spec.scheme, tokenizer=loaded.tokenizer)
    model.eval()
    return model


def build_step(spec: ProfileSpec, model=None) -> BuiltStep:
    """A zero-argument callable that makes one step of ``spec.method`` on its batch."""
    import torch

    from ..mixed_precision import under_autocast
    from ..optim import create_optimizer
    from .mezo_reference import MezoReferenceStep

    model = build_model(spec) if model is None else model
    device = next(model.parameters()).device
    batch = synthetic_batch(
        _base(model).config.vocab_size, spec.batch_size, spec.seq_len, spec.seed, device
    )
    keep = keeps_logits(model)
    loss = under_autocast(last_position_loss(model, batch, keep), spec.autocast, device)
    forward = torch.no_grad()(loss)
    if spec.method == "inference":
        return BuiltStep(model, forward, forward, 1, None, keep)
    if spec.method == "mezo-ref":
        reference = MezoReferenceStep(model.named_parameters(), lr=spec.lr, seed=spec.seed)
        return BuiltStep(model, lambda: reference.step(loss), forward, 2, reference, keep)
    optimizer = create_optimizer(spec.method, model, lr=spec.lr, **spec.options)
    passes = getattr(optimizer, "forward_passes_per_step", 1)
    return BuiltStep(model, lambda: optimizer.step(loss), forward, passes, optimizer, keep)


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

    from ..measure import (
        current_memory_bytes,
        estimate_memory,
        release_freed_memory,
        reuse_freed_memory,
        time_calls,
        track_allocations_in_rss,
        track_peak,
    )
    from ..models import resolve_device
    from ..tuning import count_parameters
    from .environment import hardware_description

    device = resolve_device(spec.device)
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    pinned = device.type == "cpu" and track_allocations_in_rss()
    built = build_step(spec, model)
    trainable, total = count_parameters(built.model)
    estimate = estimate_memory(
        built.model,
        spec.method,
        batch_size=spec.batch_size,
        seq_len=spec.seq_len,
        device=device,
        logits_kept=1 if built.keep else spec.seq_len,
        distribution=spec.options.get("distribution", "auto"),
    )
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
    attn = getattr(_base(built.model).config, "_attn_implementation", None)
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
            "zotune.bench.profile",
            "--worker",
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
    log: Callable[[str], None] | None = None,
) -> list[ProfileResult]:
    """Measure every spec, in order, each in its own process when ``isolate``."""
    for spec in specs:
        spec.check()
    results = []
    for i, spec in enumerate(specs, 1):
        start = time.perf_counter()
        result = measure_isolated(spec) if isolate else measure(spec)
        results.append(result)
        if log is not None:
            log(
                f"[{i}/{len(specs)}] {spec.label()}: {result.seconds_per_step:.3f} s/step, "
                f"{result.memory_bytes / MB:.0f} MB ({time.perf_counter() - start:.0f}s)"
            )
    return results


def grid(
    methods: Sequence[str],
    *,
    schemes: Sequence[str] = ("full",),
    seq_lens: Sequence[int] = (64,),
    options: Sequence[dict[str, Any]] = ({},),
    **common: Any,
) -> list[ProfileSpec]:
    """Specs for every (seq_len, scheme, method, options), in that nesting order; ``options``
    apply to the optimizers, so ``inference`` and ``mezo-ref`` get one row each."""
    from ..optim import OPTIMIZERS

    return [
        ProfileSpec(method=method, scheme=scheme, seq_len=seq_len, options=dict(o), **common)
        for seq_len in seq_lens
        for scheme in schemes
        for method in methods
        for o in (options if method in OPTIMIZERS else ({},))
    ]


# Rendering ---------------------------------------------------------------------------------


def _mb(value: float | int | None) -> str:
    """MB as the tables print them; "–" for a figure that was not measured or estimated."""
    if value is None:
        return "–"
    return f"{value / MB:,.0f}" if value >= 100 * MB else f"{value / MB:.1f}"


def _estimate_breakdown(estimate: dict[str, Any]) -> str:
    parts = (
        ("W", "weights"),
        ("G", "gradients"),
        ("S", "optimizer_state"),
        ("Z", "scratch"),
        ("A", "activations"),
    )
    if not estimate:
        return "not modelled (optimizer options)"
    return " + ".join(f"{k} {_mb(estimate[name])}" for k, name in parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def profile_table(results: Sequence[ProfileResult], *, markdown: bool = False) -> str:
    """One row per measurement: time per step, measured memory, estimate and its breakdown."""
    header = (
        "method",
        "scheme",
        "B×T",
        "s/step",
        "fwd/step",
        "trainable",
        "memory MB",
        "est. MB",
        "above weights MB",
        "est. above MB",
        "estimate breakdown (MB)",
    )
    rows = []
    for r in results:
        est = r.estimate
        rows.append(
            (
                r.spec.method_label(),
                r.spec.scheme,
                f"{r.spec.batch_size}×{r.spec.seq_len}",
                f"{r.seconds_per_step:.3f}",
                str(r.forward_passes_per_step),
                f"{r.trainable_parameters:,}",
                _mb(r.memory_bytes),
                _mb(est.get("total")),
                _mb(r.above_weights_bytes),
                _mb(est.get("above_weights")),
                _estimate_breakdown(est),
            )
        )
    return _table(header, rows, markdown)


def sweep_table(results: Sequence[ProfileResult], *, markdown: bool = False) -> str:
    """Memory against sequence length: one row per T, one column per method ("measured (est.)")."""
    methods = list(dict.fromkeys(f"{r.spec.method_label()}/{r.spec.scheme}" for r in results))
    by_key = {(r.spec.seq_len, f"{r.spec.method_label()}/{r.spec.scheme}"): r for r in results}
    seq_lens = sorted({r.spec.seq_len for r in results})
    header = ("T", "B×T", *(f"{m} MB (est.)" for m in methods))
    rows = []
    for t in seq_lens:
        cells = []
        for m in methods:
            r = by_key.get((t, m))
            cells.append(
                "–" if r is None else f"{_mb(r.memory_bytes)} ({_mb(r.estimate.get('total'))})"
            )
        batch = next(r.spec.batch_size for r in results if r.spec.seq_len == t)
        rows.append((str(t), f"{batch}×{t}", *cells))
    return _table(header, rows, markdown)


def hardware_of(results: Sequence[ProfileResult]) -> str:
    """The machine the results were measured on, as their measuring process saw it.

    Results read from a file written before results recorded it fall back to this machine.
    """
    from .environment import hardware_description

    recorded = next((r.hardware for r in results if r.hardware), None)
    return recorded or hardware_description(results[0].spec.device if results else None)


def describe_setup(results: Sequence[ProfileResult]) -> str:
    """One line naming the model, dtype, device, machine and measurement method."""
    if not results:
        return "no measurements"
    spec = results[0].spec
    isolated = all(r.isolated for r in results)
    where = "one fresh process per measurement" if isolated else "in one process"
    what = "memory allocated by torch" if spec.device.startswith("cuda") else "resident set"
    threads = "" if spec.threads is None else f", {spec.threads} torch thread(s)"
    precisions = list(dict.fromkeys(r.spec.precision() for r in results))
    precision = precisions[0] if len(precisions) == 1 else "/".join(precisions) + " (per row)"
    return (
        f"{spec.model}, {precision}, {spec.device} ({hardware_of(results)}{threads}); "
        f"median of {spec.steps} steps after {spec.warmup} warm-up; memory = weights + "
        f"(peak {what} over the timed steps − {what} before the first step), {where}"
    )


def render_markdown(
    results: Sequence[ProfileResult],
    *,
    title: str = "Memory and time",
    command: str | None = None,
    note: str | None = None,
    setup: str | None = None,
    plot: str | None = None,
) -> str:
    """A Markdown page for docs/results/: the command that reproduces it, the setup line
    (``setup``, by default :func:`describe_setup`), an optional ``note``, the profile table,
    and the sweep table (with the ``plot`` image, a path relative to the page) when the
    results span several sequence lengths."""
    parts = [f"# {title}", ""]
    if command:
        parts += [f"reproduce: `{command}`", ""]
    parts += [setup or describe_setup(results), ""]
    if note:
        parts += [note, ""]
    parts += [profile_table(results, markdown=True)]
    if len({r.spec.seq_len for r in results}) > 1:
        parts += ["", "## Memory against sequence length", "", sweep_table(results, markdown=True)]
        if plot:
            parts += ["", f"![memory against sequence length]({plot})"]
    parts += [
        "",
        "Estimate breakdown: W weights, G gradients, S optimizer state, Z direction scratch "
        "(noise table, chunk or tangents), A activations (kept for backprop in FO, one layer's "
        "working set otherwise); see `zotune.measure`.",
    ]
    return "\n".join(parts) + "\n"


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    atomic_write_text(Path(path), json.dumps(payload, indent=2) + "\n")


def profile_payload(
    results: Sequence[ProfileResult], *, command: str | None = None, note: str | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {"kind": "profile", "setup": describe_setup(results)}
    if command:
        payload["command"] = command
    if note:
        payload["note"] = note
    payload["results"] = [r.as_dict() for r in results]
    return payload


def load_payload(path: str | os.PathLike) -> dict[str, Any]:
    """A ``zotune profile --json`` file: ``setup``, ``results`` and, if recorded, ``command``
    and ``note``."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind != "profile":
        raise ValueError(f"{path}: not a zotune profile result (kind {kind!r})")
    return data


def load_results(path: str | os.PathLike) -> list[ProfileResult]:
    """Results from a ``zotune profile --json`` file."""
    return [ProfileResult.from_dict(item) for item in load_payload(path)["results"]]


# The worker process ------------------------------------------------------------------------


def _worker(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zotune.bench.profile")
    parser.add_argument("--worker", required=True, help="a ProfileSpec as JSON")
    parser.add_argument("--out", required=True, help="where to write the result JSON")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    spec = ProfileSpec(**json.loads(args.worker))
    result = measure(spec, isolated=True)
    atomic_write_text(Path(args.out), json.dumps(result.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
