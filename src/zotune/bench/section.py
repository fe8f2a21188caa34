"""One section of the report: the runs and tables of one (suite, model, task)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .selection import CellSelection, select
from .store import RunRecord, SuitePlan

if TYPE_CHECKING:
    from .step_profile import StepProfile
    from .time_to_accuracy import Reach


@dataclass
class Section:
    """The tables of one (suite, model, task)."""

    suite: str
    model: str
    task: str
    selections: list[CellSelection]  # the main table's cells
    records: list[RunRecord]  # this section's runs in the plan, every status
    command: str
    plots: list[Path] = field(default_factory=list)
    studies: list[CellSelection] = field(default_factory=list)  # cells with a variant
    # Each cell's forward passes and time to its scheme's reference's best validation
    # (zotune.bench.time_to_accuracy), with the reference optimizer they are measured against.
    reaches: list[Reach] = field(default_factory=list)
    reference: str = ""
    # The section's steps timed alone by `zotune profile` (zotune.bench.step_profile), if given.
    profile: StepProfile | None = None

    @property
    def slug(self) -> str:
        return slug(f"{self.suite}_{self.task}_{self.model}")

    @property
    def every_selection(self) -> list[CellSelection]:
        """The main table's cells, then the study cells."""
        return [*self.selections, *self.studies]

    @property
    def schemes(self) -> list[str]:
        return list(dict.fromkeys(s.cell.scheme for s in self.selections))

    @property
    def optimizers(self) -> list[str]:
        """The rows: the baselines (zero-shot, icl) first, as the paper's tables, then the
        optimizers in suite order."""
        from .suite import BASELINES

        rows = list(dict.fromkeys(s.cell.optimizer for s in self.selections))
        return [r for r in BASELINES if r in rows] + [r for r in rows if r not in BASELINES]

    def selection(self, optimizer: str, scheme: str) -> CellSelection | None:
        for item in self.selections:
            if item.cell.optimizer == optimizer and item.cell.scheme == scheme:
                return item
        return None


def slug(text: str) -> str:
    """``text`` as a file-name part: runs of anything but letters, digits and dots become -."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def build_sections(
    records: list[RunRecord], plans: list[SuitePlan], results_dir: Path
) -> list[Section]:
    """The sections of a store's records: one per (suite, model, task) of each plan, each
    cell's hyperparameters chosen (:func:`zotune.bench.selection.select`). A store with no
    plan is its own plan."""
    if not plans:  # a store written without a plan: its rows are the plan
        names = dict.fromkeys(r.suite for r in records)
        plans = [
            SuitePlan(name, name, f"zotune bench {shlex.quote(name)}", _plan_of(records, name))
            for name in names
        ]
    by_id = {r.id: r for r in records}
    sections = []
    for suite_plan in plans:
        command = f"{suite_plan.command} && zotune report {shlex.quote(str(results_dir))}"
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for entry in suite_plan.runs:
            groups.setdefault((entry["model"], entry["task"]), []).append(entry)
        for (model, task), planned in groups.items():
            ids = dict.fromkeys(e["id"] for e in planned)  # a shared run is one record
            section_records = [by_id[i] for i in ids if i in by_id]
            selections = select(section_records, planned)
            sections.append(
                Section(
                    suite=suite_plan.name,
                    model=model,
                    task=task,
                    selections=[s for s in selections if not s.cell.variant],
                    records=section_records,
                    command=command,
                    studies=[s for s in selections if s.cell.variant],
                )
            )
    return sections


def _plan_of(records: list[RunRecord], suite: str) -> list[dict[str, Any]]:
    return [
        {
            "id": r.id,
            "model": r.cell.model,
            "task": r.cell.task,
            "scheme": r.cell.scheme,
            "optimizer": r.cell.optimizer,
            "variant": r.cell.variant,
            "hparams": r.hparams,
            "seed": r.seed,
        }
        for r in records
        if r.suite == suite
    ]
