"""``zotune report RESULTS_DIR``: the benchmark's tables (Markdown, CSV) and plots (PNG).

For every suite in the store and every (model, task) in it:

- accuracy: optimizer rows × tuning-scheme columns, the test accuracy of the hyperparameters
  chosen on validation (:mod:`zotune.bench.selection`), mean ± std over seeds, ``—`` for a cell
  with no finished run, ``*`` for a cell with some runs missing or failed (the table is then
  marked partial);
- selection: per cell, the chosen hyperparameters, their val and test accuracy, the seeds
  behind them and how many settings were tried;
- cost: optimizer rows, forward passes per step, and per scheme the peak memory and seconds
  per step of the chosen runs;
- steps alone: with a ``zotune profile --json`` file (``--profile``, by default
  ``RESULTS_DIR/profile.json``), per optimizer and scheme the step's memory and seconds timed
  alone, beside inference (:mod:`zotune.bench.step_profile`);
- time to accuracy: per cell, the forward passes and wall time to reach the validation
  accuracy at which the reference optimizer (``--reference``, ZO-SGD) ends
  (:mod:`zotune.bench.time_to_accuracy`), and the wall time alone where a profile is given;
- failed runs with their error line.

Each table states its model, task, step budget, data sizes, hardware, zotune version, and the
command that reproduces it. Files go to ``RESULTS_DIR/report/`` (or ``out``), each written
atomically: ``report.md``, ``report.html`` (the same, one self-contained page with the plots
embedded: :mod:`zotune.bench.html_report`), ``accuracy.csv``, ``selection.csv``,
``cost.csv``, ``runs.csv`` and four PNGs per (model, task): validation accuracy and training
loss per cell, validation accuracy against forward passes (a line per optimizer), and
accuracy against memory (:mod:`zotune.bench.plots`).

Ties on validation are broken by :data:`zotune.bench.selection.TIE_RULE` and named; a cell
whose chosen runs were best at step 0 or predicted one class throughout is marked untrained
(°) and not counted as trained.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.files import atomic_write_text
from ..utils.tables import markdown_table
from .html_report import render_html
from .section import Section, build_sections
from .selection import (
    BEST_AT_STEP_0,
    ONE_CLASS,
    TEST_METRIC,
    TIE_RULE,
    VAL_METRIC,
    Candidate,
    CellSelection,
    diverged,
)
from .step_profile import StepProfile, default_profile, load_step_profile
from .store import ResultsStore
from .suite import hparam_name, hparams_label
from .time_to_accuracy import REFERENCE, Reach, duration, load_note, times_to_accuracy

REPORT_DIR = "report"
MISSING = "—"
PARTIAL_MARK = "*"
UNTRAINED_MARK = "°"

# ZO-Bench (Zhang et al., ICML 2024): SST-2 test accuracy (%) of OPT-1.3B for the
# optimizers and schemes it reports there. Shown beside an SST-2 table for its shape only: the
# paper's model, data and step budget (20k ZO steps) differ from any CPU suite's.
PAPER_SST2_OPT_1_3B = {
    "fo-sgd": {"full": 91.1, "lora": 93.6, "prefix": 93.1, "prompt": 92.8},
    "zo-sgd": {"full": 90.8, "lora": 90.1, "prefix": 91.4, "prompt": 84.4},
    "zo-sgd-sign": {"full": 87.2, "lora": 91.5, "prefix": 89.5, "prompt": 72.9},
    "zo-adam": {"full": 84.4, "lora": 92.3, "prefix": 91.4, "prompt": 75.7},
}


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align_right_from: int = 1  # columns from this index on hold numbers

    def markdown(self) -> str:
        return markdown_table(self.header, self.rows, right_from=self.align_right_from)


def build_report(
    results_dir: str | Path, out: str | Path | None = None, plots: bool = True,
    reference: str = REFERENCE, profile: str | Path | None = None,
) -> list[Path]:
    """Write the report of a results folder; returns the files written. ``reference`` is the
    optimizer whose best validation accuracy each scheme's time-to-accuracy table aims at;
    ``profile`` a ``zotune profile --json`` file of the suite's steps timed alone (default:
    ``RESULTS_DIR/profile.json`` where there is one; :mod:`zotune.bench.step_profile`)."""
    results_dir = Path(results_dir)
    out = Path(out) if out is not None else results_dir / REPORT_DIR
    profile = Path(profile) if profile is not None else default_profile(results_dir)
    if profile is not None and not profile.is_file():
        raise ValueError(f"--profile {profile}: no such file")
    with ResultsStore(results_dir, create=False) as store:
        records = store.records()
        plans = store.plans()
    if not plans and not records:
        raise ValueError(f"no runs recorded in {results_dir}")
    sections = build_sections(records, plans, results_dir)
    planned_ids = {r.id for section in sections for r in section.records}
    unplanned = sum(r.id not in planned_ids for r in records)
    for section in sections:
        section.reference = reference
        section.reaches = times_to_accuracy(section, results_dir, reference)
        if profile is not None:
            section.profile = load_step_profile(profile, section.model)
    written: list[Path] = []
    if plots:
        from .plots import (
            plot_accuracy_vs_memory,
            plot_loss_curves,
            plot_validation_curves,
            plot_validation_vs_forward_passes,
        )

        for section in sections:
            validation = out / f"{section.slug}_validation.png"
            if plot_validation_curves(section, results_dir, validation):
                section.plots.append(validation)
            by_passes = out / f"{section.slug}_validation_vs_forward_passes.png"
            if plot_validation_vs_forward_passes(section, results_dir, by_passes):
                section.plots.append(by_passes)
            loss = out / f"{section.slug}_loss.png"
            if plot_loss_curves(section, results_dir, loss):
                section.plots.append(loss)
            scatter = out / f"{section.slug}_accuracy_vs_memory.png"
            if plot_accuracy_vs_memory(section, scatter):
                section.plots.append(scatter)
            written += section.plots
    markdown = markdown_report(sections, out, unplanned)
    files = {
        "report.md": markdown,
        "report.html": render_html(markdown, out),
        "accuracy.csv": _csv(_accuracy_rows(sections)),
        "selection.csv": _csv(_selection_rows(sections)),
        "cost.csv": _csv(_cost_rows(sections)),
        "runs.csv": _csv(_run_rows(sections)),
    }
    for name, text in files.items():
        atomic_write_text(out / name, text)
        written.append(out / name)
    return written


def markdown_report(sections: list[Section], out: Path, unplanned: int = 0) -> str:
    parts = ["# zotune benchmark report", ""]
    if unplanned:
        parts += [
            (f"{unplanned} stored runs belong to no current suite plan (their suite's grid or "
             "config changed since); they are left out." if unplanned != 1 else
             "1 stored run belongs to no current suite plan (its suite's grid or config changed "
             "since); it is left out."),
            "",
        ]
    for section in sections:
        parts += [
            f"## {section.suite}: {section.task} on {section.model}",
            "",
            *context_lines(section),
            "",
            *_main_tables(section),
            *_study_tables(section),
            *_failed_runs(section),
            *_figure_lines(section, out),
            *_all_runs(section),
        ]
    return "\n".join(parts).rstrip() + "\n"


def _figure_lines(section: Section, out: Path) -> list[str]:
    """The section's images, a blank line after each (on GitHub, images on consecutive
    lines share a paragraph and are drawn side by side, shrunk); a blank line if none."""
    return [line for p in section.plots
            for line in (f"![{p.stem}]({p.relative_to(out)})", "")] or [""]


def _main_tables(section: Section) -> list[str]:
    if not section.selections:
        return []
    metric = section_metric(section)
    return [
        f"### Test {metric} (%)",
        "",
        f"Test {metric} of the hyperparameters with the best mean validation {metric} "
        "(never chosen on test); mean ± std over seeds"
        + ", then in parentheses the 95% interval over the test examples ("
        + ("Wilson" if metric == "accuracy" else "bootstrap of the per-example F1")
        + "; `zotune.bench.intervals`), which the seeds share: two cells whose intervals "
        "overlap widely are not told apart by this test set (`zotune compare` tests a pair "
        "on the same examples).",
        "",
        accuracy_table(section).markdown(),
        "",
        *_partial_note(section.selections),
        *_grid_note(section.selections),
        *_paper_comparison(section),
        "### Selected hyperparameters",
        "",
        selection_table(section).markdown(),
        "",
        "### Memory and time",
        "",
        *_memory_note(section),
        cost_table(section).markdown(),
        "",
        *_steps_alone(section),
        *_time_to_accuracy(section),
    ]


def _steps_alone(section: Section) -> list[str]:
    if section.profile is None:
        return []
    profile = section.profile
    said = f" (`{profile.command}`)" if profile.command else ""
    note = f" {profile.note}" if profile.note else ""
    return [
        "### Step memory and time alone",
        "",
        f"From `zotune profile`{said}, read from `{profile.source.name}`: {profile.setup}."
        f"{note} Memory is the step's (weights + what the step adds), without the run's "
        "evaluation and checkpointing; a synthetic batch of the profile's B×T.",
        "",
        steps_alone_table(section).markdown(),
        "",
    ]


def steps_alone_table(section: Section) -> Table:
    """Per optimizer (inference first), the profiled forward passes per step and, per
    scheme, the step's memory and seconds."""
    # Imported here: torch loads with them, only where a profile is given.
    from ..profiling.render import mb, seconds_text

    profile = section.profile
    assert profile is not None
    header = ["optimizer", "forward passes / step"]
    for scheme in section.schemes:
        header += [f"{scheme}: memory (MB)", f"{scheme}: s/step"]
    rows = []
    for optimizer in ["inference", *section.optimizers]:
        found = [profile.get(optimizer, scheme) for scheme in section.schemes]
        if not any(found):
            continue
        passes = {f"{r.forward_passes_per_step:g}" for r in found if r is not None}
        row = [optimizer, ", ".join(sorted(passes))]
        for result in found:
            row += ([MISSING, MISSING] if result is None else
                    [mb(result.memory_bytes), seconds_text(result)])
        rows.append(row)
    return Table(header, rows, align_right_from=1)


