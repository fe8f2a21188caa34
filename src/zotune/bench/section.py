"""One section of the report: the runs and tables of one (suite, model, task)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .selection import CellSelection
from .store import RunRecord


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
