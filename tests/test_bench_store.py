"""The results store as a record git can carry: a suite half-run in one folder, committed and
cloned, resumes in the clone and runs only what is missing; a damaged database or outcome file
does not stop the bench."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from zotune import cli
from zotune.bench.runner import RUNS_DIR, Runner
from zotune.bench.store import (
    CURVE_FILE,
    DB_NAME,
    GITIGNORE,
    RECORD_FILE,
    RECORD_FILES,
    ResultsStore,
    RunRecord,
    clear_run_files,
)
from zotune.bench.suite import config_defaults, expand_suite, run_id
from zotune.bench.worker import OUTCOME_FILE
from zotune.training.run_folder import METRICS_FILE

DATA = Path(__file__).parent / "data"
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]


def tiny_suite(lrs, data_dir):
    """ZO-SGD on the tiny random LLaMA, full tuning, one run per learning rate, one step."""
    return {
        "name": "tiny",
        "base": {
            "model": {"name": "random:tiny-llama"},
            "task": {"name": "sst2", "num_train": 8, "num_val": 4, "num_test": 4,
                     "data_dir": str(data_dir)},
            "train": {"steps": 1, "batch_size": 4, "eval_every": 1, "eval_batch_size": 8},
        },
        "grid": {"tuning": ["full"], "optimizer": ["zo-sgd"]},
        "sweep": {"zo-sgd": {"lr": lrs, "eps": [1e-3]}},
        "seeds": [0],
    }


def git(*args, cwd):
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True)


def run_cli(argv, capsys):
    code = cli.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_store_committed_to_git_resumes_in_a_clone_running_only_the_missing_runs(
    sst2_dir, tmp_path, capsys
):
    origin = tmp_path / "origin"
    origin.mkdir()
    git("init", "-q", cwd=origin)
    half = origin / "half.yaml"
    half.write_text(yaml.safe_dump(tiny_suite([1e-3], sst2_dir)))
    code, _, err = run_cli(["bench", half, "--results", origin / "results"], capsys)
    assert code == 0, err
    git("add", "-A", cwd=origin)
    git("commit", "-qm", "half of the suite", cwd=origin)
    tracked = git("ls-files", cwd=origin).stdout.split()
    run_files = [p for p in tracked if p.startswith(f"results/{RUNS_DIR}/")]
    assert run_files and {p.rsplit("/", 1)[1] for p in run_files} <= set(RECORD_FILES)
    assert not any(p.endswith(".pt") or DB_NAME in p for p in tracked)

    clone = tmp_path / "clone"
    git("clone", "-q", str(origin), str(clone), cwd=tmp_path)
    whole = clone / "whole.yaml"
    whole.write_text(yaml.safe_dump(tiny_suite([1e-3, 1e-4], sst2_dir)))
    code, out, _ = run_cli(["bench", whole, "--results", clone / "results", "--dry-run"], capsys)
    assert code == 0 and out.strip().endswith("2 runs, 1 to run")
    code, out, err = run_cli(["bench", whole, "--results", clone / "results"], capsys)
    assert code == 0, err
    assert "1 done before, 1 to run" in err
    with ResultsStore(origin / "results", create=False) as store:
        (first,) = store.records()
    with ResultsStore(clone / "results", create=False) as store:
        records = {r.id: r for r in store.records()}
    assert len(records) == 2 and {r.status for r in records.values()} == {"done"}
    carried = records[first.id]
    assert carried.metrics == first.metrics and carried.attempts == 1
    assert (carried.config, carried.hparams, carried.cell) == (
        first.config, first.hparams, first.cell)
    code, _, err = run_cli(["report", clone / "results", "--no-plots"], capsys)
    assert code == 0, err


# Curves: a run's record files describe one attempt ------------------------------------------

FINISHED_CURVE = '{"step": 1, "loss": 0.7}\n{"step": 1, "final": {"test_accuracy": 0.5}}\n'
PARTIAL_CURVE = '{"step": 1, "loss": 0.9}\n'
# The .gitignore zotune wrote before curve files, which carried metrics.jsonl itself.
OLDER_GITIGNORE = """\
# Written by zotune: the record is runs/*/{record.json,metrics.jsonl} and suites/*.json;
# the database is a cache rebuilt from them, checkpoints and logs stay on their machine.
/results.sqlite*
/.runner.lock
/runs/*/*
!/runs/*/record.json
!/runs/*/metrics.jsonl
"""


def record_one(store, run, status="done", curve=FINISHED_CURVE):
    """Record ``run`` as the runner does after training wrote ``curve`` (None: no curve)."""
    run_dir = store.results_dir / RUNS_DIR / run.id
    run_dir.mkdir(parents=True, exist_ok=True)
    if curve is None:
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
    else:
        (run_dir / METRICS_FILE).write_text(curve)
    store.record(RunRecord.for_run(
        "tiny", run, status=status, metrics={"test_accuracy": 0.5}, error=None,
        started_at=1.0, finished_at=2.0, zotune_version="0.1.0", hostname="h", hardware="cpu",
    ))
    return run_dir


def test_git_add_of_a_store_mid_run_carries_only_the_finished_attempts(tmp_path):
    git("init", "-q", cwd=tmp_path)
    finished, rerun, first = expand_suite(tiny_suite([1e-1, 1e-2, 1e-3], "data")).runs
    with ResultsStore(tmp_path / "results") as store:
        record_one(store, finished)
        rerun_dir = record_one(store, rerun)
    # Training is under way: a rerun (its folder cleared but for its record) and a first run.
    clear_run_files(rerun_dir)
    (rerun_dir / METRICS_FILE).write_text(PARTIAL_CURVE)
    (first_dir := tmp_path / "results" / RUNS_DIR / first.id).mkdir()
    (first_dir / METRICS_FILE).write_text(PARTIAL_CURVE)
    git("add", "-A", cwd=tmp_path)
    tracked = git("ls-files", "results/runs", cwd=tmp_path).stdout.split()
    assert sorted(tracked) == sorted(
        f"results/{RUNS_DIR}/{run.id}/{name}" for run in (finished, rerun) for name in RECORD_FILES
    )
    assert (rerun_dir / CURVE_FILE).read_text() == FINISHED_CURVE, "the recorded attempt's"


def test_an_attempt_that_wrote_no_curve_leaves_no_earlier_curve_beside_its_record(tmp_path):
    (run,) = expand_suite(tiny_suite([1e-3], "data")).runs
    with ResultsStore(tmp_path) as store:
        run_dir = record_one(store, run)
        assert (run_dir / CURVE_FILE).read_text() == FINISHED_CURVE
        record_one(store, run, status="failed", curve=None)
    assert not (run_dir / CURVE_FILE).exists()


def newer_than_its_record(metrics):
    record_time = (metrics.parent / RECORD_FILE).stat().st_mtime
    os.utime(metrics, (record_time + 5, record_time + 5))


def test_a_store_from_before_curve_files_adopts_its_metrics_as_curves(tmp_path):
    """A recorded run's metrics.jsonl becomes its curve, whatever order a checkout wrote the
    files in; a rerun's, going or finished but not yet recorded, waits for its own record; a
    failed attempt's counts when it is older than its record; the older .gitignore goes."""
    done, failed, going, unrecorded = expand_suite(
        tiny_suite([1e-1, 1e-2, 1e-3, 1e-4], "data")).runs
    with ResultsStore(tmp_path) as store:
        for run in (done, going, unrecorded):
            (record_one(store, run) / CURVE_FILE).unlink()
        (record_one(store, failed, status="failed", curve=PARTIAL_CURVE) / CURVE_FILE).unlink()
    (tmp_path / ".gitignore").write_text(OLDER_GITIGNORE)
    (tmp_path / DB_NAME).unlink()
    runs = tmp_path / RUNS_DIR
    (runs / going.id / METRICS_FILE).write_text(PARTIAL_CURVE)
    (runs / unrecorded.id / METRICS_FILE).write_text(FINISHED_CURVE.replace("0.5", "0.75"))
    for run in (done, going, unrecorded):
        newer_than_its_record(runs / run.id / METRICS_FILE)
    with ResultsStore(tmp_path, create=False):
        pass
    assert (runs / done.id / CURVE_FILE).read_text() == FINISHED_CURVE
    assert (runs / failed.id / CURVE_FILE).read_text() == PARTIAL_CURVE
    assert not (runs / going.id / CURVE_FILE).exists()
    assert not (runs / unrecorded.id / CURVE_FILE).exists()
    assert (tmp_path / ".gitignore").read_text() == GITIGNORE


def test_a_damaged_record_beside_a_curve_is_rewritten_and_gets_its_curve(tmp_path, capsys):
    (run,) = expand_suite(tiny_suite([1e-3], "data")).runs
    with ResultsStore(tmp_path) as store:
        run_dir = record_one(store, run)
    (run_dir / CURVE_FILE).unlink()
    (run_dir / RECORD_FILE).write_text("{\"id\": ")
    with ResultsStore(tmp_path, create=False) as store:
        assert [r.id for r in store.records()] == [run.id]
    assert f"{run_dir / RECORD_FILE}: damaged" in capsys.readouterr().err
    with ResultsStore(tmp_path, create=False):
        pass
    assert (run_dir / CURVE_FILE).read_text() == FINISHED_CURVE, "adopted once it is sound"


def test_a_gitignore_the_user_wrote_is_left_alone(tmp_path):
    (tmp_path / ".gitignore").write_text("*.pt\n")
    with ResultsStore(tmp_path):
        pass
    assert (tmp_path / ".gitignore").read_text() == "*.pt\n"


# Damaged files -----------------------------------------------------------------------------


def store_with_records(results, count=12):
    """A store of ``count`` finished runs (no training): a database of several pages."""
    suite = expand_suite(tiny_suite([10.0 ** -k for k in range(1, count + 1)], "data"))
    with ResultsStore(results) as store:
        for run in suite.runs:
            metrics = {"best_val_accuracy": 0.5, "test_accuracy": 0.5, "pad": "x" * 500}
            store.record(RunRecord.for_run(
                "tiny", run, status="done", metrics=metrics, error=None, started_at=1.0,
                finished_at=2.0, zotune_version="0.1.0", hostname="h", hardware="cpu",
            ))
        return {r.id: r for r in store.records()}


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def bad_header(path):
    data = path.read_bytes()
    path.write_bytes(b"not a database!\0" + data[16:])


def bad_pages(path):
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) >= 4 * page, "the database has pages to damage"
    data[page : len(data)] = bytes(range(256)) * ((len(data) - page) // 256)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, bad_header, bad_pages])
def test_a_damaged_database_is_rebuilt_from_the_record_files(damage, tmp_path, capsys):
    before = store_with_records(tmp_path)
    damage(tmp_path / DB_NAME)
    with ResultsStore(tmp_path, create=False) as store:
        after = {r.id: r for r in store.records()}
        assert all(len(store.attempts(run_id)) == 1 for run_id in after)
    assert after == before
    warning = capsys.readouterr().err.strip()
    assert len(warning.splitlines()) == 1
    assert f"{tmp_path / DB_NAME} was damaged" in warning and "rebuilt it from the 12" in warning
    code, _, err = run_cli(["report", tmp_path, "--no-plots"], capsys)
    assert code == 0 and "damaged" not in err, "rebuilt once, sound since"


def test_rows_without_a_record_file_are_written_out(tmp_path):
    before = store_with_records(tmp_path, count=2)
    for stored_id in before:
        (tmp_path / RUNS_DIR / stored_id / RECORD_FILE).unlink()
    with ResultsStore(tmp_path):
        pass
    (tmp_path / DB_NAME).unlink()
    with ResultsStore(tmp_path, create=False) as store:
        assert {r.id: r for r in store.records()} == before


@pytest.mark.parametrize(
    "content", ["", "{\"run_id\": ", "[1, 2]", "{\"run_id\": \"RUN\"}", "\xff\xfe"]
)
def test_a_damaged_outcome_file_is_named_and_the_run_runs_again(
    content, sst2_dir, tmp_path, capsys
):
    suite = expand_suite(tiny_suite([1e-3], sst2_dir))
    (run,) = suite.runs
    outcome = tmp_path / RUNS_DIR / run.id / OUTCOME_FILE
    outcome.parent.mkdir(parents=True)
    outcome.write_bytes(content.replace("RUN", run.id).encode("latin-1"))
    summary = Runner(suite, tmp_path).run()
    assert (summary.done, summary.failed, summary.ran) == (1, 0, 1)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"{outcome}: damaged" in warnings[0]
    assert json.loads(outcome.read_text())["run_id"] == run.id, "written anew"


@pytest.mark.parametrize(
    "content", ["", "{\"id\": ", "[]", "{}", "{\"id\": \"RUN\", \"attempts\": []}"]
)
def test_a_damaged_record_file_is_named_and_rewritten_from_the_database(content, tmp_path,
                                                                       capsys):
    before = store_with_records(tmp_path, count=2)
    damaged = tmp_path / RUNS_DIR / next(iter(before)) / RECORD_FILE
    damaged.write_text(content.replace("RUN", damaged.parent.name))
    with ResultsStore(tmp_path, create=False) as store:
        assert {r.id: r for r in store.records()} == before
    warning = capsys.readouterr().err.strip()
    assert len(warning.splitlines()) == 1 and f"{damaged}: damaged" in warning
    assert json.loads(damaged.read_text())["id"] == damaged.parent.name


# Run ids across zotune versions ------------------------------------------------------------


def test_a_key_at_its_default_leaves_the_run_id_as_it_was(tmp_path):
    """A release that adds a config key (whose default keeps the old behaviour) must not change
    the ids of runs stored before it: the id hashes what a config sets apart from defaults."""
    (run,) = expand_suite(tiny_suite([1e-3], tmp_path)).runs
    older = json.loads(json.dumps(run.config))
    for section, key in [("train", "objective"), ("task", "demos"), ("train", "report_to")]:
        del older[section][key]  # keys zotune 0.1 did not have
    assert run_id(older) == run.id
    changed = json.loads(json.dumps(run.config))
    changed["train"]["objective"] = "accuracy"
    assert run_id(changed) != run.id, "a key set away from its default is part of the id"


def test_the_defaults_that_run_ids_rest_on_are_pinned():
    """Changing a default would give a stored run's id to a run that behaves differently: make
    such a change a new key or value instead, or re-run the stores (then update this file)."""
    pinned = json.loads((DATA / "config-defaults.json").read_text())
    assert config_defaults() == pinned


def test_a_store_keyed_by_an_older_zotune_is_rekeyed_and_resumes(sst2_dir, tmp_path, capsys):
    suite_data = tiny_suite([1e-3, 1e-4], sst2_dir)
    (path := tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite_data))
    results = tmp_path / "results"
    code, _, err = run_cli(["bench", path, "--results", results, "--only", "zo-sgd"], capsys)
    assert code == 0, err
    with ResultsStore(results, create=False) as store:
        before = {r.id: r for r in store.records()}
    # What an older zotune left: its own ids (here: made up) in the folders, records and plan.
    renamed = {}
    for new_id in before:
        old_id = f"old{new_id[3:]}"
        (results / RUNS_DIR / new_id).rename(results / RUNS_DIR / old_id)
        record_path = results / RUNS_DIR / old_id / RECORD_FILE
        payload = json.loads(record_path.read_text())
        payload["id"] = old_id
        record_path.write_text(json.dumps(payload))
        renamed[old_id] = new_id
    plan_path = next((results / "suites").glob("*.json"))
    plan_path.write_text(plan_path.read_text().replace(*next(iter(
        (f'"{new}"', f'"{old}"') for old, new in renamed.items()))))
    for suffix in ("", "-wal", "-shm"):
        (results / f"{DB_NAME}{suffix}").unlink(missing_ok=True)
    with ResultsStore(results, create=False) as store:
        after = {r.id: r for r in store.records()}
        plan_ids = {entry["id"] for entry in store.plans()[0].runs}
    assert after.keys() == before.keys() and plan_ids == set(before)
    assert f"re-keyed {len(renamed)} runs" in capsys.readouterr().err
    assert not any((results / RUNS_DIR / old).exists() for old in renamed)
    code, _, err = run_cli(["bench", path, "--results", results], capsys)
    assert code == 0 and "2 done before, 0 to run" in err


def test_old_records_get_the_predictions_their_scores_imply_and_nothing_else_changes(
        tmp_path, sst2_dir):
    """A record from before runs kept predictions: on a two-candidate task its 0/1 scores
    give each prediction exactly, so the report can mark a constant predictor."""
    from zotune.bench.backfill import backfill
    from zotune.bench.selection import ONE_CLASS, select
    from zotune.config import config_from
    from zotune.training.run import load_task_splits

    runs = expand_suite(tiny_suite([1e-3, 1e-4], sst2_dir)).runs
    test = load_task_splits(config_from(runs[0].config), lambda message: None).test
    labels = [example.label for example in test]
    constant = [float(label == 1) for label in labels]  # a model answering 1 throughout
    with ResultsStore(tmp_path) as store:
        for run, scores in zip(runs, [constant, [1.0] * len(labels)], strict=True):
            store.record(RunRecord.for_run(
                "tiny", run, status="done",
                metrics={"test_accuracy": 0.5, "best_val_accuracy": 0.5, "best_step": 1,
                         "test_scores": scores, "test_examples": len(scores)},
                error=None, started_at=1.0, finished_at=2.0, zotune_version="0.1.0",
                hostname="h", hardware="cpu"))
    before = {run.id: json.loads((tmp_path / RUNS_DIR / run.id / RECORD_FILE).read_text())
              for run in runs}
    assert backfill(tmp_path, log=lambda message: None) == (2, 0)
    assert backfill(tmp_path, log=lambda message: None) == (0, 0), "done once"
    for run in runs:
        after = json.loads((tmp_path / RUNS_DIR / run.id / RECORD_FILE).read_text())
        added = after["metrics"].pop("test_predictions")
        assert after == before[run.id], "attempts, timings and other metrics are kept"
        expected = [1] * len(labels) if run is runs[0] else labels
        assert added == expected
    with ResultsStore(tmp_path, create=False) as store:
        records = {r.id: r for r in store.records()}
        assert records[runs[0].id].attempts == 1
    (cell,) = select([records[runs[0].id]])
    assert cell.untrained_reasons == [ONE_CLASS]


@pytest.mark.parametrize(
    ("candidates", "correct", "scores", "expected"),
    [
        (2, (), [1.0, 0.0], [1, 0]),  # labels 1, 1: right, then wrong
        (3, (), [1.0, 0.0], None),  # a wrong answer of three candidates is not determined
        (2, (0,), [1.0, 1.0], None),  # two right answers: which one was given is not
        (2, (), [0.5, 1.0], None),  # not a 0/1 score
        (2, (), [1.0], None),  # not one score per example
    ],
)
def test_predictions_are_derived_only_where_the_score_determines_them(candidates, correct,
                                                                      scores, expected):
    from zotune.bench.backfill import derived_predictions
    from zotune.tasks.example import Example

    example = Example(("q",) * candidates, tuple("abc"[:candidates]), 1, correct=correct)
    assert derived_predictions([example, example], scores) == expected