def _time_to_accuracy(section: Section) -> list[str]:
    if not section.reaches:
        return []
    return [
        "### Time to accuracy",
        "",
        f"Per scheme, the forward passes and wall time each cell (its chosen setting, seed "
        f"mean) took to first reach the validation {section_metric(section)} at which "
        f"{section.reference} ends (the best seed mean of its chosen setting's evaluations, "
        "where its runs keep their checkpoint); "
        "forward passes are step × the records' forward passes per step (a first-order "
        "step's one pass also runs backward), wall time is step × the runs' own measured "
        f"median s/step: {load_note(section)}"
        + ("; wall time alone is the forward passes × the profiled step's seconds per "
           "forward pass (the table above)." if section.profile is not None else "."),
        "",
        time_to_accuracy_table(section).markdown(),
        "",
    ]


def time_to_accuracy_table(section: Section) -> Table:
    rows = []
    for item in section.reaches:
        curve = item.curve
        if item.step == 0:
            passes = "0 (the initial model scores it)"
            wall = duration(0.0)
        elif item.reached:
            passes = f"{item.forward_passes:,.0f} (step {item.step})"
            wall = MISSING if item.seconds is None else duration(item.seconds)
        else:
            passes = (f"not reached (best {item.best * 100:.1f} at "
                      f"{item.best_passes:,.0f} passes)")
            wall = MISSING
        row = [curve.scheme, curve.optimizer, f"{item.target * 100:.1f}",
               f"{curve.passes[-1]:,.0f}", passes, wall]
        if section.profile is not None:
            row.append(_wall_time_alone(section.profile, item))
        rows.append([*row, str(curve.band.seeds)])
    alone = ["wall time to target alone"] if section.profile is not None else []
    return Table(["scheme", "optimizer", f"target val {_short_metric(section)} (%)",
                  "forward passes run", "forward passes to target", "wall time to target",
                  *alone, "seeds"], rows, align_right_from=2)


