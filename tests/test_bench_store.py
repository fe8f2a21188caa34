"""The results store as a record git can carry: a suite half-run in one folder, committed and
cloned, resumes in the clone and runs only what is missing; a damaged database or outcome file
does not stop the bench."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from zotune import cli
from zotune.bench.runner import RUNS_DIR, Runner
from zotune.bench.store import (
    DB_NAME,
    RECORD_FILE,
    RECORD_FILES,
    ResultsStore,
    RunRecord,
)
from zotune.bench.suite import expand_suite
from zotune.bench.worker import OUTCOME_FILE

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
    for run_id in before:
        (tmp_path / RUNS_DIR / run_id / RECORD_FILE).unlink()
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
