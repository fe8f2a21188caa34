"""Time to accuracy: how many forward passes, and how much wall time, each cell of a section
takes to reach the validation accuracy at which the reference optimizer ends.

Per tuning scheme, the **target** is the best validation accuracy of the reference cell's (ZO-SGD
by default) chosen setting, averaged over its seeds at each evaluation: where the reference
ends, since a run keeps its best checkpoint. (Its last evaluation would be no target where the
reference rose and then fell: a ZO-SGD LoRA run that peaks at 62.6% and ends at 47.6, below the
initial model, would set a target every cell meets before its first update.) A cell's
curve is its chosen setting's validation accuracy averaged over its seeds, at the steps every
seed evaluated (:func:`zotune.bench.plots.seed_band`), each step put in forward passes as
step × the setting's forward passes per step (its records' ``forward_passes_per_step``,
MeZO-SVRG's amortised over its anchor period). The cell reaches the target at the first
evaluation whose seed mean is at least the target; its wall time is that step × the runs' own
median seconds per step (the records' ``seconds_per_step``), measured while the suite ran, so
it carries that machine's load. The reference cell reaches its own target; a cell that never
does is "not reached", with the best its curve got to.

A first-order cell's "forward pass" is a forward and a backward pass: its forward-pass count
is not its cost, which its wall time shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .plots import VALIDATION, Band, read_curve, seed_band
from .section import Section
from .selection import TIE_TOLERANCE, CellSelection
from .store import CURVE_FILE, RUNS_DIR

REFERENCE = "zo-sgd"


@dataclass(frozen=True)
class PassCurve:
    """A cell's chosen setting's validation accuracy (fractions) over its seeds, its steps
    put in forward passes."""

    optimizer: str
    scheme: str
    passes: list[float]
    band: Band
    passes_per_step: float
    seconds_per_step: float | None


@dataclass(frozen=True)
class Reach:
    """When a cell's seed-mean validation accuracy first reached ``target``."""

    curve: PassCurve
    target: float
    step: int | None  # None: not reached
    forward_passes: float | None
    seconds: float | None
    best: float  # the highest seed-mean validation accuracy of the curve
    best_passes: float

    @property
    def reached(self) -> bool:
        return self.step is not None


def pass_curve(item: CellSelection, results_dir: Path) -> PassCurve | None:
    """``item``'s chosen setting's validation curve in forward passes; None where it has no
    finished run, no evaluation every seed logged, or no recorded forward passes per step."""
    chosen = item.chosen
    if chosen is None:
        return None
    passes_per_step = chosen.mean_metric("forward_passes_per_step")
    band = seed_band([read_curve(results_dir / RUNS_DIR / r.id / CURVE_FILE, VALIDATION)
                      for r in chosen.done])
    if not band.steps or not passes_per_step:
        return None
    return PassCurve(item.cell.optimizer, item.cell.scheme,
                     [step * passes_per_step for step in band.steps], band, passes_per_step,
                     chosen.mean_metric("seconds_per_step"))


def section_curves(section: Section, results_dir: Path) -> list[PassCurve]:
    """The curves of the main table's cells, optimizers in the section's order per scheme."""
    curves = []
    for scheme in section.schemes:
        for optimizer in section.optimizers:
            item = section.selection(optimizer, scheme)
            curve = pass_curve(item, results_dir) if item is not None else None
            if curve is not None:
                curves.append(curve)
    return curves


def reach(curve: PassCurve, target: float) -> Reach:
    """Where ``curve`` first reaches ``target`` (validation accuracies equal to the rounding
    of a mean count as reached)."""
    mean = curve.band.mean
    best_index = max(range(len(mean)), key=lambda i: (mean[i], -i))
    first = next((i for i, value in enumerate(mean) if value >= target - TIE_TOLERANCE), None)
    step = None if first is None else curve.band.steps[first]
    seconds = (None if step is None or curve.seconds_per_step is None
               else step * curve.seconds_per_step)
    return Reach(curve, target, step, None if first is None else curve.passes[first], seconds,
                 mean[best_index], curve.passes[best_index])


def scheme_targets(curves: list[PassCurve], reference: str = REFERENCE) -> dict[str, float]:
    """Per scheme, the target: the ``reference`` cell's best seed-mean validation accuracy."""
    return {c.scheme: max(c.band.mean) for c in curves if c.optimizer == reference}


def times_to_accuracy(
    section: Section, results_dir: Path, reference: str = REFERENCE
) -> list[Reach]:
    """Every cell's reach of its scheme's target (the ``reference`` cell's best seed-mean
    validation accuracy), the reference first in each scheme; none for the schemes whose
    reference cell has no curve."""
    curves = section_curves(section, results_dir)
    targets = scheme_targets(curves, reference)
    ordered = sorted((c for c in curves if c.scheme in targets),
                     key=lambda c: (list(targets).index(c.scheme), c.optimizer != reference))
    return [reach(c, targets[c.scheme]) for c in ordered]


def load_note(section: Section) -> str:
    """What the wall times were measured under: the runs' threads and machines."""
    threads = sorted({r.metrics.get("threads") for r in section.records
                      if r.metrics and r.metrics.get("threads")})
    hardware = sorted({r.hardware for r in section.records})
    said = f"{', '.join(map(str, threads))} torch thread(s) per run, " if threads else ""
    return (f"{said}on {'; '.join(hardware)}, under whatever else the machine ran then (the "
            "suite's other runs with `--jobs`), not alone on one core as `zotune profile` "
            "times a step")


def duration(seconds: float) -> str:
    """``"42 s"``, ``"12.5 min"``, ``"3.2 h"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