def _wall_time_alone(profile: StepProfile, item: Reach) -> str:
    per_pass = profile.seconds_per_pass(item.curve.optimizer, item.curve.scheme)
    if not item.reached or per_pass is None:
        return MISSING
    return duration(item.forward_passes * per_pass)


def mirrors_the_paper(section: Section) -> bool:
    """Whether a section is shaped like ZO-Bench's SST-2 table, so that setting the two side by
    side says something: SST-2, every scheme one of the paper's, and at least two of its
    optimizers on at least two of its schemes (a study of one setting, or another task, is
    not a replica of that table)."""
    schemes = section.schemes
    ran = [o for o in section.optimizers if o in PAPER_SST2_OPT_1_3B]
    return (section.task == "sst2" and len(schemes) >= 2 and len(ran) >= 2
            and all(scheme in PAPER_SST2_OPT_1_3B["zo-sgd"] for scheme in schemes))


def _paper_comparison(section: Section) -> list[str]:
    """zotune's SST-2 cells beside ZO-Bench's OPT-1.3B figures: the optimizers the suite ran
    that the paper reports, for a section that mirrors the paper's table."""
    if not mirrors_the_paper(section):
        return []
    rows = []
    for optimizer in section.optimizers:
        paper = PAPER_SST2_OPT_1_3B.get(optimizer)
        if paper is None:
            continue
        row = [optimizer]
        for scheme in section.schemes:
            ours = _accuracy_cell(section.selection(optimizer, scheme), section)
            row.append(f"{ours} / {paper[scheme]:.1f}")
        rows.append(row)
    return [
        "Beside the paper: this table's test accuracy / ZO-Bench's SST-2 accuracy for OPT-1.3B "
        "(20k ZO steps on the full training set), for the optimizers this suite ran that the "
        "paper reports. Compare the shape (which optimizer and scheme lead), not the levels.",
        "",
        Table(["optimizer", *section.schemes], rows).markdown(),
        "",
    ]


