"""The report's figures: per cell, the training loss and the validation accuracy of every
setting tried (mean over seeds, with the seeds' range as a band), and test accuracy against
peak memory with both measurements' spread.

Axes are drawn so as not to invent differences: accuracy curves share one scale per figure
spanning at least :data:`MIN_ACCURACY_SPAN` points (a few validation examples' wobble is not
stretched into a climb), accuracy against memory starts both axes at zero, and each legend
entry says how many seeds its line and band hold (a single seed has no band, and the title
does not promise one).

matplotlib comes through :mod:`zotune.utils.figures` (an optional dependency).
"""

from __future__ import annotations

import json
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.figures import MARKERS, pyplot, save_figure, series_colors
from .section import Section
from .selection import CellSelection
from .store import CURVE_FILE, RUNS_DIR

# Curves are smoothed over about this fraction of their length: ZO losses are noisy.
SMOOTHING_FRACTION = 0.04
# Titles are set at this size (points) and wrap to the figure's width, so that none runs
# past its edge; a character is about 0.6 of the size wide.
TITLE_POINTS = 9
MIN_WIDTH = 6.0  # inches: a one-panel figure still has room for its title
PANEL_SIZE = (3.2, 2.6)  # inches per cell panel
# Accuracy axes span at least this many percentage points: on the validation sets of a few
# hundred examples the benchmark uses, one example is 0.25 to 0.5 points and a 95% interval
# is about ±5, so a narrower axis draws noise as a trend.
MIN_ACCURACY_SPAN = 20.0
# A row's loss axis stops at its typical loss (the median of its lines' median losses) plus
# this many times its size: one diverging setting (cpu's zo-sgd/full at lr 1e-4 reached
# 3.5e5) would otherwise flatten every other line of the row. A line cut off says so in its
# legend, with its peak.
LOSS_CEILING_MEDIANS = 4.0
LOSS, VALIDATION = "loss", "val_accuracy"
CURVE_LABELS = {LOSS: "training loss (smoothed)", VALIDATION: "validation accuracy (%)"}


def read_curve(curve_path: Path, key: str = LOSS) -> dict[int, float]:
    """Step → ``key`` (``loss`` or ``val_accuracy``) from a recorded run's curve (steps that
    logged none, skipped or between evaluations, are absent)."""
    values: dict[int, float] = {}
    if not curve_path.is_file():
        return values
    for line in curve_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a killed run was writing
        if isinstance(record, dict) and isinstance(record.get(key), (int, float)):
            values[record["step"]] = float(record[key])
    return values


def _smoothed(values: list[float], smooth: bool) -> list[float]:
    if not smooth:
        return values
    window = max(1, round(len(values) * SMOOTHING_FRACTION))
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


@dataclass
class Band:
    """A setting's curve over its seeds: the mean at each step every seed logged, and the
    lowest and highest seed there (each smoothed alike for losses)."""

    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    seeds: int


def seed_band(runs: list[dict[int, float]], smooth: bool = False) -> Band:
    """The mean and range over seeds at each step that every seed logged."""
    runs = [run for run in runs if run]
    if not runs:
        return Band([], [], [], [], 0)
    steps = sorted(set.intersection(*(set(run) for run in runs)))
    columns = [[run[step] for run in runs] for step in steps]
    return Band(
        steps,
        _smoothed([statistics.fmean(c) for c in columns], smooth),
        _smoothed([min(c) for c in columns], smooth),
        _smoothed([max(c) for c in columns], smooth),
        len(runs),
    )


@dataclass
class SettingCurve:
    label: str  # the setting's hyperparameters
    chosen: bool
    band: Band


def cell_curves(item: CellSelection, results_dir: Path, key: str) -> list[SettingCurve]:
    """Every finished setting of a cell, its seeds' curve of ``key`` as a band."""
    curves = []
    for candidate in item.candidates:
        runs = [read_curve(results_dir / RUNS_DIR / r.id / CURVE_FILE, key)
                for r in candidate.done]
        if key == VALIDATION:
            runs = [{step: value * 100 for step, value in run.items()} for run in runs]
        band = seed_band(runs, smooth=key == LOSS)
        if band.steps:
            curves.append(SettingCurve(candidate.label(), candidate is item.chosen, band))
    return curves


def _title(text: str, width_inches: float) -> str:
    """``text`` wrapped to lines that fit a figure ``width_inches`` wide, with a margin."""
    characters = int(0.9 * width_inches * 72 / (0.6 * TITLE_POINTS))
    return "\n".join(textwrap.wrap(text, characters))


