"""Recipes: what to run, read from a suite's evidence.

    python -m zotune.bench.recipes docs/results/cpu-frontier --out docs/results/recipes.md

Per tuning scheme of each section of the store, three rows at most: the zeroth-order cell
with the best seed-mean validation accuracy, ZO-SGD (the reference every ZO method is
measured against) where that is another cell, and the best first-order cell (for when
backpropagation fits). A cell counts with its chosen setting (:mod:`zotune.bench.selection`:
chosen on validation, never on test) and not when it is untrained; a cell whose chosen
setting still waits for some of its seeds counts only where no cell of its kind has them all.
Each row gives:

- the ``zotune train`` command of the chosen setting's seed-0 run
  (:func:`zotune.config.command_line`: the keys that differ from the defaults, the suite's
  execution keys and output folder left out, ``--output-dir runs/<optimizer>-<scheme>``
  added); ``--seed 1`` and ``--seed 2`` are its confirming runs;
- test accuracy before training (each run's step-0 evaluation where the suite recorded test
  at every evaluation, else its ``test_accuracy_before``) and after (the kept checkpoint),
  mean ± sample std over the seeds run, with their number;
- the step's memory and the run's training time alone on one core from the store's profile
  (``profile.json``, :mod:`zotune.bench.step_profile`: s/step × steps, evaluation not
  counted), else the runs' own median s/step, measured beside the suite's other runs.

So the README's recipe table is a copy of this page's (``python -m zotune.bench.index
README.md``), and every figure in it comes from the records.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from ..utils.files import atomic_write_text
from ..utils.tables import markdown_table
from .section import Section, build_sections
from .selection import CellSelection
from .step_profile import StepProfile, default_profile, load_step_profile
from .store import CURVE_FILE, RUNS_DIR, ResultsStore, RunRecord
from .time_to_accuracy import REFERENCE

# Keys that say how the suite executed or where it wrote, not what it computed.
EXECUTION_KEYS = ("train.output_dir", "train.overwrite", "train.resume", "train.progress",
                  "train.compile", "model.matmul")
HEADER = ["scheme", "optimizer", "why", "test % before → after (seeds)", "steps",
          "time alone, one core", "step memory (MB)", "command"]


@dataclass(frozen=True)
class Recipe:
    """A cell's chosen setting as a command, with what it measured."""

    selection: CellSelection
    why: str

    @property
    def runs(self) -> list[RunRecord]:
        assert self.selection.chosen is not None
        return sorted(self.selection.chosen.done, key=lambda r: r.seed)


def recipes(section: Section, reference: str = REFERENCE) -> list[Recipe]:
    """Per scheme: the best-validated ZO cell, the reference where it is another, the
    best-validated first-order cell; untrained and unchosen cells left out."""
    from ..optim.registry import names  # loads torch: only where a page is made

    first_order = set(names(zeroth_order=False))
    chosen: list[Recipe] = []
    for scheme in section.schemes:
        cells = [s for s in section.selections if s.cell.scheme == scheme
                 and s.chosen is not None and s.chosen.done and not s.untrained]
        zeroth = [s for s in cells if s.cell.optimizer not in first_order]
        first = [s for s in cells if s.cell.optimizer in first_order]
        best = max(confirmed(zeroth), key=lambda s: s.chosen.val_mean, default=None)
        ref = next((s for s in zeroth if s.cell.optimizer == reference), None)
        if best is not None:
            chosen.append(Recipe(best, "best ZO on validation"
                                 + (", the reference" if best is ref else "")))
        if ref is not None and ref is not best:
            chosen.append(Recipe(ref, "the ZO reference"))
        best_fo = max(confirmed(first), key=lambda s: s.chosen.val_mean, default=None)
        if best_fo is not None:
            chosen.append(Recipe(best_fo, "best with backprop"))
    return chosen


def confirmed(cells: list[CellSelection]) -> list[CellSelection]:
    """The cells whose chosen setting has all its seeds (its confirming runs done), or all
    of ``cells`` where none has: one seed that validates best is no recipe beside three."""
    return [s for s in cells if s.chosen.complete] or cells


