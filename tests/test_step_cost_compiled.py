"""zotune profile --step-cost --compile: the compile time, the compiled step against its eager
twin, the steps that win the compile time back, memory taken without compiling again, and
no recompiles while the rounds move the weights in place."""

from __future__ import annotations

import json
import time

import pytest
import torch

import zotune.profiling.step_cost as step_cost
from zotune.cli import main
from zotune.models import compiled
from zotune.profiling.step_cost import (
    StepCostConfig,
    StepCostResult,
    StepCostRow,
    merge_step_costs,
    run_step_cost,
    step_cost_table,
)

TINY = {"model": "random:tiny-llama", "batch_size": 2, "steps": 1, "warmup": 0, "seq_len": 8}
COMPILE_DELAY = 1.0  # seconds the stand-in compiler spends on the first forward


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def slow_first_forward(model: torch.nn.Module, **options) -> torch.nn.Module:
    """A stand-in for compile_model: the first forward pays COMPILE_DELAY, as a compile."""
    def compile_once(module, args, kwargs):
        time.sleep(COMPILE_DELAY)
        handle.remove()

    handle = model.register_forward_pre_hook(compile_once, with_kwargs=True)
    return model


def row(method: str, precision: str, seconds: float, compile_seconds: float | None = None
        ) -> StepCostRow:
    return StepCostRow(method, "full", 10, seconds, [seconds], 1.0, None,
                       precision=precision, compile_seconds=compile_seconds)


def result(*rows: StepCostRow) -> StepCostResult:
    return StepCostResult(StepCostConfig(), list(rows), [], "setup", "one fresh process per row")


def test_full_scheme_rows_include_zo_sgd_mmt():
    assert step_cost.methods_for("full") == ("zo-sgd", "zo-sgd-mmt", "zo-adam", "mezo-ref")


@pytest.mark.parametrize(
    "eager, compiled_step, compile_seconds, over, steps",
    [
        (2.0, 1.5, 50.0, 0.75, 100.0),   # 0.5 s saved a step: 100 steps pay for 50 s
        (2.0, 2.0, 50.0, 1.0, None),     # not faster: never pays off
        (2.0, 2.5, 50.0, 1.25, None),    # slower: never
    ],
)
def test_merge_sets_each_compiled_row_beside_its_eager_twin(
    eager, compiled_step, compile_seconds, over, steps
):
    merged = merge_step_costs([
        result(row("zo-sgd", "bfloat16", eager), row("zo-adam", "bfloat16", 9.0)),
        result(row("zo-sgd", "float32", 7.0)),
        result(row("zo-sgd", "bfloat16+compile", compiled_step, compile_seconds)),
    ])
    twin = merged.rows[-1]
    assert twin.eager_seconds == eager
    assert twin.compiled_over_eager == pytest.approx(over)
    assert twin.steps_to_amortise == (None if steps is None else pytest.approx(steps))
    assert all(r.eager_seconds is None for r in merged.rows[:-1])
    table = step_cost_table(merged)
    assert "pays off after (steps)" in table
    assert ("100" if steps else "never") in table.splitlines()[-1]
    assert "compile s" not in step_cost_table(result(row("zo-sgd", "bfloat16", eager)))


def test_compiled_rows_time_the_compile_and_measure_memory_without_compiling_again(
    monkeypatch
):
    """With isolate, eager rows take memory from fresh processes; compiled ones must not
    (each would compile again, which at the SmolLM2 shape kept the measurement from
    finishing): their memory is read in the timing process, after the compile is timed."""
    monkeypatch.setattr(compiled, "compile_model", slow_first_forward)

    def no_fresh_process(*args, **kwargs):
        raise AssertionError("a compiled row's memory taken in a fresh process")

    monkeypatch.setattr(step_cost, "run_profile", no_fresh_process)
    config = StepCostConfig(**TINY, dtype="bfloat16", compile=True, schemes=("full",))
    measured = run_step_cost(config, isolate=True)
    assert [r.method for r in measured.rows] == ["zo-sgd", "zo-sgd-mmt", "zo-adam", "mezo-ref"]
    for r in measured.rows:
        assert r.precision == "bfloat16+compile"
        assert r.compile_seconds >= COMPILE_DELAY / 2
        assert r.memory_bytes and r.inference_memory_bytes
    assert "timing process" in measured.memory_method


needs_backend = pytest.mark.skipif(
    compiled.backend_unavailable() is not None, reason="no torch.compile backend here"
)


@pytest.mark.slow
@needs_backend
def test_compiled_step_cost_end_to_end_compiles_once(tmp_path, capsys):
    """The real compiler: one graph, traced while the compile is timed; the warm-up and the
    rounds (ZO steps moving bf16 weights in place) reuse it; JSON and page carry the
    compile columns and the command."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    out, page = tmp_path / "cost.json", tmp_path / "cost.md"
    argv = ["profile", "--step-cost", "--model", "random:tiny-llama", "--batch-size", "2",
            "--seq-len", "8", "--steps", "2", "--warmup", "0", "--threads", "1",
            "--dtype", "bfloat16", "--compile", "--schemes", "full", "--no-isolate",
            "--json", str(out), "--markdown", str(page)]
    assert main(argv) == 0
    assert counters["stats"]["unique_graphs"] == 1
    assert "compiled in" in capsys.readouterr().err
    payload = json.loads(out.read_text())
    assert payload["command"].endswith(" ".join(argv))
    rows = {(r["method"], r["precision"]): r for r in payload["rows"]}
    compiled_sgd = rows["zo-sgd", "bfloat16+compile"]
    assert compiled_sgd["compile_seconds"] > 0
    assert compiled_sgd["eager_seconds"] == rows["zo-sgd", "bfloat16"]["seconds_per_step"]
    assert "pays off after" in page.read_text() and "Measured with `" in page.read_text()


def test_optimizers_pick_step_cost_rows(capsys):
    config = StepCostConfig(methods=("zo-sgd", "zo-adam"))
    assert config.methods_for("full") == ("zo-sgd", "zo-adam")
    assert config.methods_for("lora") == ("zo-sgd",)
    assert StepCostConfig().methods_for("lora") == ("zo-sgd", "mezo-ref")
    assert main(["profile", "--step-cost", "--optimizers", "zo-sgd,fo-adam"]) == 2
    assert "--optimizers fo-adam: not a --step-cost row" in capsys.readouterr().err