def _title_height(title: str) -> float:
    """Inches a suptitle of these lines takes, with its margin."""
    return (title.count("\n") + 1) * TITLE_POINTS * 1.4 / 72 + 0.15


def _seeds(count: int) -> str:
    return f"{count} seed{'s' * (count != 1)}"


def _band_words(bands: list[Band]) -> str:
    """What the shading of these bands means, for a title: none where every line is one
    seed."""
    if all(band.seeds <= 1 for band in bands):
        return "one seed per line (no band)"
    return "mean over seeds, shaded: lowest to highest seed"


def accuracy_limits(values: list[float]) -> tuple[float, float]:
    """The y range of an accuracy axis (percent) holding ``values``: their span, widened
    about its middle to at least :data:`MIN_ACCURACY_SPAN` and kept within 0..100."""
    low, high = min(values), max(values)
    span = min(100.0, max(MIN_ACCURACY_SPAN, 1.1 * (high - low)))
    low = min(max((low + high - span) / 2, 0.0), 100.0 - span)
    return low, low + span


# Study cells (variants) are laid out this many to a row.
STUDY_COLUMNS = 3


def curve_panels(section: Section, results_dir: Path,
                 key: str) -> list[list[tuple[str, list[SettingCurve]]]]:
    """The panels of a section's curve figure, row by row: the main table's cells (optimizer
    rows, scheme columns; a row with no curve at all, a baseline's, left out), then the study
    cells, each titled by its cell."""
    rows = []
    for optimizer in section.optimizers:
        row = []
        for scheme in section.schemes:
            item = section.selection(optimizer, scheme)
            curves = cell_curves(item, results_dir, key) if item is not None else []
            row.append((f"{optimizer} / {scheme}", curves))
        if any(curves for _, curves in row):
            rows.append(row)
    studies = [(f"{item.cell.variant}: {item.cell.optimizer} / {item.cell.scheme}",
                cell_curves(item, results_dir, key)) for item in section.studies]
    studies = [panel for panel in studies if panel[1]]
    rows += [studies[i : i + STUDY_COLUMNS] for i in range(0, len(studies), STUDY_COLUMNS)]
    return rows


def loss_ceiling(bands: list[Band]) -> float | None:
    """The top of a row's loss axis when some line leaves the scale (see
    :data:`LOSS_CEILING_MEDIANS`), else None (matplotlib's own limits)."""
    levels = [statistics.median(band.mean) for band in bands if band.mean]
    if not levels:
        return None
    middle = statistics.median(levels)
    ceiling = middle + LOSS_CEILING_MEDIANS * abs(middle)
    return ceiling if max(v for band in bands for v in band.high) > ceiling else None


def curves_figure(section: Section, results_dir: Path, key: str) -> Any | None:
    """A panel per cell (:func:`curve_panels`), a line per setting tried (the chosen one
    thick), each with its seeds' range shaded; None if no run logged ``key``."""
    rows = curve_panels(section, results_dir, key)
    if not rows:
        return None
    columns = max(len(row) for row in rows)
    plt = pyplot()
    width = max(MIN_WIDTH, PANEL_SIZE[0] * columns)
    what = "training loss" if key == LOSS else "validation accuracy"
    bands = [curve.band for row in rows for _, curves in row for curve in curves]
    ceilings = [loss_ceiling([curve.band for _, curves in row for curve in curves])
                if key == LOSS else None for row in rows]
    scale = (f"one scale for every panel, at least {MIN_ACCURACY_SPAN:.0f} points"
             if key == VALIDATION else "one scale per row")
    if any(ceiling is not None for ceiling in ceilings):
        scale += "; a diverging line is cut off, its legend gives its peak"
    title = _title(
        f"{section.suite}: {section.task} on {section.model}: {what} of every setting tried "
        f"(thick: chosen on validation), {_band_words(bands)}; {scale}",
        width,
    )
    height = PANEL_SIZE[1] * len(rows) + _title_height(title)
    # Accuracy on one scale throughout, so that a 1-point wobble is drawn as small as it is;
    # losses differ in level between first-order and ZO rows, so each row has its own.
    figure, axes = plt.subplots(
        len(rows), columns, squeeze=False, figsize=(width, height),
        sharey=True if key == VALIDATION else "row", layout="constrained",
    )
    colors = series_colors()
    for r, (row, ceiling) in enumerate(zip(rows, ceilings, strict=True)):
        for column in range(columns):
            axis = axes[r][column]
            if column >= len(row):
                axis.set_visible(False)
                continue
            name, curves = row[column]
            axis.set_title(name, fontsize=8)
            axis.tick_params(labelsize=6)
            axis.grid(alpha=0.3)
            if column == 0:
                axis.set_ylabel(CURVE_LABELS[key], fontsize=7)
            axis.set_xlabel("step", fontsize=7)
            if not curves:
                axis.text(0.5, 0.5, "no curve", ha="center", va="center", fontsize=7,
                          transform=axis.transAxes)
                axis.set_xticks([])
                continue
            for i, curve in enumerate(curves):
                color = colors[i % len(colors)]
                band = curve.band
                peak = max(band.high)
                cut = f"; off scale, peaks at {peak:.3g}" if ceiling and peak > ceiling else ""
                axis.plot(band.steps, band.mean, color=color,
                          linewidth=1.8 if curve.chosen else 0.8,
                          marker="o" if len(band.steps) == 1 else None,
                          label=f"{curve.label} ({'chosen; ' * curve.chosen}"
                                f"{_seeds(band.seeds)}{cut})")
                if band.seeds > 1:
                    axis.fill_between(band.steps, band.low, band.high, color=color, alpha=0.2,
                                      linewidth=0)
            axis.legend(fontsize=5)
        if ceiling is not None:
            bottom = min(v for _, curves in row for curve in curves for v in curve.band.low)
            axes[r][0].set_ylim(bottom - 0.05 * (ceiling - bottom), ceiling)
    if key == VALIDATION:
        axes[0][0].set_ylim(*accuracy_limits(
            [v for band in bands for v in (*band.low, *band.high)]))
    figure.suptitle(title, fontsize=TITLE_POINTS)
    return figure