def _study_tables(section: Section) -> list[str]:
    if not section.studies:
        return []
    metric = section_metric(section)
    return [
        "### Studies",
        "",
        "One row per variant (a named setting the suite compares), in the suite's order; "
        f"each variant's hyperparameters chosen on validation {metric}, never on test. Test "
        f"{metric} is the mean ± std over seeds"
        + " and the 95% interval over the test examples. "
        + _memory_note(section)[0],
        "",
        study_table(section).markdown(),
        "",
        *_partial_note(section.studies),
        *_grid_note(section.studies),
    ]


def study_table(section: Section) -> Table:
    short = _short_metric(section)
    header = ["variant", "optimizer", "scheme", "chosen hyperparameters", "steps",
              "forward passes / step", f"val {short} (%, seed mean)",
              f"test {short} (%, seed mean ± std)", "peak memory (MB, seed mean)",
              "s/step (seed mean)"]
    rows = []
    for item in section.studies:
        chosen = item.chosen
        steps = {r.config["train"]["steps"] for c in item.candidates for r in c.done}
        cells = [item.cell.variant, item.cell.optimizer, item.cell.scheme]
        if chosen is None:
            rows.append([*cells, MISSING, MISSING, MISSING, MISSING, MISSING, MISSING, MISSING])
            continue
        rows.append(
            [
                *cells,
                chosen.label(),
                ", ".join(str(n) for n in sorted(steps)),
                _number(chosen.mean_metric("forward_passes_per_step"), "{:.0f}"),
                f"{chosen.val_mean * 100:.1f}",
                _accuracy_cell(item, section),
                _number(chosen.mean_metric("peak_memory_mb"), "{:.0f}"),
                _number(chosen.mean_metric("seconds_per_step"), "{:.3f}"),
            ]
        )
    return Table(header, rows, align_right_from=4)


