"""The fingerprint benchmark runs a run config's own first steps and hashes the weights they
leave: the same steps give the same fingerprint, other steps another."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest
import yaml

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "step_fingerprint.py"


def run_config(tmp_path: Path, sst2_dir, optimizer: str, scheme: str, **options) -> str:
    path = tmp_path / f"{optimizer}-{scheme}.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": "random:tiny-llama"},
        "optimizer": {"name": optimizer, "lr": 1e-3, **options},
        "task": {"name": "sst2", "data_dir": str(sst2_dir), "num_train": 16, "num_val": 8,
                 "num_test": 8},
        "train": {"batch_size": 4, "steps": 2},
        "tuning": {"scheme": scheme},
    }))
    return str(path)


def fingerprint(argv: list[str], capsys) -> str:
    bench = runpy.run_path(str(BENCHMARK), run_name="step_fingerprint")
    bench["main"](argv)
    out = capsys.readouterr().out
    steps = int(argv[argv.index("--steps") + 1])
    assert len(re.findall(r"step \d: loss \d+\.\d+, \d+\.\d+ s", out)) == steps
    found = re.search(r"weights ([0-9a-f]{16}), median \d+\.\d+ s/step, peak \d+ MB", out)
    assert found, out
    return found.group(1)


@pytest.mark.parametrize(("optimizer", "scheme"), [("zo-sgd", "lora"), ("fo-sgd", "full")])
def test_the_same_steps_give_the_same_fingerprint(optimizer, scheme, tmp_path, sst2_dir,
                                                  capsys):
    config = run_config(tmp_path, sst2_dir, optimizer, scheme)
    two = fingerprint([config, "--steps", "2"], capsys)
    assert fingerprint([config, "--steps", "2"], capsys) == two
    assert fingerprint([config, "--steps", "1"], capsys) != two
    assert fingerprint([config, "--steps", "2", "optimizer.lr=2e-3"], capsys) != two


def test_a_stored_runs_record_is_a_config(tmp_path, sst2_dir, capsys):
    """A store keeps each run's config in its record.json (the config.yaml beside it is not
    in git), so a published run's steps can be timed from a clone."""
    config = run_config(tmp_path, sst2_dir, "zo-sgd", "lora")
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"id": "abc", "config": yaml.safe_load(Path(config).read_text())}))
    assert fingerprint([str(record), "--steps", "2"], capsys) == fingerprint(
        [config, "--steps", "2"], capsys
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["missing.yaml"], "config file not found: missing.yaml"),
     (["CONFIG", "--steps", "0"], "--steps must be at least 1, got 0"),
     (["CONFIG", "optimizer.lr"], "override must look like section.key=value"),
     (["CONFIG", "optimizer.name=fo-sgd"], "optimizer.eps does not apply to fo-sgd"),
     (["CONFIG", "optimizer.name=zo-sgdd"], "unknown optimizer 'zo-sgdd'"),
     (["RECORD"], "has no run config"),
     (["missing.json"], "config file not found: missing.json")],
)
def test_what_it_cannot_run_is_refused_in_one_line(argv, message, tmp_path, sst2_dir, capsys):
    config = run_config(tmp_path, sst2_dir, "zo-sgd", "full", eps=1e-2)
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"id": "abc", "status": "done"}))
    bench = runpy.run_path(str(BENCHMARK), run_name="step_fingerprint")
    with pytest.raises(SystemExit):
        bench["main"]([{"CONFIG": config, "RECORD": str(record)}.get(word, word) for word in argv])
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