def plot_loss_curves(section: Section, results_dir: Path, path: Path) -> bool:
    """Training loss per cell and setting; False if no run logged a loss."""
    return _save(curves_figure(section, results_dir, LOSS), path)


def plot_validation_curves(section: Section, results_dir: Path, path: Path) -> bool:
    """Validation accuracy per cell and setting; False if no run logged one."""
    return _save(curves_figure(section, results_dir, VALIDATION), path)


def _save(figure: Any | None, path: Path) -> bool:
    if figure is None:
        return False
    save_figure(figure, path)
    return True


@dataclass
class MemoryPoint:
    optimizer: str
    scheme: str
    memory: float  # MB, mean over seeds
    memory_low: float
    memory_high: float
    accuracy: float  # %, mean over seeds
    accuracy_low: float  # the 95% test-set interval, or the mean where none was recorded
    accuracy_high: float


def memory_points(section: Section) -> list[MemoryPoint]:
    """A point per cell with a peak memory: its seeds' range of memory, and its accuracy's
    95% interval over the test examples."""
    points = []
    for item in section.selections:
        chosen = item.chosen
        if chosen is None or chosen.mean_metric("peak_memory_mb") is None:
            continue
        memory = [r.metrics["peak_memory_mb"] for r in chosen.done
                  if r.metrics.get("peak_memory_mb") is not None]
        accuracy = chosen.test_mean * 100
        interval = chosen.test_interval
        low, high = ((interval[0] * 100, interval[1] * 100) if interval
                     else (accuracy, accuracy))
        points.append(MemoryPoint(item.cell.optimizer, item.cell.scheme,
                                  statistics.fmean(memory), min(memory), max(memory),
                                  accuracy, low, high))
    return points


