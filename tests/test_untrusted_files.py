"""Files are data (issue 31, "insecure"): a checkpoint, a results store, a suite or a task
file someone else wrote runs no code and writes nothing outside the folders the user named.
Each hostile file carries a payload that would leave a marker file if it ever ran; each test
shows the marker is absent and that no file appeared outside the folders given."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest
import torch
import yaml

from zotune import cli
from zotune.bench.runner import WORKER_COMMAND
from zotune.bench.store import DB_NAME, RECORD_FILE, RUNS_DIR, ResultsStore, RunRecord
from zotune.bench.suite import SuiteError, expand_suite
from zotune.tasks.taskfile import TaskFileError, load_task_file
from zotune.training.checkpoints import CheckpointError, load_resume_checkpoint


def run_cli(argv, capsys):
    code = cli.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_argv(sst2_dir, out, *flags):
    return [
        "train", "--model=random:tiny-llama", f"--data-dir={sst2_dir}", "--num-train=16",
        "--num-val=6", "--num-test=8", "--steps=2", "--batch-size=4", "--eval-every=1",
        "--lr=1e-3", "--no-progress", f"--output-dir={out}", *flags,
    ]


class Payload:
    """A pickle that, unpickled, writes ``marker`` (any code could run in its place)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.fixture
def finished_run(sst2_dir, tmp_path, capsys):
    out = tmp_path / "shared" / "run"
    code, _, err = run_cli(train_argv(sst2_dir, out), capsys)
    assert code == 0, err
    return out


# 1: last.pt is unpickled with weights_only=True ---------------------------------------------


def test_a_checkpoint_that_would_run_code_is_refused_by_name(finished_run, sst2_dir, tmp_path,
                                                             capsys):
    marker = tmp_path / "marker"
    checkpoint = torch.load(finished_run / "last.pt", weights_only=True)
    checkpoint["scheduler"]["hook"] = Payload(marker)
    torch.save(checkpoint, finished_run / "last.pt")
    code, _, err = run_cli(train_argv(sst2_dir, finished_run, "--resume", "--steps=3"), capsys)
    assert code == 2 and not marker.exists()
    assert "last.pt: refused: it holds objects other than tensors" in err
    with pytest.raises(CheckpointError, match="could run code"):
        load_resume_checkpoint(finished_run / "last.pt")
    assert not marker.exists()


def test_a_checkpoint_this_zotune_writes_resumes_with_weights_only(finished_run, sst2_dir,
                                                                    capsys):
    """What 0.2 wrote (the same keys and kinds of value) loads safely, seed stream and all."""
    checkpoint = load_resume_checkpoint(finished_run / "last.pt")
    assert checkpoint["optimizer"]["zotune_seed_stream"]["steps_taken"] == 2
    code, _, err = run_cli(train_argv(sst2_dir, finished_run, "--resume", "--steps=3"), capsys)
    assert code == 0, err


# 2: a store's run ids never become paths outside it ------------------------------------------


def record(run_id: str) -> RunRecord:
    from zotune.bench.suite import Cell

    return RunRecord(
        id=run_id, suite="tiny", cell=Cell("random:tiny-llama", "sst2", "full", "zo-sgd"),
        hparams={"lr": 1e-3}, seed=0, config={"train": {}}, status="done",
        metrics={"best_val_accuracy": 0.5, "test_accuracy": 0.5}, error=None,
        started_at=1.0, finished_at=2.0, zotune_version="0.2.0", hostname="h", hardware="cpu",
    )


@pytest.mark.parametrize("bad_id", ["../../../../elsewhere", "..", "a/b", "/abs", ""])
def test_a_store_row_whose_id_is_a_path_writes_nothing_outside_the_store(bad_id, tmp_path,
                                                                          capsys):
    store_dir = tmp_path / "deep" / "er" / "store"
    with ResultsStore(store_dir) as store:
        store.record(record("a1b2c3d4e5f6"))
    db = sqlite3.connect(store_dir / DB_NAME)
    with db:
        db.execute("UPDATE runs SET id = ? WHERE id = 'a1b2c3d4e5f6'", (bad_id,))
        db.execute("UPDATE attempts SET run_id = ?", (bad_id,))
    db.close()
    (store_dir / RUNS_DIR / "a1b2c3d4e5f6" / RECORD_FILE).unlink()
    before = files_under(tmp_path) - files_under(store_dir)
    _, _, err = run_cli(["report", store_dir], capsys)
    assert files_under(tmp_path) - files_under(store_dir) == before
    assert "is not a run id" in err and "Traceback" not in err, err
    with ResultsStore(store_dir) as store, pytest.raises(ValueError, match="not a run id"):
        store.run_dir(bad_id)


# 3: a bench worker does not import from the working folder -----------------------------------


