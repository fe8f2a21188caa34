"""The overhead micro-benchmark runs and reports every method (smoke test, PEFT case only)."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "zo_step_overhead.py"


def test_overhead_benchmark_writes_its_table(tmp_path, capsys):
    bench = runpy.run_path(str(BENCHMARK), run_name="zo_step_overhead")
    out = tmp_path / "overhead.json"
    bench["main"](["--cases", "peft", "--repeats", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["gaussian", "table", "mezo"]
    assert all(r["numel"] == 200 * 8 * 768 and r["median_s"] > 0 for r in rows)
    assert "vs mezo" in capsys.readouterr().out


def test_synthetic_full_model_has_opt125m_size():
    bench = runpy.run_path(str(BENCHMARK), run_name="zo_step_overhead")
    shapes = bench["opt125m_shapes"]()
    assert sum(math.prod(shape) for _, shape in shapes) == 125_239_296  # as OPTForCausalLM
