"""The results store as a record git can carry: a suite half-run in one folder, committed and
cloned, resumes in the clone and runs only what is missing; a damaged database or outcome file
does not stop the bench."""

from __future__ import annotations

import subprocess

import yaml

from zotune import cli
from zotune.bench.runner import RUNS_DIR
from zotune.bench.store import DB_NAME, RECORD_FILES, ResultsStore

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
