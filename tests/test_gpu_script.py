"""benchmarks/gpu.sh: its tiny CPU rehearsal end to end, and the report helper it uses."""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
FILES = {
    "README.md", "gpu.log", "environment.json", "part1-profile.json", "part2-step-cost.json",
    "part3-memory.json", "part4-offload.json",
}


@pytest.fixture(scope="module")
def report():
    return runpy.run_path(str(BENCHMARKS / "gpu_report.py"), run_name="gpu_report")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_tiny_run_writes_every_part_into_at_most_eight_files(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), "--tiny", str(out)], env=env, capture_output=True,
        text=True, timeout=400, check=False,
    )
    offload = importlib.util.find_spec("accelerate") is not None
    assert done.returncode == (0 if offload else 1), done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == FILES  # the device tool brings back 8 at most
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # its work folder is removed
    readme = (out / "README.md").read_text()
    statuses = [line.split(" | ")[2] for line in readme.splitlines() if line[:4] in
                {"| 0 ", "| 1 ", "| 2 ", "| 3 ", "| 4 "}]
    assert statuses == ["ok"] * 6 if offload else statuses[:-1] == ["ok"] * 5
    for title in ("Part 1", "Part 2", "Part 3", "Part 4"):
        assert f"## {title}:" in readme
    profile = json.loads((out / "part1-profile.json").read_text())
    assert {(r["spec"]["scheme"], r["spec"]["method"]) for r in profile["results"]} == {
        (s, m) for s in ("full", "lora") for m in ("inference", "zo-sgd", "fo-adam")
    }
    assert profile["command"].count("zotune profile") == 2
    step_cost = json.loads((out / "part2-step-cost.json").read_text())
    assert ("zo-sgd", "full") in {(r["method"], r["scheme"]) for r in step_cost["rows"]}
    assert "T_step/(2·T_fwd) =" in readme
    memory = json.loads((out / "part3-memory.json").read_text())
    assert [r["spec"]["seq_len"] for r in memory["results"]] == [400, 400]
    environment = json.loads((out / "environment.json").read_text())
    assert environment["problems"] == []
    assert environment["zotune_file"].startswith(str(BENCHMARKS.parent / "src"))
    if offload:
        rows = json.loads((out / "part4-offload.json").read_text())["results"]
        assert [r["spec"]["offload"] for r in rows] == [False, True]
        assert "ZO-SGD offloaded:" in readme
    assert "part 4 (13B offload)" in (out / "gpu.log").read_text()


def test_merged_profile_keeps_every_row_failure_and_command(report, tmp_path):
    paths = []
    for scheme, failed in (("full", [{"label": "zo-adam full", "error": "E"}]), ("lora", [])):
        payload = {"kind": "profile", "setup": f"setup {scheme}", "command": f"zotune {scheme}",
                   "note": "same", "results": [{"spec": {"scheme": scheme}}], "failed": failed}
        paths.append(tmp_path / f"{scheme}.json")
        paths[-1].write_text(json.dumps(payload))
    merged = report["merge_profiles"](paths)
    assert merged["command"] == "zotune full && zotune lora" and merged["note"] == "same"
    assert merged["setup"] == "setup full"
    assert [r["spec"]["scheme"] for r in merged["results"]] == ["full", "lora"]
    assert merged["failed"] == [{"label": "zo-adam full", "error": "E"}]


@pytest.mark.parametrize(
    ("ratio", "speedup", "verdicts"),
    [(1.04, 2.5, ("met", "met")), (1.2, 2.5, ("missed", "met")), (1.0, 1.5, ("met", "missed"))],
)
def test_step_cost_headline_checks_the_issue_targets(report, ratio, speedup, verdicts):
    row = {"method": "zo-sgd", "scheme": "full", "seconds_per_step": 2 * ratio,
           "forward_seconds": 1.0, "ratio": ratio, "speedup_vs_mezo": speedup,
           "mezo_seconds": 2 * ratio * speedup}
    ratio_line, speed_line = report["step_cost_lines"]({"rows": [row]})
    assert ratio_line.endswith(f": {verdicts[0]})") and speed_line.endswith(f": {verdicts[1]})")


def test_readme_names_the_part_that_wrote_nothing(report, tmp_path):
    status = [{"part": "3", "name": "13B memory", "status": "timed out", "seconds": "90",
               "limit": "90", "command": "zotune profile"}]
    text = report["readme"](tmp_path, status, tmp_path, "gpu")
    assert "| 3 | 13B memory | timed out | 90 | 90 |" in text
    assert "No results (`part3-memory.json` was not written)." in text
    assert text.startswith("# GPU figures")


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_gpu_mode_without_cuda_stops_after_the_environment_check(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the real run would start")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), str(out)], env=env, capture_output=True,
        text=True, timeout=200, check=False,
    )
    assert done.returncode == 1
    assert {p.name for p in out.iterdir()} == {"README.md", "gpu.log", "environment.json"}
    assert "| 0 | environment | failed (exit 2) |" in (out / "README.md").read_text()
    assert "CUDA is not available to torch" in done.stdout + done.stderr
