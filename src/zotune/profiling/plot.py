"""The profile's figure: measured memory against sequence length (needs matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..utils.figures import MARKERS, pyplot, save_figure, series_colors
from ..utils.measure import MB
from .render import hardware_of
from .spec import ProfileResult


def plot_memory_vs_seq_len(results: Sequence[ProfileResult], path: Path) -> bool:
    """Measured memory (weights + what a step adds, MB) against sequence length, one line per
    method (and scheme, when there are several), with the analytic estimate dotted beside it.

    The paper's figure: ZO-SGD stays near inference while FO's activations grow with T.
    False (nothing written) unless the results span at least two sequence lengths.
    """
    if len({r.spec.seq_len for r in results}) < 2:
        return False
    several_schemes = len({r.spec.scheme for r in results}) > 1
    lines: dict[str, list[tuple[int, float, float]]] = {}
    for r in results:
        method = r.spec.method_label()
        label = f"{method} ({r.spec.scheme})" if several_schemes else method
        estimate = r.estimate.get("total")
        lines.setdefault(label, []).append(
            (r.spec.seq_len, r.memory_bytes / MB, estimate / MB if estimate else float("nan"))
        )
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    colors = series_colors()
    for i, (label, points) in enumerate(lines.items()):
        points.sort()
        seq_lens = [t for t, _, _ in points]
        color = colors[i % len(colors)]
        axis.plot(
            seq_lens,
            [m for _, m, _ in points],
            color=color,
            marker=MARKERS[i % len(MARKERS)],
            linestyle="--" if label.startswith("inference") else "-",
            label=label,
        )
        axis.plot(seq_lens, [e for _, _, e in points], color=color, linestyle=":", alpha=0.6)
    axis.plot([], [], color="gray", linestyle=":", label="analytic estimate")
    seq_lens = sorted({r.spec.seq_len for r in results})
    axis.set_xscale("log", base=2)
    axis.set_xticks(seq_lens, [str(t) for t in seq_lens])
    axis.minorticks_off()
    axis.set_ylim(bottom=0)
    axis.set_xlabel("sequence length T (tokens)")
    axis.set_ylabel("memory (MB): weights + step peak")
    spec = results[0].spec
    batches = "/".join(str(b) for b in sorted({r.spec.batch_size for r in results}))
    dtypes = "/".join(sorted({r.spec.dtype for r in results}))
    axis.set_title(
        f"Memory vs sequence length: {spec.model}, B={batches}, {dtypes}\n"
        f"{spec.device}: {hardware_of(results)}",
        fontsize=9,
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)
    return True
