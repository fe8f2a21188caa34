"""Per-example test scores, their bootstrap intervals, and ``zotune compare``: two cells of a
store told apart pair by pair on the same test examples."""

from __future__ import annotations

import json
import math
import random
import re
import statistics

import pytest

from zotune import cli
from zotune.bench import findings
from zotune.bench.compare import compare
from zotune.bench.intervals import bootstrap_interval, paired_difference, wilson_interval
from zotune.bench.store import METRICS_FILE, ResultsStore, RunRecord, SuitePlan
from zotune.bench.suite import expand_suite, load_suite
from zotune.training.train import finetune


def outcomes(n: int, accuracy: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [float(rng.random() < accuracy) for _ in range(n)]


# Intervals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "accuracy"), [(100, 0.5), (200, 0.76), (872, 0.69)])
def test_the_bootstrap_of_hits_agrees_with_wilson(n, accuracy):
    """On 0/1 scores both intervals estimate the same binomial spread."""
    scores = outcomes(n, accuracy, seed=n)
    low, high = bootstrap_interval(scores)
    wilson = wilson_interval(statistics.fmean(scores), n)
    assert (low, high) == pytest.approx(wilson, abs=0.015)


def test_a_bootstrap_interval_is_reproducible_and_covers_the_mean():
    scores = [0.0, 0.25, 0.5, 1.0, 0.75] * 20
    assert bootstrap_interval(scores) == bootstrap_interval(scores)
    low, high = bootstrap_interval(scores)
    assert low < statistics.fmean(scores) < high
    assert bootstrap_interval([0.3] * 10) == pytest.approx((0.3, 0.3))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bootstrap_interval([]), "at least one test example"),
        (lambda: bootstrap_interval([1.0], confidence=1.0), "confidence lies in (0, 1)"),
        (lambda: bootstrap_interval([1.0], resamples=0), "at least one resample"),
        (lambda: paired_difference([1.0, 0.0], [1.0]), "2 against 1 scores"),
    ],
)
def test_intervals_refuse_what_they_cannot_estimate(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_pairing_separates_runs_that_separate_intervals_cannot():
    """B gets right every example A gets right, and 10 of 200 more: the runs' own intervals
    overlap almost entirely, the paired one excludes 0."""
    a = outcomes(200, 0.7, seed=1)
    wrong = [i for i, hit in enumerate(a) if not hit][:10]
    b = [1.0 if i in wrong else hit for i, hit in enumerate(a)]
    difference, low, high = paired_difference(b, a)
    assert difference == pytest.approx(0.05)
    assert 0 < low < high
    _, a_high = wilson_interval(statistics.fmean(a), 200)
    b_low, _ = wilson_interval(statistics.fmean(b), 200)
    assert b_low < a_high, "separately, the two intervals overlap"


# Runs record their per-example scores --------------------------------------------------------


def test_a_run_records_each_test_examples_score(sst2_dir, tmp_path, tiny_run_config):
    result = finetune(tiny_run_config(sst2_dir, tmp_path))
    assert len(result.test_scores) == result.test_examples == 8
    assert set(result.test_scores) <= {0.0, 1.0}
    assert statistics.fmean(result.test_scores) == pytest.approx(result.test_accuracy)


# zotune compare ----------------------------------------------------------------------------


def store_with_scores(tmp_path, tiny_suite, scores_of, *, test_examples=200, data_seed=0,
                      only=None, best_step_of=lambda run: 1, curve_of=None):
    """A store of the tiny suite's finished runs (``only`` those the predicate keeps) at
    ``tmp_path/tiny``, each with the per-example test scores ``scores_of(run)`` (None: a
    record made before zotune kept them) and its best validation at ``best_step_of(run)``;
    with ``curve_of``, each run's validation at steps 0, 1, 2 (two forward passes a step)."""
    suite_dict = tiny_suite()
    suite_dict["base"]["task"]["data_seed"] = data_seed
    suite = expand_suite(suite_dict)
    folder = tmp_path / "tiny"
    with ResultsStore(folder) as store:
        store.save_plan(SuitePlan.of(suite, "zotune bench tiny"), now=1.0)
        for run in suite.runs:
            if only is not None and not only(run):
                continue
            scores = scores_of(run)
            val = 0.6 if run.hparams.get("optimizer.lr") == 1e-3 else 0.5
            metrics = {"best_val_accuracy": val, "test_examples": test_examples,
                       "metric": "accuracy", "best_step": best_step_of(run)}
            if scores is not None:
                metrics.update(test_accuracy=statistics.fmean(scores), test_scores=scores)
            else:
                metrics["test_accuracy"] = 0.5
            if curve_of is not None:
                metrics.update(forward_passes_per_step=2, seconds_per_step=1.0, steps=2)
                lines = [{"step": step, "val_accuracy": value}
                         for step, value in enumerate(curve_of(run))]
                store.run_dir(run.id).mkdir(parents=True)
                (store.run_dir(run.id) / METRICS_FILE).write_text(  # recording copies it
                    "".join(json.dumps(line) + "\n" for line in lines))
            store.record(RunRecord.for_run(
                "tiny", run, status="done",
                metrics=metrics, error=None, started_at=1.0, finished_at=2.0,
                zotune_version="0.2.0", hostname="host", hardware="a CPU"))
    return folder


def by_optimizer(better: float, worse: float):
    def scores_of(run):
        base = outcomes(200, 0.6, seed=7)  # the same hard and easy examples for every run
        if run.cell.optimizer == "fo-adam":
            flips = int(better * 200)
            wrong = [i for i, hit in enumerate(base) if not hit][:flips]
            return [1.0 if i in wrong else hit for i, hit in enumerate(base)]
        rng = random.Random(run.seed)
        return [hit if rng.random() > worse else 1.0 - hit for hit in base]
    return scores_of


def test_compare_separates_a_better_cell_on_the_same_examples(tmp_path, tiny_suite):
    folder = store_with_scores(tmp_path, tiny_suite, by_optimizer(better=0.1, worse=0.0))
    result = compare(folder, "fo-adam/full", "zo-sgd/full")
    assert result.difference == pytest.approx(0.1)
    assert result.separated and result.low > 0
    lines = result.lines()
    assert "lr=0.001" in lines[1] and "2 seeds" in lines[1]
    assert "separated: fo-adam/full is higher" in lines[2]


def test_compare_does_not_separate_cells_that_differ_by_noise(tmp_path, tiny_suite):
    folder = store_with_scores(tmp_path, tiny_suite, by_optimizer(better=0.0, worse=0.05))
    result = compare(folder, "zo-sgd/lora", "fo-adam/lora")
    assert not result.separated
    assert "not separated on this test set" in result.lines()[2]


def test_compare_names_a_single_run_by_its_id(tmp_path, tiny_suite):
    folder = store_with_scores(tmp_path, tiny_suite, by_optimizer(better=0.1, worse=0.0))
    run = next(r for r in expand_suite(tiny_suite()).runs if r.cell.optimizer == "zo-sgd")
    result = compare(folder, run.id, "fo-adam/full")
    assert result.a.description.startswith("run, ") and result.difference < 0


@pytest.mark.parametrize(
    ("a", "b", "scores_of", "changes", "message"),
    [
        ("zo-sgd/prompt", "fo-adam/full", by_optimizer(0.1, 0.0), {},
         "no cell or run 'zo-sgd/prompt' in this store; its cells: fo-adam/full, "
         "fo-adam/lora, zo-sgd/full, zo-sgd/lora"),
        ("zo-sgd/full", "fo-adam/full", lambda run: None, {},
         "zo-sgd/full: its records hold no per-example test scores"),
        ("zo-sgd/full", "zo-sgd/full", by_optimizer(0.1, 0.0), {},
         "A and B are both zo-sgd/full: name two cells or runs to compare"),
        ("zo-sgd/full", "fo-adam/full", by_optimizer(0.1, 0.0), {"suite": "other"},
         "--suite other: this store has no such suite; its suites: tiny"),
        ("zo-sgd/full", "fo-adam/full", by_optimizer(0.1, 0.0), {"task": "copa"},
         "--task copa: this store has no such task; its tasks: sst2"),
        ("zo-sgd/full", "fo-adam/full", by_optimizer(0.1, 0.0), {"model": "opt-13b"},
         "--model opt-13b: this store has no such model; its models: "),
    ],
)
def test_compare_refuses_what_it_cannot_pair(tmp_path, tiny_suite, a, b, scores_of, changes,
                                             message):
    folder = store_with_scores(tmp_path, tiny_suite, scores_of)
    with pytest.raises(ValueError, match=re.escape(message)):
        compare(folder, a, b, **changes)


def test_compare_refuses_runs_tested_on_different_examples(tmp_path, tiny_suite):
    one = store_with_scores(tmp_path / "one", tiny_suite, by_optimizer(0.1, 0.0))
    other = store_with_scores(tmp_path / "two", tiny_suite, by_optimizer(0.1, 0.0),
                              data_seed=1)
    with ResultsStore(one) as store, ResultsStore(other, create=False) as moved:
        zo = next(r for r in moved.records() if r.cell.optimizer == "zo-sgd")
        store.record(zo)
    with pytest.raises(ValueError, match="not tested on the same examples"):
        compare(one, zo.id, "fo-adam/full")


def test_the_compare_command_prints_three_lines_or_one_error(tmp_path, tiny_suite, capsys):
    folder = store_with_scores(tmp_path, tiny_suite, by_optimizer(better=0.1, worse=0.0))
    assert cli.main(["compare", str(folder), "fo-adam/full", "zo-sgd/full"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line[:3] for line in out] == ["A  ", "B  ", "A −"]
    assert cli.main(["compare", str(folder), "fo-adam/full", "nothing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zotune: error: no cell or run 'nothing'")


# The paper's findings -----------------------------------------------------------------------


@pytest.mark.parametrize("finding", findings.FINDINGS, ids=lambda f: f.suite + ": " + f.claim[:30])
def test_every_finding_names_cells_its_suite_runs(finding):
    from zotune.bench.compare import cell_name
    from zotune.bench.selection import select
    suite = load_suite(finding.suite)
    planned = [{"id": r.id, **r.cell.__dict__, "hparams": r.hparams, "seed": r.seed}
               for r in suite.runs]
    cells = {(item.cell.task, cell_name(item)) for item in select([], planned)}
    for contrast in finding.contrasts:
        for _, name in contrast.terms:
            assert (contrast.task, name) in cells


TINY_FINDINGS = (
    findings.Finding("FO beats ZO", "tiny", (findings.difference("fo-adam/full", "zo-sgd/full"),
                                             findings.difference("fo-adam/lora", "zo-sgd/lora"))),
    findings.Finding("ZO beats FO", "tiny", (findings.difference("zo-sgd/full", "fo-adam/full"),)),
    findings.Finding("ZO keeps FO's accuracy", "tiny",
                     (findings.difference("zo-sgd/full", "fo-adam/full"),), margin=0.2),
)


@pytest.mark.parametrize(
    ("better", "worse", "only", "verdicts", "method"),
    [
        (0.1, 0.0, None, [["yes", "yes"], ["reversed"], ["yes"]], "paired bootstrap"),
        (0.0, 0.05, None, [["not separated", "not separated"], ["not separated"], ["yes"]],
         "paired bootstrap"),
        (0.1, 0.0, lambda run: run.cell.scheme == "full",
         [["yes", "queued"], ["reversed"], ["yes"]], "paired bootstrap"),
    ],
)
def test_findings_give_each_contrast_its_verdict(tmp_path, tiny_suite, better, worse, only,
                                                 verdicts, method):
    store_with_scores(tmp_path, tiny_suite, by_optimizer(better, worse), only=only)
    checked = findings.check(tmp_path, TINY_FINDINGS)
    assert [[e.verdict for e in estimates] for _, estimates in checked] == verdicts
    first = checked[0][1][0]
    assert first.method.startswith(method) and "widened by the seeds' spread" in first.method
    if only is not None:
        assert checked[0][1][1].missing == ["fo-adam/lora", "zo-sgd/lora"]
    assert all(not e.partial for _, estimates in checked for e in estimates if e.value)


def test_a_contrast_on_a_cell_still_running_says_so(tmp_path, tiny_suite):
    """fo-adam/full has a result but one of its runs is still missing: the verdict stands
    for now, and the page says the cell's choice may change."""
    missing = expand_suite(tiny_suite()).runs
    dropped = next(r for r in missing if r.cell.optimizer == "fo-adam" and r.cell.scheme == "full")
    store_with_scores(tmp_path, tiny_suite, by_optimizer(0.1, 0.0),
                      only=lambda run: run.id != dropped.id)
    checked = findings.check(tmp_path, TINY_FINDINGS[:1])
    first = checked[0][1][0]
    assert first.verdict == "yes" and first.partial == ["fo-adam/full"]
    assert "yes; so far: fo-adam/full still running" in findings.markdown(checked, "cmd")
    lines = compare(tmp_path / "tiny", "fo-adam/full", "zo-sgd/full").lines()
    assert lines[-1].startswith("still running: fo-adam/full (some runs missing")


def test_an_untrained_cell_is_named_and_decides_no_finding(tmp_path, tiny_suite):
    """ZO-SGD's runs were best on validation before their first update: its cells show the
    initial model, so a contrast with them says nothing about ZO-SGD."""
    folder = store_with_scores(
        tmp_path, tiny_suite, by_optimizer(0.1, 0.0),
        best_step_of=lambda run: 0 if run.cell.optimizer == "zo-sgd" else 3)
    checked = findings.check(tmp_path, TINY_FINDINGS)
    assert [[e.verdict for e in estimates] for _, estimates in checked] == [
        ["untrained cell"] * 2, ["untrained cell"], ["untrained cell"]]
    assert checked[0][1][0].untrained == ["zo-sgd/full"] and checked[0][1][0].value is not None
    assert "untrained cell (zo-sgd/full)" in findings.markdown(checked, "cmd")
    lines = compare(folder, "fo-adam/full", "zo-sgd/full").lines()
    assert lines[-1].startswith("untrained: zo-sgd/full (best on validation at step 0")


def test_findings_fall_back_to_unpaired_intervals_for_older_records(tmp_path, tiny_suite):
    store_with_scores(tmp_path, tiny_suite, lambda run: None)
    (_, (estimate, _)), *_ = findings.check(tmp_path, TINY_FINDINGS)
    assert estimate.method.startswith("unpaired binomial over 200 examples")
    assert estimate.value == 0.0 and estimate.verdict == "not separated"


def test_a_missing_store_leaves_its_findings_queued(tmp_path):
    checked = findings.check(tmp_path, TINY_FINDINGS[:1])
    assert [e.missing for e in checked[0][1]] == [["the tiny store"]] * 2


def test_a_store_with_its_plan_and_no_run_yet_leaves_its_findings_queued(tmp_path, tiny_suite):
    """A bench writes its plan before its first run ends: the findings page still builds."""
    store_with_scores(tmp_path, tiny_suite, by_optimizer(0.1, 0.0), only=lambda run: False)
    checked = findings.check(tmp_path, TINY_FINDINGS[:1])
    assert [(e.verdict, e.missing) for e in checked[0][1]] == [
        ("queued", ["a finished run of the tiny store"])] * 2


@pytest.mark.parametrize("method", list(findings.FRONTIER_CLAIMS))
def test_each_frontier_method_is_checked_against_zo_sgd_on_full_and_lora(method):
    (finding,) = [f for f in findings.FINDINGS
                  if f.suite == "cpu-frontier" and f.claim.startswith(
                      findings.FRONTIER_CLAIMS[method])]
    assert [c.terms for c in finding.contrasts] == [
        ((1.0, f"{method}/{s}"), (-1.0, f"zo-sgd/{s}")) for s in ("full", "lora")]
    assert finding.margin == 0.0 and "equal forward budget" in finding.detail


def test_frontier_findings_wait_for_their_store(tmp_path):
    frontier = [f for f in findings.FINDINGS if f.suite == "cpu-frontier"]
    checked = findings.check(tmp_path, frontier)
    assert {e.verdict for _, estimates in checked for e in estimates} == {"queued"}
    text = findings.markdown(checked, "cmd")
    assert text.count("queued (waiting for the cpu-frontier store)") == 2 * len(frontier)


@pytest.mark.parametrize(
    ("curves", "reaches"),
    [
        # ZO-SGD ends at 0.6 (seed mean); FO-Adam gets there at step 1, 2 passes of 4
        ({"fo-adam": [0.5, 0.6, 0.7], "zo-sgd": [0.5, 0.55, 0.6]},
         "fo-adam/full 2 of 4, zo-sgd/full 4 of 4 (target 60.0)"),
        ({"fo-adam": [0.5, 0.52, 0.58], "zo-sgd": [0.5, 0.55, 0.6]},
         "fo-adam/full not in 4 (best 58.0), zo-sgd/full 4 of 4 (target 60.0)"),
        ({"fo-adam": [0.6, 0.5, 0.5], "zo-sgd": [0.5, 0.55, 0.6]},
         "fo-adam/full 0 (the initial model scores it), zo-sgd/full 4 of 4 (target 60.0)"),
        (None, "—"),  # no curves recorded: nothing to say
    ],
)
def test_a_convergence_claim_says_each_cells_forward_passes_to_zo_sgds_end(
        tmp_path, tiny_suite, curves, reaches):
    store_with_scores(tmp_path, tiny_suite, by_optimizer(0.1, 0.0),
                      curve_of=None if curves is None
                      else lambda run: curves[run.cell.optimizer])
    claim = findings.Finding("FO converges faster", "tiny",
                             (findings.difference("fo-adam/full", "zo-sgd/full"),),
                             time_to_accuracy=True)
    ((_, (item,)),) = checked = findings.check(tmp_path, [claim])
    assert item.verdict == "yes" and (item.reaches or "—") == reaches
    row = findings.markdown(checked, "cmd").split("## FO converges faster")[1]
    assert "forward passes to ZO-SGD's best validation" in row and f"| {reaches} |" in row


def measured(verdict, value=None, untrained=()):
    item = findings.Estimate(findings.difference(f"{verdict}/full", "zo-sgd/full"),
                             verdict=verdict, untrained=list(untrained))
    if value is not None:
        item.value, item.low, item.high = value, value - 0.02, value + 0.03
    return item


@pytest.mark.parametrize(
    ("estimates", "verdicts", "shown"),
    [
        ([measured("yes", 0.1)], "yes", "yes/full − zo-sgd/full: +10.0 (+8.0 to +13.0)"),
        # the first contrast on trained cells, not the first listed
        ([measured("untrained cell", 0.0, ["zo-sgd/full"]), measured("yes", 0.2),
          measured("yes", 0.1), measured("not separated", 0.01)],
         "2 yes, 1 with an untrained cell, 1 not separated",
         "yes/full − zo-sgd/full: +20.0 (+18.0 to +23.0)"),
        ([measured("untrained cell", 0.0, ["zo-sgd/full"])] * 2, "2 with an untrained cell",
         "untrained cell/full − zo-sgd/full: +0.0 (-2.0 to +3.0)"),
        ([measured("queued")] * 2, "2 queued", "—"),
    ],
)
def test_a_findings_summary_row_is_its_verdicts_and_one_contrast(estimates, verdicts, shown):
    finding = findings.Finding("A claim", "tiny", tuple(e.contrast for e in estimates))
    assert findings.summary_row(finding, estimates, "tiny/README.md") == [
        "A claim", verdicts, shown, "[tiny](tiny/README.md)"]
    assert findings.summary_row(finding, estimates, None)[-1] == "tiny"


def test_every_finding_heads_its_summary_row_in_a_few_words():
    for finding in findings.FINDINGS:
        assert len(finding.claim) <= 60 and finding.detail.endswith("."), finding.claim


def test_seeds_widen_an_interval_in_quadrature():
    assert findings.widened(0.1, 0.0, 0.2, []) == (0.0, 0.2)
    low, high = findings.widened(0.1, 0.0, 0.2, [0.05])
    half = math.hypot(0.1, 1.959964 * 0.05)
    assert (low, high) == pytest.approx((0.1 - half, 0.1 + half))


def test_the_findings_page_is_written_or_refused_in_one_line(tmp_path, tiny_suite, capsys):
    store_with_scores(tmp_path, tiny_suite, by_optimizer(0.1, 0.0))
    out = tmp_path / "findings.md"
    assert findings.main([str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# The paper's findings") and "python -m zotune.bench.findings" in text
    assert findings.main([str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"zotune: error: {tmp_path / 'absent'} is not a folder"]
    assert findings.main([str(tmp_path), "--out", str(out / "under-a-file.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zotune: error: ")