def context_lines(section: Section) -> list[str]:
    """What a table is of: budget, data, hardware, version, and how to reproduce it."""
    configs = [r.config for r in section.records]
    done = [r for r in section.records if r.status == "done"]
    return [
        f"- model: `{section.model}`; task: `{section.task}`",
        f"- step budget{_of_finished(section)}: {_step_budget(section)}",
        f"- data: {_distinct(_data_sizes(c) for c in configs)}",
        f"- hardware: {_distinct(r.hardware for r in done) or 'no finished run'}",
        f"- zotune: {_distinct(r.zotune_version for r in done) or 'no finished run'}",
        f"- reproduce: `{section.command}`",
    ]


def _of_finished(section: Section) -> str:
    """Said of a partial section, whose recorded runs may not show every optimizer's budget."""
    return " (runs recorded so far)" if any(s.partial for s in section.every_selection) else ""


def _step_budget(section: Section) -> str:
    """``"zo-sgd, zo-adam: 400 steps; fo-sgd: 100 steps (batch 16)"``."""
    steps: dict[tuple[int, int], list[str]] = {}
    for record in section.records:
        train = record.config["train"]
        key = (train["steps"], train["batch_size"])
        names = steps.setdefault(key, [])
        if record.cell.optimizer not in names:
            names.append(record.cell.optimizer)
    if not steps:
        return "unknown (no run recorded)"
    if len(steps) == 1:
        ((count, batch),) = steps
        return f"{count} steps, batch {batch} (every optimizer)"
    return "; ".join(
        f"{', '.join(names)}: {count} steps, batch {batch}"
        for (count, batch), names in steps.items()
    )


def _data_sizes(config: dict[str, Any]) -> str:
    task = config["task"]
    return f"{task['num_train']} train / {task['num_val']} val / {task['num_test']} test examples"


def _distinct(values: Iterable[str]) -> str:
    return "; ".join(dict.fromkeys(v for v in values if v))


def section_metric(section: Section) -> str:
    """What the section's runs measured: accuracy, or F1 for generation tasks (SQuAD, DROP),
    whose runs record ``metric: f1`` and keep F1 where the others keep accuracy."""
    names = {record.metrics.get("metric", "accuracy") for record in section.records
             if record.metrics}
    return "F1" if names == {"f1"} else "accuracy"


def _short_metric(section: Section) -> str:
    """The column label of the section's metric: ``acc`` or ``F1``."""
    return "acc" if section_metric(section) == "accuracy" else section_metric(section)


def accuracy_table(section: Section) -> Table:
    rows = []
    for optimizer in section.optimizers:
        row = [optimizer]
        for scheme in section.schemes:
            row.append(_accuracy_cell(section.selection(optimizer, scheme), section))
        rows.append(row)
    return Table(["optimizer", *section.schemes], rows)


def _accuracy_cell(selection: CellSelection | None, section: Section) -> str:
    """``"66.6 ± 1.2 (63.4–69.6)"``: mean over seeds ± their std, then the 95% interval over
    the test examples (absent where the runs did not record what it needs)."""
    if selection is None or selection.chosen is None:
        return MISSING
    chosen = selection.chosen
    text = f"{chosen.test_mean * 100:.1f}"
    if chosen.test_std is not None:
        text += f" ± {chosen.test_std * 100:.1f}"
    interval = chosen.test_interval
    if interval is not None:
        text += f" ({interval[0] * 100:.1f}–{interval[1] * 100:.1f})"
    return (text + (UNTRAINED_MARK if selection.untrained else "")
            + (PARTIAL_MARK if selection.partial else ""))


def _partial_note(cells: list[CellSelection]) -> list[str]:
    empty = sum(s.chosen is None for s in cells)
    partial = sum(s.partial and s.chosen is not None for s in cells)
    if not empty and not partial:
        return []
    return [
        f"**Partial:** {empty} of {len(cells)} cells have no finished run ({MISSING}), "
        f"{partial} have some runs missing or failed ({PARTIAL_MARK}; a run that diverged "
        "counts as finished: it says its learning rate is too large).",
        "",
    ]