def test_a_worker_does_not_import_modules_from_the_working_folder(tmp_path):
    import subprocess

    marker = tmp_path / "marker"
    (tmp_path / "yaml.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "json.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    job = tmp_path / "job.json"
    job.write_text("{}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # An empty job: the worker imports its modules, fails on the job, and says so.
    done = subprocess.run([*WORKER_COMMAND, str(job)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert not marker.exists(), done.stderr
    assert "zotune: error: KeyError" in done.stderr
    # PYTHONPATH still counts: the worker found zotune and yaml through it.
    probe = subprocess.run(
        [WORKER_COMMAND[0], "-c", WORKER_COMMAND[2].split("from zotune")[0]
         + "import yaml; print(yaml.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert probe.returncode == 0 and str(tmp_path) not in probe.stdout, probe.stderr


# 4, 5: a suite names a store and paths inside it ---------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "..", ".hidden", "a/b", ""])
def test_a_suite_name_that_is_a_path_is_refused(name, tiny_suite):
    with pytest.raises(SuiteError, match="is not a plain name"):
        expand_suite(tiny_suite(name=name))


@pytest.mark.parametrize("path", ["/any/path", "../../out", "~/out", "model/../../x"])
def test_a_suite_cannot_export_outside_the_store(path, tiny_suite):
    suite = tiny_suite()
    suite["base"]["train"]["save_model"] = path
    with pytest.raises(SuiteError, match=r"train\.save_model .* stay inside the run's folder"):
        expand_suite(suite)


def test_a_suite_export_lands_in_the_run_folder_and_the_command_line_may_name_any(
        two_run_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = two_run_suite()
    suite["base"]["train"]["save_model"] = "model"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    code, _, err = run_cli(["bench", path, "--results", tmp_path / "store"], capsys)
    assert code == 0, err
    exported = list((tmp_path / "store" / RUNS_DIR).glob("*/model/config.json"))
    assert len(exported) == 2 and not (tmp_path / "model").exists()
    expanded = expand_suite(suite, overrides=["train.save_model=mine"])
    assert expanded.runs[0].config["train"]["save_model"] == str(tmp_path / "mine")


# 6: a fuzz of hostile files: nothing runs, nothing is written outside -------------------------


HOSTILE_YAML = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "name: !!python/object/apply:os.system ['touch {marker}']",
    "x: !!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "x: !!python/name:os.system",
]


@pytest.mark.parametrize("text", HOSTILE_YAML)
def test_yaml_tags_in_a_suite_a_task_file_and_a_config_run_nothing(text, tmp_path, capsys):
    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(text.format(marker=marker))
    code, _, err = run_cli(["bench", hostile, "--dry-run"], capsys)
    assert code == 2 and "Traceback" not in err
    with pytest.raises(TaskFileError, match="not valid YAML"):
        load_task_file(hostile)
    code, _, err = run_cli(["train", hostile, "--output-dir", tmp_path / "r"], capsys)
    assert code == 2 and "Traceback" not in err
    assert not marker.exists()


def test_a_task_file_reads_no_data_outside_its_folder(tmp_path):
    folder = tmp_path / "task"
    folder.mkdir()
    (tmp_path / "secret.jsonl").write_text('{"text": "s", "label": 0}\n')
    for dev in ["../secret.jsonl", str(tmp_path / "secret.jsonl")]:
        (folder / "t.yaml").write_text(yaml.safe_dump(
            {"data": {"dev": dev}, "template": "{text}", "candidates": [" a", " b"]}))
        with pytest.raises(TaskFileError, match="outside the task file's folder"):
            load_task_file(folder / "t.yaml")


def test_a_hostile_run_folder_and_store_run_nothing_and_write_only_inside(
        finished_run, two_run_suite, sst2_dir, tmp_path, capsys, monkeypatch):
    """A run folder and a store as someone might share them: every pickle is a payload, every
    id and name a path out. Resuming, evaluating, exporting and reporting run nothing and
    leave everything outside the named folders as it was."""
    marker = tmp_path / "marker"
    monkeypatch.chdir(tmp_path)
    for name in ("last.pt", "best.pt"):
        torch.save({"trainable": Payload(marker)}, finished_run / name)
    suite = two_run_suite()
    suite_path = tmp_path / "s.yaml"
    suite_path.write_text(yaml.safe_dump(suite))
    store = tmp_path / "shared" / "store"
    code, _, err = run_cli(["bench", suite_path, "--results", store], capsys)
    assert code == 0, err
    run_dir = next((store / RUNS_DIR).iterdir())
    torch.save({"trainable": Payload(marker)}, run_dir / "last.pt")
    record_path = run_dir / RECORD_FILE
    payload = json.loads(record_path.read_text())
    (store / DB_NAME).unlink()
    record_path.write_text(json.dumps({**payload, "id": "../../../outside"}))
    outside = files_under(tmp_path) - files_under(tmp_path / "shared")

    run_cli(train_argv(sst2_dir, finished_run, "--resume", "--steps=3"), capsys)
    run_cli(["eval", finished_run], capsys)
    run_cli(["export", finished_run, "--out", tmp_path / "shared" / "export"], capsys)
    run_cli(["report", store], capsys)
    run_cli(["bench", suite_path, "--results", store], capsys)

    assert not marker.exists()
    assert files_under(tmp_path) - files_under(tmp_path / "shared") == outside
