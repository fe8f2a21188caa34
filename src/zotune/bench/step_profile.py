"""A report's step memory and time alone: the rows of a ``zotune profile --json`` file that
match its cells.

A suite's own timings (the records' ``seconds_per_step``) were taken while the suite ran,
beside its other runs; the profiler times one step at a time alone (``taskset -c 0 zotune
profile ... --threads 1``) and reads the step's memory without the run's evaluation and
checkpointing. ``zotune report RESULTS_DIR --profile FILE`` (by default
``RESULTS_DIR/profile.json`` where there is one) sets the two side by side: a table of memory
and s/step per optimizer and scheme, beside inference, and in the time-to-accuracy table the
wall time alone, forward passes to the target × the profiler's seconds per forward pass
(s/step ÷ forward passes per step: a MeZO-SVRG step averages its anchor and control steps, so
its passes are priced at the average).

A row matches a cell by model (the profile's ``--model`` as the suite names it), optimizer and
scheme; a file with two rows for one of them (two ``--dtype`` or ``--matmul`` values) is
refused by name rather than one of them picked.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..profiling.spec import ProfileResult

PROFILE_FILE = "profile.json"


class StepProfile:
    """The profiled steps of one model: per (optimizer or ``inference``, scheme), a result."""

    def __init__(self, rows: dict[tuple[str, str], ProfileResult], setup: str,
                 command: str | None, note: str | None, source: Path) -> None:
        self.rows = rows
        self.setup = setup
        self.command = command
        self.note = note
        self.source = source

    def get(self, optimizer: str, scheme: str) -> ProfileResult | None:
        return self.rows.get((optimizer, scheme))

    def seconds_per_pass(self, optimizer: str, scheme: str) -> float | None:
        """The profiled step's seconds per forward pass (a first-order step's one pass also
        runs backward)."""
        row = self.get(optimizer, scheme)
        if row is None or not row.forward_passes_per_step:
            return None
        return row.seconds_per_step / row.forward_passes_per_step


def default_profile(results_dir: Path) -> Path | None:
    """``RESULTS_DIR/profile.json`` where there is one."""
    path = results_dir / PROFILE_FILE
    return path if path.is_file() else None


def load_step_profile(path: str | Path, model: str) -> StepProfile | None:
    """The rows of the profile at ``path`` measured on ``model``; None where it has none."""
    # The profiler's modules import torch, which this package does not load (bench/__init__).
    from ..profiling.results import load_payload
    from ..profiling.spec import ProfileResult

    path = Path(path)
    payload = load_payload(path)
    rows: dict[tuple[str, str], ProfileResult] = {}
    for index, item in enumerate(payload.get("results", [])):
        try:
            result = ProfileResult.from_dict(item)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: result {index} is not a profiled step ({error!r})") \
                from None
        spec = result.spec
        if spec.model != model:
            continue
        key = (spec.method, spec.scheme)
        if key in rows:
            raise ValueError(
                f"{path}: two profiled rows for {spec.method}/{spec.scheme} on {model} "
                f"({rows[key].spec.label()}; {spec.label()}): profile one --dtype and "
                "--matmul for a report")
        rows[key] = result
    if not rows:
        return None
    return StepProfile(rows, str(payload.get("setup", "")), payload.get("command"),
                       payload.get("note"), path)