def selection_table(section: Section) -> Table:
    header = [
        "optimizer",
        "scheme",
        "chosen hyperparameters",
        "notes",
        f"val {_short_metric(section)} (%, seed mean)",
        f"test {_short_metric(section)} (%, seed mean ± std)",
        "seeds",
        "settings tried",
        "best step (seed mean)",
        "diverged runs",
        "skipped steps",
    ]
    rows = []
    for item in section.selections:
        chosen = item.chosen
        tried = sum(c.tried for c in item.candidates)
        health = [str(item.diverged_runs), str(item.skipped_steps)]
        if chosen is None:
            rows.append(
                [item.cell.optimizer, item.cell.scheme, MISSING, "", MISSING, MISSING,
                 f"0/{item.expected_runs}", f"0/{len(item.candidates)}", MISSING, *health]
            )
            continue
        rows.append(
            [
                item.cell.optimizer,
                item.cell.scheme,
                chosen.label(),
                selection_notes(item),
                f"{chosen.val_mean * 100:.1f}",
                _accuracy_cell(item, section),
                f"{len(chosen.done)}/{chosen.expected_seeds}",
                f"{tried}/{len(item.candidates)}",
                _number(chosen.mean_metric("best_step"), "{:.0f}"),
                *health,
            ]
        )
    return Table(header, rows, align_right_from=4)


def selection_notes(item: CellSelection) -> str:
    """What limits a cell's chosen setting: untrained (and why), chosen at an edge of its
    grid, or chosen from a tie on validation by :data:`TIE_RULE`."""
    reasons = item.untrained_reasons
    notes = [f"untrained: {', '.join(reasons)}"] if reasons else []
    notes += [f"{hparam_name(name)} at the grid's {edge}"
              for name, edge in item.grid_edges.items()]
    if item.ties:
        notes.append(f"tied on validation with {', '.join(c.label() for c in item.ties)}: "
                     "chosen by the tie rule")
    return "; ".join(notes)


def _grid_note(cells: list[CellSelection]) -> list[str]:
    step_0 = sum(BEST_AT_STEP_0 in s.untrained_reasons for s in cells)
    one_class = sum(ONE_CLASS in s.untrained_reasons for s in cells)
    untrained = sum(s.untrained for s in cells)
    edged = sum(bool(s.grid_edges) for s in cells)
    tied = sum(bool(s.ties) for s in cells)
    lines = []
    if untrained:
        why = []
        if step_0:
            why.append(f"{_cells(step_0)} best on validation at step 0 in every run of the "
                       "chosen setting, before any update, so showing the initial model")
        if one_class:
            why.append(f"{_cells(one_class)} gave every test example the same class in every "
                       "run, a constant predictor")
        lines += [
            f"**Untrained:** {untrained} of {len(cells)} cells ({UNTRAINED_MARK}; not counted "
            f"as trained): {'; '.join(why)}"
            + (" (a cell may be both)." if step_0 and one_class else "."),
            "",
        ]
    if edged:
        lines += [
            f"**Grid limits:** {_cells(edged)} chose the largest or smallest value swept, "
            "where the best may lie beyond the grid (the selection table's notes say which).",
            "",
        ]
    if tied:
        lines += [
            f"**Ties:** in {_cells(tied)} of {len(cells)} another setting had the same mean "
            f"validation accuracy; the tie was broken by {TIE_RULE} (the notes name the "
            "settings tied).",
            "",
        ]
    return lines


def _cells(count: int) -> str:
    return "1 cell" if count == 1 else f"{count} cells"


