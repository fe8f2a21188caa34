"""``zotune compare RESULTS_DIR A B``: whether two cells of a store differ on its test set.

A report's intervals are each cell's alone; two cells scored on the same test examples are
told apart far better pair by pair (:func:`zotune.bench.intervals.paired_difference`). A cell
is named ``OPTIMIZER/SCHEME`` or ``OPTIMIZER/SCHEME/VARIANT`` (a study's row), and stands for
the hyperparameters the report chose for it on validation, its per-example test scores
averaged over its seeds; a run id names one run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .intervals import CONFIDENCE, paired_difference
from .section import build_sections
from .selection import UNTRAINED_MEANING, CellSelection
from .store import ResultsStore, RunRecord
from .suite import hparams_label


class NotFinished(ValueError):
    """A cell the store plans has no finished run yet."""


@dataclass(frozen=True)
class Side:
    """A cell or run as a comparison sees it: its mean test score over ``examples`` test
    examples and, where its records kept them, the per-example scores (over seeds)."""

    name: str
    description: str
    mean: float
    examples: int
    scores: list[float] | None
    metric: str
    test_set: tuple[str, int, int]  # (task, data seed, examples): what fixes the test split
    seeds: int = 1
    seed_std: float | None = None  # the std of the seeds' test scores, with two or more
    untrained: bool = False  # best at step 0 or one class throughout: not the rule's work
    partial: bool = False  # some of the cell's runs are still missing: its choice may change


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
        metric = "F1" if self.a.metric == "f1" else self.a.metric
        verdict = (
            f"separated: {self.a.name if self.difference > 0 else self.b.name} is higher"
            if self.separated
            else "not separated on this test set"
        )
        lines = [
            f"A  {self.a.name}: {self.a.description}",
            f"B  {self.b.name}: {self.b.description}",
            f"A − B: {self.difference * 100:+.1f} points of test {metric}, "
            f"{CONFIDENCE:.0%} paired bootstrap interval {self.low * 100:+.1f} to "
            f"{self.high * 100:+.1f} over the same {self.a.examples} test examples: {verdict}",
        ]
        untrained = [side.name for side in (self.a, self.b) if side.untrained]
        if untrained:
            lines.append(f"untrained: {', '.join(untrained)} ({UNTRAINED_MEANING})")
        running = [side.name for side in (self.a, self.b) if side.partial]
        if running:
            lines.append(f"still running: {', '.join(running)} (some runs missing: the chosen "
                         "setting may change)")
        return lines


class NoRunsRecorded(ValueError):
    """The store holds its suite's plan but no finished run yet."""


