"""The report's figures: training-loss curves and accuracy against peak memory.

matplotlib comes through :mod:`zotune.figures` (an optional dependency).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..figures import MARKERS, pyplot, save_figure, series_colors
from .section import Section
from .store import CURVE_FILE, RUNS_DIR

# Curves are smoothed over about this fraction of their length: ZO losses are noisy.
SMOOTHING_FRACTION = 0.04


def read_losses(curve_path: Path) -> dict[int, float]:
    """Step → training loss from a recorded run's curve (skipped steps have none)."""
    losses: dict[int, float] = {}
    if not curve_path.is_file():
        return losses
    for line in curve_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a killed run was writing
        if "loss" in record:
            losses[record["step"]] = record["loss"]
    return losses


def mean_curve(runs: list[dict[int, float]]) -> tuple[list[int], list[float]]:
    """The mean over seeds at each step that every seed logged, then a moving average."""
    if not runs:
        return [], []
    steps = sorted(set.intersection(*(set(run) for run in runs)))
    values = [statistics.fmean(run[step] for run in runs) for step in steps]
    window = max(1, round(len(values) * SMOOTHING_FRACTION))
    smoothed = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        smoothed.append(sum(chunk) / len(chunk))
    return steps, smoothed


def plot_loss_curves(section: Section, results_dir: Path, path: Path) -> bool:
    """One panel per scheme, one line per optimizer (its selected runs); False if no data."""
    panels = []
    for scheme in section.schemes:
        lines = []
        for optimizer in section.optimizers:
            item = section.selection(optimizer, scheme)
            if item is None or item.chosen is None:
                continue
            runs = [
                read_losses(results_dir / RUNS_DIR / r.id / CURVE_FILE)
                for r in item.chosen.done
            ]
            steps, losses = mean_curve([run for run in runs if run])
            if steps:
                lines.append((f"{optimizer} ({item.chosen.label()})", steps, losses))
        panels.append((scheme, lines))
    if not any(lines for _, lines in panels):
        return False
    plt = pyplot()
    figure, axes = plt.subplots(
        1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False, sharey=True
    )
    for axis, (scheme, lines) in zip(axes[0], panels, strict=True):
        for label, steps, losses in lines:
            axis.plot(steps, losses, label=label, linewidth=1.2)
        axis.set_title(scheme)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if lines:
            axis.legend(fontsize=6)
    axes[0][0].set_ylabel("training loss (smoothed)")
    figure.suptitle(f"{section.task} on {section.model}: training loss of the selected runs")
    figure.tight_layout()
    save_figure(figure, path)
    return True


def plot_accuracy_vs_memory(section: Section, path: Path) -> bool:
    """Test accuracy against peak memory: a point per cell; False if no cell has both."""
    points = []
    for item in section.selections:
        chosen = item.chosen
        if chosen is None:
            continue
        memory = chosen.mean_metric("peak_memory_mb")
        if memory is None:
            continue
        points.append((item.cell.optimizer, item.cell.scheme, memory, chosen.test_mean * 100))
    if not points:
        return False
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    colors = series_colors()
    optimizers, schemes = section.optimizers, section.schemes
    for optimizer, scheme, memory, accuracy in points:
        axis.scatter(
            memory,
            accuracy,
            color=colors[optimizers.index(optimizer) % len(colors)],
            marker=MARKERS[schemes.index(scheme) % len(MARKERS)],
            s=40,
        )
    for i, optimizer in enumerate(optimizers):
        axis.scatter([], [], color=colors[i % len(colors)], marker="o", label=optimizer)
    for i, scheme in enumerate(schemes):
        axis.scatter([], [], color="gray", marker=MARKERS[i % len(MARKERS)], label=scheme)
    axis.set_xlabel("peak memory (MB)")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"{section.task} on {section.model}: accuracy vs memory")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    save_figure(figure, path)
    return True