def _memory_note(section: Section) -> list[str]:
    devices = {r.config["model"]["device"] for r in section.records}
    if all(str(d).startswith("cuda") for d in devices):
        source = "peak CUDA memory allocated by torch"
    elif any(str(d).startswith("cuda") for d in devices):
        source = "peak CUDA memory allocated (GPU runs) or process peak RSS (CPU runs)"
    else:
        source = (
            "the run's peak resident set (CPU): the Python runtime, evaluation and "
            "checkpointing included, so the training step's own memory is better read from "
            "`zotune profile`"
        )
    return [
        f"Peak memory is {source}; s/step is the median step time. Both are means over "
        "the seeds of the selected hyperparameters.",
        "",
    ]


def cost_table(section: Section) -> Table:
    header = ["optimizer", "forward passes / step"]
    for scheme in section.schemes:
        header += [f"{scheme}: peak memory (MB)", f"{scheme}: s/step"]
    rows = []
    for optimizer in section.optimizers:
        passes = [
            s.chosen.mean_metric("forward_passes_per_step")
            for scheme in section.schemes
            if (s := section.selection(optimizer, scheme)) is not None and s.chosen is not None
        ]
        row = [optimizer, _number(passes[0] if passes else None, "{:.0f}")]
        for scheme in section.schemes:
            item = section.selection(optimizer, scheme)
            chosen = item.chosen if item is not None else None
            if chosen is None:
                row += [MISSING, MISSING]
                continue
            row += [
                _number(chosen.mean_metric("peak_memory_mb"), "{:.0f}"),
                _number(chosen.mean_metric("seconds_per_step"), "{:.3f}"),
            ]
        rows.append(row)
    return Table(header, rows)


# What becomes of a failed run on the next ``zotune bench`` (runner.run_states decides it).
FAILURE_OUTCOMES = {
    True: "diverged: not retried (its settings would diverge again; --rerun runs it)",
    False: "failed: retried by the next bench",
}


def failed_runs_table(section: Section) -> Table | None:
    """The section's failed runs, each with whether the next bench retries it."""
    failed = [r for r in section.records if r.status == "failed"]
    if not failed:
        return None
    return Table(
        ["run", "optimizer", "scheme", "hyperparameters", "seed", "attempts", "outcome",
         "error"],
        [
            [f"`{r.id}`", r.cell.optimizer, r.cell.scheme, hparams_label(r.hparams),
             str(r.seed), str(r.attempts), FAILURE_OUTCOMES[diverged(r)],
             _escape(r.error or "")]
            for r in failed
        ],
        align_right_from=len(["run", "optimizer", "scheme", "hyperparameters"]),
    )


def _failed_runs(section: Section) -> list[str]:
    table = failed_runs_table(section)
    return [] if table is None else ["### Failed runs", "", table.markdown(), ""]


def _all_runs(section: Section) -> list[str]:
    """Every run of the section, folded away (GitHub renders ``<details>``)."""
    if not section.records:
        return []
    cells = section.every_selection
    chosen = {r.id for item in cells if item.chosen for r in item.chosen.done}
    rows = []
    for r in section.records:
        metrics = r.metrics or {}
        rows.append(
            [
                f"`{r.id}`",
                r.cell.optimizer,
                r.cell.scheme + (f" [{r.cell.variant}]" if r.cell.variant else ""),
                hparams_label(r.hparams),
                str(r.seed),
                r.status + (" (selected)" if r.id in chosen else ""),
                _percent(metrics.get(VAL_METRIC)),
                _percent(metrics.get(TEST_METRIC)),
                _number(metrics.get("best_step"), "{:.0f}"),
                _number(metrics.get("seconds_per_step"), "{:.3f}"),
                _number(metrics.get("peak_memory_mb"), "{:.0f}"),
            ]
        )
    header = ["run", "optimizer", "scheme", "hyperparameters", "seed", "status", "val (%)",
              "test (%)", "best step", "s/step", "peak MB"]
    table = Table(header, rows, align_right_from=6)
    return [
        f"<details><summary>All {len(rows)} runs</summary>",
        "",
        table.markdown(),
        "",
        "</details>",
        "",
    ]


def _percent(value: float | None) -> str:
    return _number(value * 100 if value is not None else None, "{:.1f}")


