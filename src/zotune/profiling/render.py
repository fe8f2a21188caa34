"""Tables and Markdown pages of profile results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..utils.measure import MB
from ..utils.tables import table
from .memory_model import BREAKDOWN_LEGEND, breakdown
from .spec import ProfileResult


def mb(value: float | int | None) -> str:
    """Bytes as the tables print them in MB; "–" for a figure not measured or estimated."""
    if value is None:
        return "–"
    return f"{value / MB:,.0f}" if value >= 100 * MB else f"{value / MB:.1f}"


def estimate_breakdown(estimate: dict[str, Any], unmodelled: str = "optimizer options") -> str:
    """``"W 478 + G 0 + S 0 + Z 16.0 + A 61.2"`` in MB, or why there is no estimate."""
    if not estimate:
        return f"not modelled ({unmodelled})"
    return breakdown(estimate, mb)


def seconds_text(result: ProfileResult) -> str:
    """s/step, with the range over the processes that measured it where there were several."""
    spread = result.process_seconds
    if len(spread) < 2:
        return f"{result.seconds_per_step:.3f}"
    return f"{result.seconds_per_step:.3f} ({min(spread):.2f}–{max(spread):.2f})"


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
                r.spec.shape_label(),
                seconds_text(r),
                str(r.forward_passes_per_step),
                f"{r.trainable_parameters:,}",
                mb(r.memory_bytes),
                mb(est.get("total")),
                mb(r.above_weights_bytes),
                mb(est.get("above_weights")),
                estimate_breakdown(est, "CPU offload" if r.spec.offload else "optimizer options"),
            )
        )
    return table(header, rows, markdown=markdown)


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
                "–" if r is None else f"{mb(r.memory_bytes)} ({mb(r.estimate.get('total'))})"
            )
        batch = next(r.spec.batch_size for r in results if r.spec.seq_len == t)
        rows.append((str(t), f"{batch}×{t}", *cells))
    return table(header, rows, markdown=markdown)


def hardware_of(results: Sequence[ProfileResult]) -> str:
    """The machine the results were measured on, as their measuring process saw it.

    Results read from a file written before results recorded it fall back to this machine.
    """
    from ..utils.environment import hardware_description

    recorded = next((r.hardware for r in results if r.hardware), None)
    return recorded or hardware_description(results[0].spec.device if results else None)


def describe_setup(results: Sequence[ProfileResult]) -> str:
    """One line naming the model, dtype, device, machine and measurement method."""
    if not results:
        return "no measurements"
    spec = results[0].spec
    isolated = all(r.isolated for r in results)
    where = "one fresh process per measurement" if isolated else "in one process"
    processes = max(len(r.process_seconds) for r in results)
    if processes > 1:
        where = (f"each row measured in {processes} fresh processes, round by round over the "
                 "rows, and shown from the process with the median s/step")
    what = "memory allocated by torch" if spec.device.startswith("cuda") else "resident set"
    threads = "" if spec.threads is None else f", {spec.threads} torch thread(s)"
    precisions = list(dict.fromkeys(r.spec.precision() for r in results))
    precision = precisions[0] if len(precisions) == 1 else "/".join(precisions) + " (per row)"
    return (
        f"{spec.model}, {precision}{_auto_products(results)}, {spec.device} "
        f"({hardware_of(results)}{threads}); "
        f"median of {spec.steps} steps after {spec.warmup} warm-up; memory = weights + "
        f"(peak {what} over the timed steps − {what} before the first step), {where}"
    )


def _auto_products(results: Sequence[ProfileResult]) -> str:
    """What ``model.matmul auto`` resolved to in the half-precision rows' processes."""
    chosen = [r.matmul for r in results
              if r.spec.matmul == "auto" and r.spec.dtype in ("bfloat16", "float16")]
    if not chosen or None in chosen:
        return ""
    counts = {mode: chosen.count(mode) for mode in dict.fromkeys(chosen)}
    if len(counts) == 1:
        return f" (model.matmul auto: {chosen[0]} products)"
    said = ", ".join(f"{mode} in {count}" for mode, count in counts.items())
    return f" (model.matmul auto chose per process: {said} of {len(chosen)} rows)"


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
        f"Estimate breakdown: {BREAKDOWN_LEGEND}; see `zotune.profiling.memory_model`.",
    ]
    if any(r.spec.offload for r in results):
        parts += [
            "",
            "[cpu-offload] rows: the weights (counted in memory) are held in CPU memory and "
            "copied to the device module by module for each forward; above weights is what "
            "the device holds at the step's peak (that copy, activations, direction scratch).",
        ]
    return "\n".join(parts) + "\n"
