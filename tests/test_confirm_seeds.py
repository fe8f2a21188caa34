"""Confirming seeds: a suite's extra seeds run only at each cell's chosen setting."""

from __future__ import annotations

import json

import pytest

from zotune import cli
from zotune.bench.runner import describe_plan, plan, run_states
from zotune.bench.selection import select
from zotune.bench.store import ResultsStore, RunRecord, SuitePlan
from zotune.bench.suite import SuiteError, expand_suite

ZO_FULL = "zo-sgd/full"


def zo_full_suite(tiny_suite, data_dir=None, **changes):
    """ZO-SGD full tuning at two rates, seed 0 for the sweep, seeds 1 and 2 to confirm."""
    return tiny_suite(
        data_dir,
        grid={"tuning": ["full"], "optimizer": ["zo-sgd"]},
        sweep={"zo-sgd": {"lr": [1e-3, 1e-4], "eps": [1e-3]}},
        seeds=[0],
        **{"confirm_seeds": [1, 2], **changes},
    )


def record(run, val, test=0.5):
    return RunRecord.for_run(
        "tiny", run, status="done",
        metrics={"best_val_accuracy": val, "test_accuracy": test, "best_step": 1},
        error=None, started_at=0.0, finished_at=1.0, zotune_version="0", hostname="h",
        hardware="cpu",
    )


def test_confirming_runs_are_expanded_for_every_setting_and_marked(tiny_suite):
    suite = expand_suite(zo_full_suite(tiny_suite))
    by_seed = {}
    for run in suite.runs:
        by_seed.setdefault(run.seed, []).append(run)
    assert sorted(by_seed) == [0, 1, 2]
    assert all(not r.confirm for r in by_seed[0]) and len(by_seed[0]) == 2
    assert all(r.confirm for r in by_seed[1] + by_seed[2])
    plan_runs = SuitePlan.of(suite, "cmd").runs
    assert sum(entry.get("confirm", False) for entry in plan_runs) == 4


@pytest.mark.parametrize(
    "confirm_seeds, message",
    [
        ([0, 1], "both a sweep seed and a confirming seed"),
        ([1, 1], "listed twice"),
        (["one"], "non-negative integers"),
        ({"adam": [1]}, "names nothing"),
    ],
)
def test_bad_confirming_seeds_are_refused_by_name(tiny_suite, confirm_seeds, message):
    with pytest.raises(SuiteError, match=message):
        expand_suite(zo_full_suite(tiny_suite, confirm_seeds=confirm_seeds))


def test_a_selector_table_confirms_only_the_cells_it_names(tiny_suite):
    data = tiny_suite(seeds=[0], confirm_seeds={ZO_FULL: [1, 2]})
    suite = expand_suite(data)
    confirming = {(r.cell.optimizer, r.cell.scheme) for r in suite.runs if r.confirm}
    assert confirming == {("zo-sgd", "full")}


def test_the_choice_rests_on_the_sweep_seeds_and_the_chosen_setting_takes_its_confirmations(
    tiny_suite,
):
    suite = expand_suite(zo_full_suite(tiny_suite))
    entries = SuitePlan.of(suite, "cmd").runs
    sweep = {r.hparams["optimizer.lr"]: r for r in suite.runs if not r.confirm}
    records = [record(sweep[1e-3], val=0.80, test=0.70), record(sweep[1e-4], val=0.75)]
    (before,) = select(records, entries)
    assert before.settled and before.chosen.hparams["optimizer.lr"] == 1e-3
    assert before.partial, "the chosen setting now waits for its two confirming seeds"
    assert before.chosen.expected_seeds == 3

    # Confirming seeds that do worse than the other rate's seed 0 do not move the choice.
    confirming = [r for r in suite.runs if r.confirm and r.hparams["optimizer.lr"] == 1e-3]
    records += [record(run, val=0.60, test=0.60) for run in confirming]
    (after,) = select(records, entries)
    assert after.chosen.hparams["optimizer.lr"] == 1e-3
    assert not after.partial
    assert after.chosen.test_mean == pytest.approx((0.70 + 0.60 + 0.60) / 3)


def test_confirming_runs_wait_until_the_sweep_is_settled(tiny_suite):
    suite = expand_suite(zo_full_suite(tiny_suite))
    sweep = {r.hparams["optimizer.lr"]: r for r in suite.runs if not r.confirm}

    def to_run(records):
        statuses = {r.id: r.status for r in records}
        planned = plan(suite, statuses, records=records)
        return {(item.spec.seed, item.spec.hparams["optimizer.lr"])
                for item in planned if item.will_run}, planned

    nothing_recorded, planned = to_run([])
    assert nothing_recorded == {(0, 1e-3), (0, 1e-4)}
    assert "4 confirming runs waiting for their cell's choice" in describe_plan(planned)
    one_missing, _ = to_run([record(sweep[1e-3], val=0.9)])
    assert one_missing == {(0, 1e-4)}, "the choice could still change"
    settled, _ = to_run([record(sweep[1e-3], val=0.7), record(sweep[1e-4], val=0.9)])
    assert settled == {(1, 1e-4), (2, 1e-4)}


def test_bench_runs_the_sweep_then_the_chosen_settings_confirmations(
    tiny_suite, sst2_dir, tmp_path, capsys
):
    path = tmp_path / "suite.json"  # JSON is YAML
    path.write_text(json.dumps(zo_full_suite(tiny_suite, sst2_dir)))
    results = tmp_path / "results"
    assert cli.main(["bench", str(path), "--results", str(results)]) == 0
    captured = capsys.readouterr()
    assert "2 to run (2 confirming a chosen setting)" in captured.out + captured.err
    with ResultsStore(results, create=False) as store:
        records = store.records()
        statuses = run_states(store)
    assert len(records) == 4 and set(statuses.values()) == {"done"}
    (selection,) = select(records, SuitePlan.of(expand_suite(json.loads(path.read_text())),
                                                "cmd").runs)
    chosen = selection.chosen
    assert sorted(r.seed for r in chosen.done) == [0, 1, 2]
    assert {r.hparams["optimizer.lr"] for r in records if r.seed > 0} == {
        chosen.hparams["optimizer.lr"]
    }
    # Run again, nothing is left to do.
    assert cli.main(["bench", str(path), "--results", str(results)]) == 0
    captured = capsys.readouterr()
    assert "0 to run" in captured.out + captured.err
