"""`zotune bench --ray`: runs as Ray tasks on a local 2-CPU Ray instance, recorded by the
driver into the same store, with the local runner's fields, files and resume rules."""

from __future__ import annotations

import sys

import pytest

from test_bench import run_cli
from zotune import cli
from zotune.bench.runner import RUNS_DIR, Runner
from zotune.bench.store import ResultsStore
from zotune.bench.suite import load_suite
from zotune.bench.worker import JOB_FILE, OUTCOME_FILE, STDERR_FILE


@pytest.fixture(scope="module")
def ray():
    """A local Ray instance with 2 CPUs for this module; the runner uses it and leaves it up."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_results(ray, tmp_path_factory, write_suite, two_run_suite):
    """The two runs through `zotune bench --ray`, and zo-sgd's run through the local runner."""
    folder = tmp_path_factory.mktemp("ray")
    suite_file = write_suite(folder / "tiny.yaml", **two_run_suite())
    code = cli.main(["bench", str(suite_file), "--results", str(folder / "ray"), "--ray"])
    Runner(load_suite(suite_file), folder / "local", jobs=2, only=["zo-sgd"]).run()
    return suite_file, folder / "ray", folder / "local", code


def test_runs_on_ray_land_in_the_drivers_store_as_local_runs_do(ray_results):
    _, results, local, code = ray_results
    assert code == 0
    with ResultsStore(results, create=False) as store:
        records = {r.cell.optimizer: r for r in store.records()}
        (plan_row,) = store.plans()
    with ResultsStore(local, create=False) as store:
        (local_record,) = store.records()
    assert set(records) == {"zo-sgd", "fo-adam"} and len(plan_row.runs) == 2
    ray_record = records["zo-sgd"]
    assert ray_record.id == local_record.id, "the same run, whichever backend ran it"
    assert ray_record.status == "done" and ray_record.attempts == 1
    assert set(ray_record.metrics) == set(local_record.metrics)
    assert ray_record.metrics["steps"] == 1 and ray_record.metrics["threads"] == 1
    for field in ("zotune_version", "hostname", "hardware"):
        assert getattr(ray_record, field) == getattr(local_record, field)
    assert ray_record.duration_s > 0
    for record in records.values():
        run_dir = results / RUNS_DIR / record.id
        files = {path.name for path in run_dir.iterdir()}
        local_files = {path.name for path in (local / RUNS_DIR / local_record.id).iterdir()}
        # the records and the log come back; checkpoints stay on the node, and no job file
        assert files == {name for name in local_files if not name.endswith(".pt")} - {JOB_FILE}
        assert {OUTCOME_FILE, STDERR_FILE, "metrics.jsonl"} <= files
        assert "zotune: model random:tiny-llama" in (run_dir / STDERR_FILE).read_text()


def test_running_again_submits_nothing(ray, ray_results, monkeypatch, capsys):
    suite_file, results, _, _ = ray_results

    def no_tasks(*args, **kwargs):
        raise AssertionError("a Ray task was submitted")

    monkeypatch.setattr(ray, "remote", no_tasks)
    code, out, err = run_cli(["bench", str(suite_file), "--results", str(results), "--ray"],
                             capsys)
    assert code == 0, err
    assert "2 done before, 0 to run" in err
    assert "2 done, 0 failed (0 run now" in out
    with ResultsStore(results, create=False) as store:
        assert {r.attempts for r in store.records()} == {1}


def test_a_failed_ray_run_is_recorded_with_its_error_and_log(
    ray, tmp_path, capsys, write_suite, two_run_suite
):
    broken = {"fo-adam": {"task": {"data_dir": str(tmp_path / "missing")}}}
    suite_file = write_suite(tmp_path / "tiny.yaml", **two_run_suite(overrides=broken))
    argv = ["bench", str(suite_file), "--results", str(tmp_path / "r"), "--only", "fo-adam",
            "--ray"]
    code, out, err = run_cli(argv, capsys)
    assert code == 1 and "0 done, 1 failed" in out
    with ResultsStore(tmp_path / "r", create=False) as store:
        (failed,) = store.records()
    assert failed.status == "failed" and failed.cell.optimizer == "fo-adam"
    assert failed.error.startswith("zotune: error:") and "missing" in failed.error
    assert failed.error in err, "the progress line shows the error"
    log = (tmp_path / "r" / RUNS_DIR / failed.id / STDERR_FILE).read_text()
    assert "Traceback" in log and failed.error in log


def test_an_interrupted_driver_cancels_its_tasks_and_records_nothing(
    ray, tmp_path, monkeypatch, capsys, write_suite, two_run_suite
):
    suite_file = write_suite(tmp_path / "tiny.yaml", **two_run_suite())
    cancelled = []
    real_cancel = ray.cancel

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    def cancel(ref, **kwargs):
        cancelled.append(ref)
        real_cancel(ref, **kwargs)

    monkeypatch.setattr(ray, "wait", interrupt)
    monkeypatch.setattr(ray, "cancel", cancel)
    argv = ["bench", str(suite_file), "--results", str(tmp_path / "r"), "--ray"]
    code, _, err = run_cli(argv, capsys)
    assert code == 130 and "interrupted" in err
    assert len(cancelled) == 2
    for ref in cancelled:
        with pytest.raises(ray.exceptions.RayError):
            ray.get(ref, timeout=60)
    with ResultsStore(tmp_path / "r", create=False) as store:
        assert store.records() == [], "the cancelled runs stay pending"


def test_without_ray_installed_the_error_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    code, _, err = run_cli(["bench", "smoke", "--results", str(tmp_path / "r"), "--ray"], capsys)
    assert code == 2
    assert err == "zotune: error: --ray needs Ray, which is not installed: " \
                  "pip install 'zotune[ray]'\n"
    assert not (tmp_path / "r").exists()


def test_an_override_after_a_bare_ray_flag_is_an_override(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    code, _, err = run_cli(["bench", "smoke", "--ray", "train.stepz=1"], capsys)
    assert code == 2 and "train.stepz" in err, "read as an override, not as a Ray address"


def test_jobs_does_not_apply_to_ray(capsys):
    code, _, err = run_cli(["bench", "smoke", "--ray", "--jobs", "2"], capsys)
    assert code == 2 and "--jobs 2 does not apply to --ray" in err
