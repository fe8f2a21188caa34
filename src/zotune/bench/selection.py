"""Hyperparameter selection: per cell, the setting with the best mean validation accuracy.

For each cell (model, task, scheme, optimizer) the runs are grouped by their swept
hyperparameters; the group with the highest mean ``best_val_accuracy`` over its seeds is
chosen, and its ``test_accuracy`` (mean ± sample std over seeds) is what the report shows.
Test accuracy never takes part in the choice: ZO-Bench's sweeps maximise ``test_acc``,
which overstates every number in its tables.

A setting with every seed finished beats one with some seeds missing or failed (a learning
rate that diverges on one seed in three is not a good choice because the other two were
lucky); among equals, the higher mean validation accuracy wins.

Ties on validation are common (100 validation examples give accuracies in steps of 1%), and
they are broken by one stated rule, :data:`TIE_RULE`: the smaller learning rate, then the
earlier checkpoint (smaller mean best step), then the earlier setting in the suite's order.
The smaller of two rates that validate alike is the one that moved the model less for the
same evidence; the report names every tie it broke.

A suite's confirming seeds (``confirm_seeds``) run only at the chosen setting: the choice is
made on the sweep's seeds alone, then the chosen candidate takes its confirming runs, which
count in its figures and in what the cell still waits for; other settings' confirming runs
are not expected.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from ..training.learned import constant_prediction
from .intervals import bootstrap_interval, wilson_interval
from .store import RunRecord
from .suite import Cell, hparams_label

VAL_METRIC = "best_val_accuracy"
# What an untrained cell is, as the report, the findings and ``zotune compare`` say it.
UNTRAINED_MEANING = (
    "best on validation at step 0, before any update, so it shows the initial model, or "
    "giving every test example the same answer (one class), so it learned nothing of the task"
)
BEST_AT_STEP_0 = "best at step 0"
ONE_CLASS = "predicts one class on every test example"
# How a tie on mean validation accuracy is broken (the report and docs/results say it).
TIE_RULE = (
    "the smaller learning rate, then the earlier checkpoint (smaller mean best step), then "
    "the earlier setting in the suite's order"
)
# Mean validation accuracies this close are equal: they are means of a few fractions of the
# same validation set, so anything smaller is the rounding of the mean.
TIE_TOLERANCE = 1e-9
TEST_METRIC = "test_accuracy"
PER_STEP_METRICS = frozenset({"seconds_per_step", "forward_passes_per_step"})


@dataclass
class Candidate:
    """One hyperparameter setting of a cell, with its runs over seeds."""

    hparams: dict[str, Any]
    expected_seeds: int
    done: list[RunRecord] = field(default_factory=list)
    failed: list[RunRecord] = field(default_factory=list)
    # The suite's confirming seeds at this setting: they count once it is chosen.
    confirming: Candidate | None = None

    @property
    def complete(self) -> bool:
        return len(self.done) >= self.expected_seeds

    @property
    def tried(self) -> bool:
        """Some run of the setting finished or diverged: either says how the setting does
        (a crash or a missing run says nothing)."""
        return bool(self.done) or any(diverged(r) for r in self.failed)

    @property
    def val_mean(self) -> float:
        return statistics.fmean(r.metrics[VAL_METRIC] for r in self.done)

    @property
    def test_mean(self) -> float:
        return statistics.fmean(r.metrics[TEST_METRIC] for r in self.done)

    @property
    def test_std(self) -> float | None:
        """Sample standard deviation over seeds; None with fewer than two."""
        values = [r.metrics[TEST_METRIC] for r in self.done]
        return statistics.stdev(values) if len(values) >= 2 else None

    @property
    def test_scores(self) -> list[float] | None:
        """Each test example's score, averaged over the seeds; None unless every finished run
        recorded its per-example scores on the same number of examples."""
        per_run = [r.metrics.get("test_scores") for r in self.done]
        if not per_run or not all(per_run) or len({len(s) for s in per_run}) != 1:
            return None
        return [statistics.fmean(column) for column in zip(*per_run, strict=True)]

    @property
    def test_interval(self) -> tuple[float, float] | None:
        """95% interval of the mean test score over the test examples
        (:mod:`zotune.bench.intervals`): Wilson's for accuracy, the bootstrap of the
        per-example scores for F1; None where the runs did not record what it needs."""
        if self.done and all(r.metrics.get("metric", "accuracy") == "accuracy"
                             for r in self.done):
            counts = [r.metrics.get("test_examples") for r in self.done]
            if not all(counts):
                return None
            return wilson_interval(min(1.0, max(0.0, self.test_mean)), min(counts))
        scores = self.test_scores
        return bootstrap_interval(scores) if scores else None

    def mean_metric(self, name: str) -> float | None:
        """Mean of a recorded metric over the finished seeds; per-step figures only over runs
        that took a step (a zero-shot run records a step time of 0 and its stand-in
        optimizer's passes, which describe no step)."""
        runs = [r for r in self.done if name not in PER_STEP_METRICS or r.metrics.get("steps")]
        values = [r.metrics[name] for r in runs if r.metrics.get(name) is not None]
        return statistics.fmean(values) if values else None

    def label(self) -> str:
        return hparams_label(self.hparams)

    @property
    def one_class(self) -> bool:
        """Every finished run gave every test example the same candidate (runs that recorded
        their predictions; older records say nothing, so this is False for them)."""
        predictions = [r.metrics.get("test_predictions") for r in self.done]
        return bool(predictions) and all(
            p and constant_prediction(p) is not None for p in predictions
        )

    @property
    def learning_rate(self) -> float:
        """The swept ``optimizer.lr``, 0 where the sweep does not set it (ties then fall to
        the next rule)."""
        value = self.hparams.get("optimizer.lr", 0.0)
        return float(value) if isinstance(value, (int, float)) else 0.0


@dataclass
class CellSelection:
    cell: Cell
    candidates: list[Candidate]
    chosen: Candidate | None
    # Every sweep run finished or diverged, so the choice is final (confirming runs may go).
    settled: bool = False
    ties: list[Candidate] = field(default_factory=list)  # others as good on validation

    @property
    def expected_runs(self) -> int:
        return sum(c.expected_seeds for c in self.candidates)

    @property
    def done_runs(self) -> int:
        return sum(len(c.done) for c in self.candidates)

    @property
    def partial(self) -> bool:
        """Some of the cell's runs have not finished (missing, or failed other than by
        diverging: a diverged run is its setting's outcome, a learning rate too large)."""
        return self.done_runs + self.diverged_runs < self.expected_runs

    @property
    def diverged_runs(self) -> int:
        """Failed runs that stopped because training diverged (non-finite losses or weights,
        an overflowing update, too many skipped steps); they are never selected."""
        return sum(
            diverged(r) for candidate in self.candidates for r in candidate.failed
        )

    @property
    def untrained_reasons(self) -> list[str]:
        """Why the cell shows no training, empty if it does: every run of the chosen setting
        was best on validation at step 0, before any update (so it shows the initial model,
        because no learning rate of its grid moved validation within the budget; a
        validation accuracy that never changed is best at step 0 too; a baseline, which
        takes no steps, is exempt), or every run gave every test example the same class (a
        constant predictor has learned nothing of the task, whatever its accuracy)."""
        chosen = self.chosen
        if chosen is None:
            return []
        reasons = []
        if all(r.config["train"]["steps"] > 0 and r.metrics.get("best_step") == 0
               for r in chosen.done):
            reasons.append(BEST_AT_STEP_0)
        if chosen.one_class:
            reasons.append(ONE_CLASS)
        return reasons

    @property
    def untrained(self) -> bool:
        """The cell shows no training (:attr:`untrained_reasons`): it is not counted as a
        trained cell, and the contrasts it enters say nothing about its optimizer."""
        return bool(self.untrained_reasons)

    @property
    def grid_edges(self) -> dict[str, str]:
        """Swept hyperparameter → ``"top"`` or ``"bottom"`` where the chosen value (with those
        tied with it) is the largest or smallest of the values tried (finished, or diverged:
        beyond a diverged value there is nothing to look for): the best may lie beyond the
        grid."""
        if self.chosen is None:
            return {}
        edges = {}
        for name in self.chosen.hparams:
            tried = {c.hparams.get(name) for c in self.candidates if c.tried}
            if len(tried) < 2 or not all(isinstance(v, (int, float)) for v in tried):
                continue
            # Settings tied with the chosen one validate as well: the best lies beyond an
            # edge only if the tied group reaches it, and a tie across the whole grid points
            # nowhere (the tie rule picked one end of it).
            group = {c.hparams.get(name) for c in (self.chosen, *self.ties)}
            at_top, at_bottom = max(tried) in group, min(tried) in group
            if at_top and not at_bottom:
                edges[name] = "top"
            elif at_bottom and not at_top:
                edges[name] = "bottom"
        return edges

    @property
    def skipped_steps(self) -> int:
        """Steps the cell's finished runs skipped for a non-finite loss."""
        return sum(
            int(r.metrics.get("skipped_steps") or 0)
            for candidate in self.candidates
            for r in candidate.done
        )


# What the training loop's errors say when a run diverged (zotune.training.train).
DIVERGED_MARKERS = ("diverged", "non-finite", "overflowed")


def diverged(record: RunRecord) -> bool:
    return any(marker in (record.error or "") for marker in DIVERGED_MARKERS)


def select(
    records: list[RunRecord], planned: list[dict[str, Any]] | None = None
) -> list[CellSelection]:
    """Choose each cell's hyperparameters on validation accuracy.

    ``planned`` is the suite's plan (dicts with ``id``, the cell fields, ``hparams``,
    ``seed``); with it, runs outside the plan are ignored and runs never started count as
    missing. Without it, the records are the whole plan.
    """
    if planned is None:
        planned = [
            {"id": r.id, **_cell_fields(r.cell), "hparams": r.hparams, "seed": r.seed}
            for r in records
        ]
    by_id = {r.id: r for r in records}
    cells: dict[Cell, dict[str, Candidate]] = {}
    for entry in planned:
        cell = Cell(
            entry["model"],
            entry["task"],
            entry["scheme"],
            entry["optimizer"],
            entry.get("variant", ""),  # plans written before studies existed have none
        )
        key = json.dumps(entry["hparams"], sort_keys=True)
        candidates = cells.setdefault(cell, {})
        candidate = candidates.setdefault(key, Candidate(entry["hparams"], 0))
        if entry.get("confirm"):
            if candidate.confirming is None:
                candidate.confirming = Candidate(entry["hparams"], 0)
            candidate = candidate.confirming
        candidate.expected_seeds += 1
        record = by_id.get(entry["id"])
        if record is None:
            continue
        (candidate.done if record.status == "done" else candidate.failed).append(record)
    return [_choose(cell, list(candidates.values())) for cell, candidates in cells.items()]


def _choose(cell: Cell, candidates: list[Candidate]) -> CellSelection:
    """The complete setting with the best mean validation accuracy (on the sweep's seeds);
    ties by :data:`TIE_RULE`."""
    finished = [c for c in candidates if c.done]
    settled = _sweep_settled(candidates)
    if not finished:
        return CellSelection(cell, candidates, None, settled)
    best = max((c.complete, c.val_mean) for c in finished)
    tied = [c for c in finished
            if c.complete == best[0] and abs(c.val_mean - best[1]) <= TIE_TOLERANCE]
    position = {id(c): i for i, c in enumerate(candidates)}
    chosen = min(tied, key=lambda c: (c.learning_rate, c.mean_metric("best_step") or 0.0,
                                      position[id(c)]))
    if chosen.confirming is not None and settled:
        extra, chosen.confirming = chosen.confirming, None
        chosen.expected_seeds += extra.expected_seeds
        chosen.done.extend(extra.done)
        chosen.failed.extend(extra.failed)
    return CellSelection(cell, candidates, chosen, settled, [c for c in tied if c is not chosen])


def _sweep_settled(candidates: list[Candidate]) -> bool:
    """Every sweep run of the cell finished or diverged: its choice can no longer change."""
    return all(
        len(c.done) + sum(diverged(r) for r in c.failed) >= c.expected_seeds
        for c in candidates
    )


def confirmations_due(selections: list[CellSelection]) -> set[tuple[Cell, str]]:
    """(cell, setting) pairs whose confirming runs may start: the cell's sweep is settled and
    that setting is its choice (the setting as the canonical JSON of its hyperparameters)."""
    return {
        (s.cell, json.dumps(s.chosen.hparams, sort_keys=True))
        for s in selections
        if s.settled and s.chosen is not None
    }


def _cell_fields(cell: Cell) -> dict[str, str]:
    return {
        "model": cell.model,
        "task": cell.task,
        "scheme": cell.scheme,
        "optimizer": cell.optimizer,
        "variant": cell.variant,
    }
