"""The |c| benchmark runs a suite's own ZO run for a few steps and reports the coefficients."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "zo_coefficients.py"


def test_coefficients_of_a_suites_run_are_reported(sst2_dir, capsys):
    bench = runpy.run_path(str(BENCHMARK), run_name="zo_coefficients")
    bench["main"](["--suite", "smoke", "--lr", "1e-3", "--steps", "2",
                   f"task.data_dir={sst2_dir}"])
    out = capsys.readouterr().out
    steps = re.findall(r"step \d: \|c\| = (\d+\.\d+)", out)
    assert len(steps) == 2
    assert re.search(r"smoke sst2 zo-sgd/full lr 0.001, 2 coefficients: median \|c\| \d", out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--suite", "smoke", "--lr", "5"], "smoke has no zo-sgd/full run at lr 5"),
     (["--suite", "smoke", "--cell", "zo-sgd-x"], "--cell: selector 'zo-sgd-x' names nothing"),
     (["--steps", "0"], "--steps must be at least 1, got 0"),
     (["--suite", "smoke", "--cell", "fo-sgd/full", "--lr", "1e-2"],
      "fo-sgd is not a zeroth-order optimizer")],
)
def test_what_it_cannot_measure_is_refused_in_one_line(argv, message, sst2_dir, capsys):
    bench = runpy.run_path(str(BENCHMARK), run_name="zo_coefficients")
    with pytest.raises(SystemExit):
        bench["main"]([*argv, f"task.data_dir={sst2_dir}"])
    assert message in capsys.readouterr().err
