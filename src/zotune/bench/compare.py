"""``zotune compare RESULTS_DIR A B``: whether two cells of a store differ on its test set.

A report's intervals are each cell's alone; two cells scored on the same test examples are
told apart far better pair by pair (:func:`zotune.bench.intervals.paired_difference`). A cell
is named ``OPTIMIZER/SCHEME`` or ``OPTIMIZER/SCHEME/VARIANT`` (a study's row), and stands for
the hyperparameters the report chose for it on validation, its per-example test scores
averaged over its seeds; a run id names one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .intervals import CONFIDENCE, paired_difference
from .section import Section, build_sections
from .selection import CellSelection
from .store import ResultsStore, RunRecord
from .suite import hparams_label


@dataclass(frozen=True)
class Side:
    """One side of a comparison: what it names, and its per-example test scores."""

    name: str
    description: str
    scores: list[float]
    metric: str
    test_set: tuple[str, int, int]  # (task, data seed, examples): what fixes the test split


@dataclass(frozen=True)
class Comparison:
    a: Side
    b: Side
    difference: float
    low: float
    high: float

    @property
    def separated(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def lines(self) -> list[str]:
        metric = self.a.metric
        n = len(self.a.scores)
        verdict = (
            f"separated: {self.a.name if self.difference > 0 else self.b.name} is higher"
            if self.separated
            else "not separated on this test set"
        )
        return [
            f"A  {self.a.name}: {self.a.description}",
            f"B  {self.b.name}: {self.b.description}",
            f"A − B: {self.difference * 100:+.1f} points of test {metric}, "
            f"{CONFIDENCE:.0%} paired bootstrap interval {self.low * 100:+.1f} to "
            f"{self.high * 100:+.1f} over the same {n} test examples: {verdict}",
        ]


def compare(
    results_dir: str | Path, a: str, b: str, *, suite: str | None = None,
    task: str | None = None, model: str | None = None,
) -> Comparison:
    """Compare cells (or runs) ``a`` and ``b`` of a store on their shared test examples."""
    results_dir = Path(results_dir)
    with ResultsStore(results_dir, create=False) as store:
        records = store.records()
        plans = store.plans()
    if not records:
        raise ValueError(f"no runs recorded in {results_dir}")
    sections = [
        s for s in build_sections(records, plans, results_dir)
        if (suite is None or s.suite == suite)
        and (task is None or s.task == task)
        and (model is None or s.model == model)
    ]
    left, right = _side(a, sections, records), _side(b, sections, records)
    if left.metric != right.metric:
        raise ValueError(f"{a} is scored by {left.metric}, {b} by {right.metric}")
    if left.test_set != right.test_set:
        raise ValueError(
            f"{a} and {b} were not tested on the same examples (task, data seed, examples: "
            f"{left.test_set} against {right.test_set})"
        )
    difference, low, high = paired_difference(left.scores, right.scores)
    return Comparison(left, right, difference, low, high)


def _side(name: str, sections: list[Section], records: list[RunRecord]) -> Side:
    run = next((r for r in records if r.id == name), None)
    if run is not None:
        if run.status != "done":
            raise ValueError(f"run {name} did not finish ({run.status})")
        label = f"run, {hparams_label(run.hparams)}, seed {run.seed}"
        return _made(name, label, [run], run.metrics.get("test_scores"))
    matches = [(s, item) for s in sections for item in s.every_selection
               if _cell_name(item) == name]
    if not matches:
        known = sorted({_cell_name(item) for s in sections for item in s.every_selection})
        raise ValueError(
            f"no cell or run {name!r} in this store; its cells: {', '.join(known) or 'none'}"
        )
    if len({(s.suite, s.model, s.task) for s, _ in matches}) > 1:
        where = ", ".join(f"{s.suite}/{s.model}/{s.task}" for s, _ in matches)
        raise ValueError(f"{name} is in several sections ({where}): pick one with "
                         "--suite, --task or --model")
    section, item = matches[0]
    chosen = item.chosen
    if chosen is None:
        raise ValueError(f"{name} has no finished run in {section.suite}")
    seeds = len(chosen.done)
    label = (f"{section.suite}, {section.model}, {section.task}, "
             f"{hparams_label(chosen.hparams) or 'no hyperparameters'}, "
             f"{seeds} seed{'s' if seeds != 1 else ''}, test {chosen.test_mean * 100:.1f}")
    return _made(name, label, chosen.done, chosen.test_scores)


def _made(
    name: str, label: str, runs: list[RunRecord], scores: list[float] | None
) -> Side:
    if scores is None:
        raise ValueError(
            f"{name}: its records hold no per-example test scores (records made before "
            "zotune kept them, or runs scored on different numbers of examples); run it "
            "again to compare it pair by pair"
        )
    test_sets = {
        (r.config["task"]["name"], r.config["task"]["data_seed"], len(scores)) for r in runs
    }
    if len(test_sets) != 1:
        raise ValueError(f"{name}: its runs were tested on different examples ({test_sets})")
    return Side(name, label, scores, runs[0].metrics.get("metric", "accuracy"),
                test_sets.pop())


def _cell_name(item: CellSelection) -> str:
    parts = [item.cell.optimizer, item.cell.scheme]
    return "/".join([*parts, item.cell.variant] if item.cell.variant else parts)