def zero_shot(record: RunRecord, results_dir: Path) -> float | None:
    """The run's test accuracy before its first step: its curve's step-0 test evaluation,
    else the ``test_accuracy_before`` it measured; None where it measured neither."""
    from .plots import read_curve

    curve = read_curve(results_dir / RUNS_DIR / record.id / CURVE_FILE, "test_accuracy")
    if 0 in curve:
        return curve[0]
    return record.metrics.get("test_accuracy_before")


def command(recipe: Recipe) -> str:
    """The chosen setting's seed-0 run (the lowest seed run) as a ``zotune train`` command."""
    from ..config import command_line, config_from  # the registries load torch

    first = recipe.runs[0]
    cell = recipe.selection.cell
    line = command_line(config_from(first.config), omit=EXECUTION_KEYS)
    return f"{line} --output-dir runs/{cell.optimizer}-{cell.scheme}"


def percent(values: list[float]) -> str:
    """Mean ± sample std in %, the mean alone where the values agree (the seeds' shared
    zero-shot) or there is one."""
    mean = statistics.fmean(values) * 100
    spread = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {spread:.1f}" if spread >= 0.05 else f"{mean:.1f}"


def row(recipe: Recipe, results_dir: Path, profile: StepProfile | None) -> list[str]:
    runs = recipe.runs
    cell = recipe.selection.cell
    before = [v for v in (zero_shot(r, results_dir) for r in runs) if v is not None]
    after = [r.metrics["test_accuracy"] for r in runs]
    seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"
    measured = f"{percent(before) if before else '—'} → {percent(after)} ({seeds})"
    steps = int(runs[0].metrics.get("steps") or 0)
    profiled = profile.get(cell.optimizer, cell.scheme) if profile is not None else None
    if profiled is not None:
        from ..profiling.render import mb  # imports torch: only where a profile is given

        seconds = profiled.seconds_per_step
        time = f"{seconds * steps / 60:.0f} min ({seconds:.2f} s/step)"
        memory = mb(profiled.memory_bytes)
    else:
        seconds = statistics.fmean(r.metrics["seconds_per_step"] for r in runs
                                   if r.metrics.get("seconds_per_step"))
        time = f"{seconds * steps / 60:.0f} min ({seconds:.2f} s/step, in the suite)"
        memory = "—"
    label = recipe.selection.chosen.label()
    return [cell.scheme, f"{cell.optimizer} ({label})", recipe.why, measured, str(steps), time,
            memory, f"`{command(recipe)}`"]


def page(results_dir: Path, profile_path: Path | None = None,
         reference: str = REFERENCE) -> str:
    """The recipes page of the store at ``results_dir``."""
    with ResultsStore(results_dir, create=False) as store:
        sections = build_sections(store.records(), store.plans(), results_dir)
    profile_path = profile_path or default_profile(results_dir)
    parts = [
        "# Recipes",
        "",
        f"Generated by `python -m zotune.bench.recipes {results_dir} --out …` from the "
        "store's records (`zotune.bench.recipes` says how each row is read): per tuning "
        "scheme, the zeroth-order cell best on validation, ZO-SGD, and the best cell with "
        "backpropagation, each at its chosen setting. Test accuracy before → after is the "
        "mean ± std over the seeds run (each seed's command is the one shown with "
        "`--seed N`); the time is the training steps alone on one core, evaluation not "
        "counted.",
        "",
    ]
    for section in sections:
        profile = (load_step_profile(profile_path, section.model)
                   if profile_path is not None else None)
        rows = [row(r, results_dir, profile) for r in recipes(section, reference)]
        parts += [f"## {section.suite}: {section.task} on {section.model}", ""]
        if profile is not None:
            parts += [f"Step memory and time alone: {profile.setup}.", ""]
        parts += [markdown_table(HEADER, rows, right_from=None) if rows
                  else "No cell has a chosen, trained setting yet.", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zotune.bench.recipes",
        description="what to run, per tuning scheme, from a results store's chosen cells")
    parser.add_argument("results", type=Path, help="a results store (zotune bench --results)")
    parser.add_argument("--out", type=Path, required=True, help="the page to write")
    parser.add_argument("--profile", type=Path, default=None,
                        help="a zotune profile --json file (default: RESULTS/profile.json)")
    args = parser.parse_args(argv)
    try:
        text = page(args.results, args.profile)
    except (OSError, ValueError) as error:
        print(f"zotune: error: {error}", file=sys.stderr)
        return 2
    atomic_write_text(args.out, text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