def accuracy_vs_memory_figure(section: Section) -> Any | None:
    """Test accuracy against peak memory, both axes from zero, so that a gap is drawn to
    scale: a few MB between cells of a 600 MB process is not made to fill the plot. Bars:
    the accuracy's 95% test-set interval and the lowest to highest seed's memory."""
    points = memory_points(section)
    if not points:
        return None
    plt = pyplot()
    width = 6.5
    figure, axis = plt.subplots(figsize=(width, 4.8))
    colors = series_colors()
    optimizers, schemes = section.optimizers, section.schemes
    for p in points:
        axis.errorbar(
            p.memory, p.accuracy,
            xerr=[[p.memory - p.memory_low], [p.memory_high - p.memory]],
            yerr=[[p.accuracy - p.accuracy_low], [p.accuracy_high - p.accuracy]],
            color=colors[optimizers.index(p.optimizer) % len(colors)],
            marker=MARKERS[schemes.index(p.scheme) % len(MARKERS)],
            markersize=6, linewidth=0.8, capsize=2,
        )
    for i, optimizer in enumerate(optimizers):
        axis.scatter([], [], color=colors[i % len(colors)], marker="o", label=optimizer)
    for i, scheme in enumerate(schemes):
        axis.scatter([], [], color="black", marker=MARKERS[i % len(MARKERS)], label=scheme)
    top_memory = max(p.memory_high for p in points)
    axis.set_xlim(0, top_memory * 1.1 if top_memory > 0 else 1)
    axis.set_ylim(0, 100)
    axis.set_xlabel("peak memory (MB; bar: lowest to highest seed)")
    axis.set_ylabel("test accuracy (%; bar: 95% interval)")
    spread = max(p.memory for p in points) - min(p.memory for p in points)
    axis.set_title(_title(
        f"{section.suite}: {section.task} on {section.model}: accuracy vs peak memory "
        f"(cells {spread:.0f} MB apart at most; both axes from 0)",
        width,
    ), fontsize=TITLE_POINTS)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2, loc="lower right")
    figure.tight_layout()
    return figure


def plot_accuracy_vs_memory(section: Section, path: Path) -> bool:
    """Test accuracy against peak memory: a point per cell; False if no cell has both."""
    return _save(accuracy_vs_memory_figure(section), path)



def validation_vs_forward_passes_figure(section: Section, results_dir: Path) -> Any | None:
    """A panel per scheme, a line per optimizer: its chosen setting's validation accuracy
    against forward passes (mean over seeds, shaded: lowest to highest seed), with the
    time-to-accuracy target (the reference's best seed mean) dashed; None if no cell has a
    validation curve and forward passes per step."""
    # Imported here: time_to_accuracy reads curves through this module, and the registry
    # loads torch.
    from ..optim.registry import names
    from .time_to_accuracy import REFERENCE, scheme_targets, section_curves

    curves = section_curves(section, results_dir)
    if not curves:
        return None
    reference = section.reference or REFERENCE
    targets = scheme_targets(curves, reference)
    schemes = list(dict.fromkeys(c.scheme for c in curves))
    plt = pyplot()
    width = max(MIN_WIDTH, 4.2 * len(schemes))
    title = _title(
        f"{section.suite}: {section.task} on {section.model}: validation accuracy against "
        f"forward passes, chosen setting of each optimizer, {_band_words([c.band for c in curves])}"
        f"; dashed: the target, {reference}'s best; one scale, at least "
        f"{MIN_ACCURACY_SPAN:.0f} points",
        width)
    height = 3.6 + _title_height(title)
    figure, axes = plt.subplots(1, len(schemes), squeeze=False, figsize=(width, height),
                                sharey=True, layout="constrained")
    colors = series_colors()
    first_order = set(names(zeroth_order=False))
    for axis, scheme in zip(axes[0], schemes, strict=True):
        axis.set_title(scheme, fontsize=8)
        axis.tick_params(labelsize=6)
        axis.grid(alpha=0.3)
        axis.set_xlabel("forward passes", fontsize=7)
        for curve in (c for c in curves if c.scheme == scheme):
            color = colors[section.optimizers.index(curve.optimizer) % len(colors)]
            band = curve.band
            axis.plot(curve.passes, [v * 100 for v in band.mean], color=color,
                      linewidth=1.8 if curve.optimizer == reference else 1.0,
                      marker="o" if len(band.steps) == 1 else None,
                      label=f"{curve.optimizer} ({_seeds(band.seeds)}"
                      + ("; each pass also runs backward)" if curve.optimizer in first_order
                         else ")"))
            if band.seeds > 1:
                axis.fill_between(curve.passes, [v * 100 for v in band.low],
                                  [v * 100 for v in band.high], color=color, alpha=0.15,
                                  linewidth=0)
            if curve.optimizer == reference:
                axis.axhline(targets[scheme] * 100, color=color, linestyle="--", linewidth=0.8)
        axis.legend(fontsize=5)
    axes[0][0].set_ylabel(CURVE_LABELS[VALIDATION], fontsize=7)
    axes[0][0].set_ylim(*accuracy_limits(
        [v * 100 for c in curves for v in (*c.band.low, *c.band.high)]))
    figure.suptitle(title, fontsize=TITLE_POINTS)
    return figure


def plot_validation_vs_forward_passes(section: Section, results_dir: Path, path: Path) -> bool:
    """Validation accuracy against forward passes, a line per optimizer; False if none."""
    return _save(validation_vs_forward_passes_figure(section, results_dir), path)
