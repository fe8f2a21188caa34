"""Every script in benchmarks/ still runs: the README and docs/results cite them as the commands
that reproduce their figures, so an API move that breaks one must fail here.

Each Python script answers ``--help`` (its imports resolve and its parser builds), each
shell script parses (``bash -n``), and the scripts whose work is cheap on a tiny random shape
run once for real on it. Every script runs as the docs run it: a fresh process, its own file,
from a folder outside the repository (nothing is imported from the working folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PYTHON_SCRIPTS = sorted(BENCHMARKS.glob("*.py"))
SHELL_SCRIPTS = sorted(BENCHMARKS.glob("*.sh"))
TINY = ["--model", "random:tiny-llama"]


def run_script(script: Path, argv: list[str], folder: Path, **env: str):
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(script), *argv], cwd=folder, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", **env},
        timeout=600, check=False,
    )


def test_every_kind_of_script_is_covered():
    assert PYTHON_SCRIPTS and SHELL_SCRIPTS
    assert {p.suffix for p in BENCHMARKS.iterdir() if p.is_file()} <= {".py", ".sh", ".md"}
    tiny = {run.values[0] for run in TINY_RUNS}
    assert tiny <= {p.name for p in PYTHON_SCRIPTS}  # no entry for a removed script


@pytest.mark.parametrize("script", PYTHON_SCRIPTS, ids=lambda p: p.name)
def test_python_script_answers_help(script, tmp_path):
    done = run_script(script, ["--help"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage:")


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def sst2_folder(root: Path) -> Path:
    """A GLUE-format SST-2 with 80 training rows: half_precision_sanity draws 64 of them."""
    folder = root / "data" / "sst2"
    folder.mkdir(parents=True)
    words = ["a joy", "warm and funny", "a dull mess", "tedious and flat"]
    rows = [f"{words[i % 4]} {i}\t{int(i % 4 < 2)}" for i in range(80)]
    (folder / "train.tsv").write_text("\n".join(["sentence\tlabel", *rows]) + "\n")
    (folder / "dev.tsv").write_text("\n".join(["sentence\tlabel", *rows[:24]]) + "\n")
    (folder / "test.tsv").write_text("index\tsentence\n0\tunlabelled\n")
    return folder.parent


def check_half_precision(folder: Path, stdout: str) -> None:
    payload = json.loads((folder / "out.json").read_text())
    assert [row["precision"] for row in payload["rows"]] == [
        "float32", "bfloat16", "autocast-bfloat16",
    ]
    for row in payload["rows"]:
        for method in ("inference", "zo-sgd"):
            cell = row[method]
            assert cell["calls"] == 1 and cell["min_s"] <= cell["median_s"] <= cell["max_s"]
            assert cell["peak_mb"] > 0
    assert payload["rows"][0]["zo-sgd"]["time_vs_fp32"] == 1.0
    assert stdout.startswith("| precision | forward s (range) | × fp32 | ZO-SGD step s")


def check_sanity(folder: Path, stdout: str) -> None:
    results = json.loads((folder / "out.json").read_text())["results"]
    assert list(results) == ["float32", "bfloat16+SR", "bfloat16 nearest"]
    for row in results.values():
        assert len(row["probe_losses"]) == 2 and row["seconds_per_step"] > 0
        assert row["seen_after"] != row["seen_before"]  # the steps moved the weights
    # bf16 starts from the fp32 weights rounded: both bf16 settings start alike
    assert results["bfloat16+SR"]["seen_before"] == results["bfloat16 nearest"]["seen_before"]
    assert stdout.startswith("| setting | loss on the batch: before → after |")


def check_bf16_passes(folder: Path, stdout: str) -> None:
    assert "median of 1 rounds" in stdout
    assert "zo-sgd non-forward [torch ops]" in stdout


# (script, arguments, check of the folder it ran in and its stdout)
TINY_RUNS = [
    pytest.param(
        "half_precision.py",
        [*TINY, "--batch-size", "2", "--seq-len", "8", "--steps", "1", "--repeats", "1",
         "--json", "out.json"],
        check_half_precision,
        marks=pytest.mark.slow,  # six fresh processes
        id="half_precision.py",
    ),
    pytest.param(
        "half_precision_sanity.py",
        [*TINY, "--steps", "2", "--lr", "1e-2", "--json", "out.json"],
        check_sanity,
        id="half_precision_sanity.py",
    ),
    pytest.param(
        "bf16_passes.py",
        [*TINY, "--rounds", "1", "--batch-size", "2", "--seq-len", "8"],
        check_bf16_passes,
        id="bf16_passes.py",
    ),
]


@pytest.mark.parametrize(("name", "argv", "check"), TINY_RUNS)
def test_tiny_real_run(name, argv, check, tmp_path):
    done = run_script(
        BENCHMARKS / name, argv, tmp_path, ZOTUNE_DATA_DIR=str(sst2_folder(tmp_path))
    )
    assert done.returncode == 0, done.stderr[-3000:]
    check(tmp_path, done.stdout)