def _number(value: float | None, fmt: str) -> str:
    return MISSING if value is None else fmt.format(value)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _cell_columns(section: Section, item: CellSelection) -> dict[str, Any]:
    """The columns that name a cell in every CSV: suite, model, task, optimizer, scheme,
    variant."""
    return {
        "suite": section.suite,
        "model": section.model,
        "task": section.task,
        "optimizer": item.cell.optimizer,
        "scheme": item.cell.scheme,
        "variant": item.cell.variant,
    }


def _accuracy_rows(sections: list[Section]) -> list[dict[str, Any]]:
    rows = []
    for section in sections:
        for item in section.every_selection:
            chosen = item.chosen
            rows.append(
                {
                    **_cell_columns(section, item),
                    "test_accuracy_mean": chosen.test_mean if chosen else "",
                    "test_accuracy_std": (chosen.test_std or "") if chosen else "",
                    **_interval_columns(chosen),
                    "val_accuracy_mean": chosen.val_mean if chosen else "",
                    "seeds": len(chosen.done) if chosen else 0,
                    "partial": item.partial,
                }
            )
    return rows


def _interval_columns(chosen: Candidate | None) -> dict[str, Any]:
    interval = chosen.test_interval if chosen else None
    low, high = interval if interval else ("", "")
    return {"test_accuracy_ci95_low": low, "test_accuracy_ci95_high": high}


def _selection_rows(sections: list[Section]) -> list[dict[str, Any]]:
    rows = []
    for section in sections:
        for item in section.every_selection:
            for candidate in item.candidates:
                rows.append(
                    {
                        **_cell_columns(section, item),
                        "hyperparameters": candidate.label(),
                        "chosen": candidate is item.chosen,
                        "val_accuracy_mean": candidate.val_mean if candidate.done else "",
                        "test_accuracy_mean": candidate.test_mean if candidate.done else "",
                        "seeds_done": len(candidate.done),
                        "seeds_failed": len(candidate.failed),
                        "seeds_planned": candidate.expected_seeds,
                    }
                )
    return rows


def _cost_rows(sections: list[Section]) -> list[dict[str, Any]]:
    rows = []
    for section in sections:
        for item in section.every_selection:
            chosen = item.chosen
            if chosen is None:
                continue
            rows.append(
                {
                    **_cell_columns(section, item),
                    "forward_passes_per_step": chosen.mean_metric("forward_passes_per_step"),
                    "peak_memory_mb": chosen.mean_metric("peak_memory_mb"),
                    "seconds_per_step": chosen.mean_metric("seconds_per_step"),
                    "trainable_parameters": chosen.mean_metric("trainable_parameters"),
                }
            )
    return rows


def _run_rows(sections: list[Section]) -> list[dict[str, Any]]:
    rows = []
    for section in sections:
        chosen_ids = {
            r.id
            for item in section.every_selection
            if item.chosen
            for r in item.chosen.done
        }
        for record in section.records:
            metrics = record.metrics or {}
            rows.append(
                {
                    "id": record.id,
                    "suite": section.suite,
                    "model": record.cell.model,
                    "task": record.cell.task,
                    "optimizer": record.cell.optimizer,
                    "scheme": record.cell.scheme,
                    "variant": record.cell.variant,
                    "hyperparameters": hparams_label(record.hparams),
                    "seed": record.seed,
                    "status": record.status,
                    "selected": record.id in chosen_ids,
                    "val_accuracy": metrics.get(VAL_METRIC, ""),
                    "test_accuracy": metrics.get(TEST_METRIC, ""),
                    "best_step": metrics.get("best_step", ""),
                    "steps": record.config["train"]["steps"],
                    "seconds_per_step": metrics.get("seconds_per_step", ""),
                    "peak_memory_mb": metrics.get("peak_memory_mb", ""),
                    "duration_s": round(record.duration_s, 1),
                    "attempts": record.attempts,
                    "hardware": record.hardware,
                    "zotune_version": record.zotune_version,
                    "error": record.error or "",
                }
            )
    return rows