class StoreView:
    """A store's records and sections, narrowed to a suite, task or model, that names its
    cells and runs as :class:`Side` s."""

    def __init__(
        self, results_dir: str | Path, *, suite: str | None = None,
        task: str | None = None, model: str | None = None,
    ) -> None:
        results_dir = Path(results_dir)
        with ResultsStore(results_dir, create=False) as store:
            self.records = store.records()
            plans = store.plans()
        if not self.records:
            raise NoRunsRecorded(f"no runs recorded in {results_dir}")
        sections = build_sections(self.records, plans, results_dir)
        wanted = {"suite": suite, "task": task, "model": model}
        for field, value in wanted.items():
            held = sorted({getattr(s, field) for s in sections})
            if value is not None and value not in held:
                raise ValueError(
                    f"--{field} {value}: this store has no such {field}; its {field}s: "
                    f"{', '.join(held)}"
                )
        self.sections = [
            s for s in sections
            if all(value is None or getattr(s, field) == value
                   for field, value in wanted.items())
        ]

    def side(self, name: str) -> Side:
        """The cell ``OPTIMIZER/SCHEME[/VARIANT]`` or the run id ``name``; a cell the plan has
        but no run finished raises :class:`NotFinished`."""
        run = next((r for r in self.records if r.id == name), None)
        if run is not None:
            if run.status != "done":
                raise NotFinished(f"run {name} did not finish ({run.status})")
            label = f"run, {hparams_label(run.hparams)}, seed {run.seed}"
            return _made(name, label, [run], run.metrics["test_accuracy"],
                         run.metrics.get("test_scores"))
        matches = [(s, item) for s in self.sections for item in s.every_selection
                   if cell_name(item) == name]
        if not matches:
            known = sorted({cell_name(item) for s in self.sections
                            for item in s.every_selection})
            raise ValueError(
                f"no cell or run {name!r} in this store; its cells: "
                f"{', '.join(known) or 'none'}"
            )
        if len({(s.suite, s.model, s.task) for s, _ in matches}) > 1:
            where = ", ".join(f"{s.suite}/{s.model}/{s.task}" for s, _ in matches)
            raise ValueError(f"{name} is in several sections ({where}): pick one with "
                             "--suite, --task or --model")
        section, item = matches[0]
        chosen = item.chosen
        if chosen is None:
            raise NotFinished(f"{name} has no finished run in {section.suite}")
        seeds = len(chosen.done)
        label = (f"{section.suite}, {section.model}, {section.task}, "
                 f"{hparams_label(chosen.hparams) or 'no hyperparameters'}, "
                 f"{seeds} seed{'s' if seeds != 1 else ''}, test {chosen.test_mean * 100:.1f}")
        side = _made(name, label, chosen.done, chosen.test_mean, chosen.test_scores)
        return dataclasses.replace(side, seeds=seeds, seed_std=chosen.test_std,
                                   untrained=item.untrained, partial=item.partial)


def compare(
    results_dir: str | Path, a: str, b: str, *, suite: str | None = None,
    task: str | None = None, model: str | None = None,
) -> Comparison:
    """Compare cells (or runs) ``a`` and ``b`` of a store on their shared test examples."""
    if a == b:
        raise ValueError(f"A and B are both {a}: name two cells or runs to compare")
    view = StoreView(results_dir, suite=suite, task=task, model=model)
    left, right = view.side(a), view.side(b)
    check_comparable([left, right])
    for side in (left, right):
        if side.scores is None:
            raise ValueError(
                f"{side.name}: its records hold no per-example test scores (records made "
                "before zotune kept them, or runs scored on different numbers of examples); "
                "run it again to compare it pair by pair"
            )
    difference, low, high = paired_difference(left.scores, right.scores)
    return Comparison(left, right, difference, low, high)


def check_comparable(sides: list[Side]) -> None:
    """Refuse sides scored by different metrics or on different test examples."""
    first = sides[0]
    for other in sides[1:]:
        if other.metric != first.metric:
            raise ValueError(
                f"{first.name} is scored by {first.metric}, {other.name} by {other.metric}"
            )
        if other.test_set != first.test_set:
            raise ValueError(
                f"{first.name} and {other.name} were not tested on the same examples (task, "
                f"data seed, examples: {first.test_set} against {other.test_set})"
            )


def cell_name(item: CellSelection) -> str:
    """``OPTIMIZER/SCHEME``, or ``OPTIMIZER/SCHEME/VARIANT`` for a study's row."""
    parts = [item.cell.optimizer, item.cell.scheme]
    return "/".join([*parts, item.cell.variant] if item.cell.variant else parts)


def _made(
    name: str, label: str, runs: list[RunRecord], mean: float, scores: list[float] | None
) -> Side:
    task = runs[0].config["task"]
    examples = int(runs[0].metrics.get("test_examples") or 0)
    test_sets = {(r.config["task"]["name"], r.config["task"]["data_seed"],
                  int(r.metrics.get("test_examples") or 0)) for r in runs}
    if len(test_sets) != 1:
        raise ValueError(f"{name}: its runs were tested on different examples ({test_sets})")
    return Side(name, label, mean, examples, scores, runs[0].metrics.get("metric", "accuracy"),
                (task["name"], task["data_seed"], examples))
