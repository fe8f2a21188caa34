"""The benchmark: suite expansion, the results store, selection on validation, the runner end
to end on the smoke suite (resume, retry, --jobs), and the report."""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from zotune import cli
from zotune.bench.intervals import wilson_interval
from zotune.bench.report import (
    accuracy_table,
    build_report,
    markdown_report,
    selection_notes,
    selection_table,
)
from zotune.bench.runner import RUNS_DIR, Runner, describe_plan, plan, run_states, threads_per_job
from zotune.bench.section import Section
from zotune.bench.selection import select
from zotune.bench.store import ResultsStore, RunRecord
from zotune.bench.suite import (
    Cell,
    Resources,
    SuiteError,
    builtin_suites,
    expand_suite,
    load_suite,
)
from zotune.bench.worker import OUTCOME_FILE, STDERR_FILE
from zotune.optim import OPTIMIZERS, create_optimizer
from zotune.tuning import scheme_keys

# The paper's eight (ZO-Bench Table 2); later methods (HiZOO, MeZO-SVRG, ...) are not in it.
PAPER_OPTIMIZERS = ("zo-sgd", "zo-sgd-mmt", "zo-sgd-cons", "zo-sgd-sign", "zo-adam",
                    "forward-grad", "fo-sgd", "fo-adam")

# Suites ------------------------------------------------------------------------------------


def test_builtin_suites_have_the_papers_grid_shape():
    assert set(builtin_suites()) >= {"paper", "cpu", "smoke"}
    paper_schemes = set(scheme_keys()) - {"head"}  # the paper's Table 2 has no linear probing
    assert set(PAPER_OPTIMIZERS) <= set(OPTIMIZERS)
    for name in ("paper", "cpu"):
        table = [c for c in load_suite(name).cells if not c.variant]
        assert len(table) == len(PAPER_OPTIMIZERS) * len(paper_schemes) == 32
        assert {c.optimizer for c in table} == set(PAPER_OPTIMIZERS)
        assert {c.scheme for c in table} == paper_schemes
    cpu_steps = {r.cell.optimizer: r.config["train"]["steps"] for r in load_suite("cpu").runs}
    assert cpu_steps["fo-adam"] < cpu_steps["zo-sgd"], "first-order runs take fewer steps"
    paper = load_suite("paper")
    assert {r.config["model"]["name"] for r in paper.runs} == {"facebook/opt-1.3b"}
    # ZO-LLM README's block-wise run, at run.py's default level and mode.
    (block,) = [r for r in paper.runs if r.cell.variant]
    assert block.config["optimizer"].items() >= {
        "name": "zo-sgd-mmt", "lr": 1e-8, "eps": 1e-3, "schedule": "constant", "momentum": 0.9,
        "block_level": "transformer-block", "block_mode": "coordinate", "warmup_steps": 0}.items()
    assert block.config["model"]["dtype"] == "float16"
    assert block.config["train"]["eval_every"] == 1000
    paper.runs = [r for r in paper.runs if not r.cell.variant]
    # ZO-LLM's SST-2 sweeps: 20k steps at batch 16, but FO-SGD full/prompt 5 epochs at batch 8.
    budgets = {(r.cell.optimizer, r.cell.scheme): (r.config["train"]["steps"],
               r.config["train"]["batch_size"]) for r in paper.runs}
    assert {cell for cell, budget in budgets.items() if budget != (20000, 16)} == {
        ("fo-sgd", "full"), ("fo-sgd", "prompt")}
    assert budgets["fo-sgd", "full"] == budgets["fo-sgd", "prompt"] == (625, 8)
    full = {r.config["optimizer"]["lr"] for r in paper.runs if r.cell.optimizer == "zo-sgd"
            and r.cell.scheme == "full"}
    lora = {r.config["optimizer"]["lr"] for r in paper.runs if r.cell.optimizer == "zo-sgd"
            and r.cell.scheme == "lora"}
    assert full == {1e-4, 1e-5, 1e-6, 1e-7, 1e-8} and lora == {1e-3, 1e-4, 1e-5, 1e-6}
    eps = {(r.cell.optimizer, r.cell.scheme): set() for r in paper.runs}
    for run in paper.runs:
        eps[run.cell.optimizer, run.cell.scheme].add(run.config["optimizer"].get("eps"))
    assert eps["zo-sgd", "prefix"] == eps["zo-sgd-sign", "prefix"] == {1e-1}
    assert eps["zo-sgd", "lora"] == {1e-2, 1e-3, 1e-4} and eps["fo-adam", "lora"] == {None}
    smoke = load_suite("smoke")
    assert len(smoke.cells) == 4 and len(smoke.runs) == 4


def test_expansion_is_the_product_of_grid_sweep_and_seeds(tiny_suite):
    suite = expand_suite(tiny_suite())
    # zo-sgd: 2 schemes × 2 lrs × 2 seeds; fo-adam: 2 schemes × 1 lr × 2 seeds
    assert len(suite.cells) == 4
    assert len(suite.runs) == 8 + 4
    zo = [r for r in suite.runs if r.cell.optimizer == "zo-sgd"]
    assert {(r.hparams["optimizer.lr"], r.seed) for r in zo} == {
        (lr, seed) for lr in (1e-3, 1e-4) for seed in (0, 1)
    }
    assert all(r.config["train"]["seed"] == r.seed for r in suite.runs)
    assert all(r.config["optimizer"]["eps"] == 1e-3 for r in zo)


def test_run_ids_are_stable_distinct_and_ignore_placement(tmp_path, tiny_suite):
    first, again = expand_suite(tiny_suite()), expand_suite(tiny_suite())
    ids = [r.id for r in first.runs]
    assert ids == [r.id for r in again.runs]
    assert len(set(ids)) == len(ids)
    moved = expand_suite(tiny_suite(), overrides=[f"task.data_dir={tmp_path}"])
    assert [r.id for r in moved.runs] == ids, "where the data lives is not part of a run"
    assert moved.runs[0].config["task"]["data_dir"] == str(tmp_path)
    changed = expand_suite(tiny_suite(), overrides=["train.steps=2"])
    assert not set(ids) & {r.id for r in changed.runs}


@pytest.mark.parametrize(
    ("override", "section", "key", "value"),
    [("train.compile=true", "train", "compile", True),
     ("model.matmul=float32", "model", "matmul", "float32")],
)
def test_how_the_arithmetic_runs_is_kept_but_not_part_of_a_run_id(tiny_suite, override,
                                                                   section, key, value):
    ids = [r.id for r in expand_suite(tiny_suite()).runs]
    executed = expand_suite(tiny_suite(), overrides=[override])
    assert [r.id for r in executed.runs] == ids  # the store made without it resumes
    assert all(r.config[section][key] == value for r in executed.runs)


def test_overrides_and_sweeps_apply_from_general_to_specific(tiny_suite):
    suite = expand_suite(
        tiny_suite(
            overrides={
                "default": {"train": {"steps": 3}},
                "fo-adam": {"train": {"steps": 2}},
                "fo-adam/lora": {"train": {"batch_size": 2}},
            },
            sweep={
                "default": {"lr": [1e-2]},
                "zo-sgd": {"lr": [1e-3, 1e-4], "eps": [1e-3]},
                "zo-sgd/lora": {"lr": [5e-3]},
                "lora": {"tuning.lora_r": [4]},
            },
        )
    )
    by_cell: dict = {}
    for run in suite.runs:
        by_cell.setdefault((run.cell.optimizer, run.cell.scheme), []).append(run)
    zo_full, zo_lora = by_cell["zo-sgd", "full"], by_cell["zo-sgd", "lora"]
    assert {r.config["optimizer"]["lr"] for r in zo_full} == {1e-3, 1e-4}
    assert {r.config["optimizer"]["lr"] for r in zo_lora} == {5e-3}
    assert {r.config["optimizer"]["eps"] for r in zo_lora} == {1e-3}, "eps kept from zo-sgd"
    assert {r.config["tuning"]["lora_r"] for r in zo_lora} == {4}
    assert {r.config["train"]["steps"] for r in zo_full} == {3}
    fo_full, fo_lora = by_cell["fo-adam", "full"], by_cell["fo-adam", "lora"]
    assert {r.config["train"]["steps"] for r in fo_full + fo_lora} == {2}
    assert {r.config["train"]["batch_size"] for r in fo_lora} == {2}
    assert {r.config["train"]["batch_size"] for r in fo_full} == {4}
    assert {r.config["optimizer"]["lr"] for r in fo_full} == {1e-2}


def test_selectors_may_name_models_with_slashes(tiny_suite):
    suite = expand_suite(
        tiny_suite(
            grid={"model": ["random:tiny-llama", "random:tiny-opt"], "tuning": ["full"],
                  "optimizer": ["zo-sgd"]},
            sweep={"zo-sgd": {"lr": [1e-3]}, "random:tiny-opt/zo-sgd": {"lr": [1e-2]}},
            seeds=[0],
        )
    )
    lrs = {r.cell.model: r.config["optimizer"]["lr"] for r in suite.runs}
    assert lrs == {"random:tiny-llama": 1e-3, "random:tiny-opt": 1e-2}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gird": {}}, "unknown suite key 'gird'"),
        ({"grid": {"optimizers": ["zo-sgd"]}}, "unknown axis 'optimizers'"),
        ({"grid": {"optimizer": ["zo-sgdd"]}}, "unknown optimizer 'zo-sgdd'"),
        ({"grid": {"tuning": ["adapter"]}}, "unknown scheme 'adapter'"),
        ({"grid": {"task": ["sst3"]}}, "unknown task 'sst3'"),
        ({"grid": {"model": ["random:tiny-gpt"]}}, "tiny-gpt"),
        ({"grid": {"optimizer": ["zo-sgd", "zo-sgd"]}}, "'zo-sgd' is listed twice"),
        ({"base": {"train": {"stepz": 1}}}, "base: unknown config key: train.stepz"),
        ({"base": {"train": {"steps": "many"}}}, "train.steps: expected int"),
        ({"overrides": {"fo-adam": {"optimizer": {"lrr": 1}}}}, "optimizer.lrr"),
        ({"sweep": {"zo-sgdd": {"lr": [1e-3]}}}, "selector 'zo-sgdd' names nothing"),
        ({"sweep": {"zo-sgd/fo-adam": {"lr": [1e-3]}}}, "'zo-sgd/fo-adam' matches no cell"),
        ({"sweep": {"zo-sgd": {"learning_rate": [1e-3]}}}, "optimizer.learning_rate"),
        ({"sweep": {"zo-sgd": {"lr": []}}}, "lr has an empty list"),
        ({"sweep": {"zo-sgd": {"train.seed": [1]}}}, "train.seed is set by the suite"),
        ({"sweep": {"default": {"eps": [1e-3]}}}, "optimizer.eps does not apply to fo-adam"),
        ({"sweep": {"zo-sgd": {"lr": [1e-3, 0.001]}}}, "have the same config"),
        ({"seeds": [0, 0]}, "seeds: a seed is listed twice"),
        ({"seeds": [-1]}, "seeds: expected non-negative integers, got -1"),
        ({"seeds": {"lora": [1, 1]}}, "seeds 'lora': a seed is listed twice"),
        ({"seeds": {"zo-sgdd": [0]}}, "seeds: selector 'zo-sgdd' names nothing"),
        ({"resources": {"default": {"gpu": 1}}}, "resources 'default': unknown key 'gpu'"),
        ({"resources": {"lora": {"cpus": 0}}}, "cpus must be a positive number, got 0"),
        ({"resources": {"lora": {"gpus": "one"}}}, "gpus must be a number >= 0, got 'one'"),
        ({"resources": {"zo-sgdd": {"cpus": 1}}}, "resources: selector 'zo-sgdd' names nothing"),
    ],
)
def test_bad_suites_fail_with_one_line_naming_the_value(changes, message, tiny_suite):
    with pytest.raises(SuiteError) as error:
        expand_suite(tiny_suite(**changes))
    text = str(error.value)
    assert message in text and "\n" not in text


def test_resources_default_to_one_cpu_and_a_gpu_for_cuda_runs(tiny_suite):
    plain = expand_suite(tiny_suite())
    assert {r.resources for r in plain.runs} == {Resources(cpus=1, gpus=0)}
    on_cuda = expand_suite(tiny_suite(), overrides=["model.device=cuda"])
    assert {r.resources for r in on_cuda.runs} == {Resources(cpus=1, gpus=1)}
    chosen = expand_suite(
        tiny_suite(resources={"default": {"cpus": 2}, "fo-adam/lora": {"gpus": 0.5}})
    )
    by_cell = {(r.cell.optimizer, r.cell.scheme): r.resources for r in chosen.runs}
    assert by_cell["zo-sgd", "full"] == Resources(cpus=2, gpus=0)
    assert by_cell["fo-adam", "lora"] == Resources(cpus=2, gpus=0.5)
    assert [r.id for r in chosen.runs] == [r.id for r in plain.runs], "not part of a run's id"


@pytest.mark.parametrize("name", ["cpu", "cpu-copa-winogrande"])
def test_the_cpu_tables_run_in_bf16_and_fo_full_in_mixed_precision(name):
    """The precision docs/results/cpu-settings chose: bf16 weights with stochastically
    rounded updates, FO full fine-tuning in fp32 under bf16 autocast."""
    precision = {(r.cell.optimizer, r.cell.scheme): (r.config["model"]["dtype"],
                 r.config["model"]["autocast"]) for r in load_suite(name).runs}
    assert precision["zo-sgd", "full"] == precision["fo-sgd", "lora"] == ("bfloat16", None)
    assert precision["fo-sgd", "full"] == ("float32", "bfloat16")
    assert {precision[cell] for cell in precision if cell[1] != "full" or "fo" not in cell[0]
            } == {("bfloat16", None)}


def test_the_copa_winogrande_suite_is_the_papers_second_table():
    suite = load_suite("cpu-copa-winogrande")
    cells = {(c.task, c.scheme, c.optimizer) for c in suite.cells}
    lora = {"zero-shot", "zo-sgd", "zo-adam", "forward-grad", "fo-sgd"}
    assert cells == {(t, "lora", o) for t in ("copa", "winogrande") for o in lora} | {
        (t, "full", o) for t in ("copa", "winogrande") for o in ("zo-sgd", "fo-sgd")}
    for run in suite.runs:
        task = run.config["task"]
        assert task["num_val"] == 100, "ZO-Bench's --num_dev=100"
        assert task["loss"] is None, "each task's own paper loss (LM on the gold option)"
    lrs = {(r.cell.task, r.cell.optimizer, r.cell.scheme): set() for r in suite.runs}
    for run in suite.runs:
        lrs[run.cell.task, run.cell.optimizer, run.cell.scheme].add(run.config["optimizer"]["lr"])
    # zo-bench/sweeps/{Copa,WinoGrande}_llama-7b/zo_sgd/zo_sgd_*_lora.yml; the grid rule in the
    # suite's header may add rates between or beyond them, never take one away.
    assert lrs["copa", "zo-sgd", "lora"] >= {5e-3, 1e-4}
    assert lrs["winogrande", "zo-sgd", "lora"] >= {1e-3, 1e-4}


def test_unknown_suite_names_the_builtins(tmp_path):
    builtin = r"unknown suite 'cpuu' \(built-in: cpu, cpu-copa-winogrande, cpu-frontier, "
    with pytest.raises(SuiteError, match=builtin):
        load_suite("cpuu")
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "nothere.yaml")


def test_bench_help_lists_every_builtin_suite(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    described = " ".join(capsys.readouterr().out.split())
    for name in builtin_suites():
        assert name in described, name


# Studies: variants in a list of grids ------------------------------------------------------

STUDY_GRIDS = [
    {"tuning": ["full"], "optimizer": ["zo-sgd", "fo-adam"]},
    {
        "tuning": ["full"],
        "optimizer": ["zo-sgd"],
        "variant": {
            "dense": {},
            "sparse": {"optimizer": {"sparsity": 0.5}},
            "short": {"train": {"steps": 2}},
        },
    },
    {"tuning": ["full"], "optimizer": ["zo-sgd"], "variant": {"again-dense": {}}},
]


@pytest.fixture
def study_suite(tiny_suite):
    """Factory ``study_suite(**changes)``: :data:`STUDY_GRIDS` on the tiny suite, one seed."""
    return lambda **changes: tiny_suite(grid=STUDY_GRIDS, seeds=[0], **changes)


def test_a_list_of_grids_adds_study_cells_with_their_variants(study_suite):
    suite = expand_suite(study_suite(overrides={"zo-sgd": {"train": {"steps": 3}}}))
    cells = {(c.optimizer, c.variant) for c in suite.cells}
    assert cells == {("zo-sgd", ""), ("fo-adam", ""), ("zo-sgd", "dense"),
                     ("zo-sgd", "sparse"), ("zo-sgd", "short"), ("zo-sgd", "again-dense")}
    by_variant = {
        r.cell.variant: r
        for r in suite.runs
        if r.cell.optimizer == "zo-sgd" and r.hparams["optimizer.lr"] == 1e-3
    }
    assert by_variant["sparse"].config["optimizer"]["sparsity"] == 0.5
    assert by_variant["short"].config["train"]["steps"] == 2, "the variant wins over overrides"
    assert by_variant["dense"].config["train"]["steps"] == 3
    # dense, again-dense and the main table's zo-sgd cell are one config: one run, three cells
    assert by_variant["dense"].id == by_variant["again-dense"].id == by_variant[""].id
    assert len(suite.run_ids) == len(suite.runs) - 4  # 2 lrs x 2 extra cells share
    planned = plan(suite, {})
    assert [p.spec.id for p in planned] == suite.run_ids


def test_seeds_per_cell_let_a_close_study_run_three_seeds(tiny_suite):
    suite = expand_suite(tiny_suite(grid=STUDY_GRIDS, seeds={"default": [0], "sparse": [0, 1, 2],
                                                             "fo-adam": [4]}))
    seeds: dict[tuple[str, str, str], set[int]] = {}
    for run in suite.runs:
        key = (run.cell.optimizer, run.cell.scheme, run.cell.variant)
        seeds.setdefault(key, set()).add(run.seed)
    assert seeds["zo-sgd", "full", "sparse"] == {0, 1, 2}
    assert seeds["zo-sgd", "full", "dense"] == {0}
    assert seeds["fo-adam", "full", ""] == {4}
    no_default = expand_suite(tiny_suite(grid=STUDY_GRIDS, seeds={"sparse": [1, 2]}))
    assert {r.seed for r in no_default.runs if r.cell.variant == "dense"} == {0}, "base's seed"


def test_variant_names_are_selectors(study_suite):
    suite = expand_suite(study_suite(sweep={"zo-sgd": {"lr": [1e-3]}, "sparse": {"lr": [1e-2]},
                                            "fo-adam": {"lr": [1e-3]}}))
    lrs = {r.cell.variant: r.config["optimizer"]["lr"] for r in suite.runs}
    assert lrs["sparse"] == 1e-2 and lrs["dense"] == 1e-3
    assert {r.cell.variant for r in suite.select(["short"])} == {"short"}


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ([], "grid: expected a mapping or a non-empty list of mappings"),
        ([{"optimizer": ["zo-sgd"], "variant": []}], "grid[0].variant: expected a mapping"),
        ([{"optimizer": ["zo-sgd"], "variant": {"zo-sgd": {}}}], "'zo-sgd' cannot name a variant"),
        ([{"optimizer": ["zo-sgd"], "variant": {"x": {"optimizer": {"sparsty": 0.1}}}}],
         "grid[0].variant.x: unknown config key: optimizer.sparsty"),
        ([{"optimizer": ["zo-sgd"], "varient": {}}], "grid[0]: unknown axis 'varient'"),
        ([{"optimizer": ["zo-sgd"], "variant": {"x": {"optimizer": {"sparsity": 0.1}}}}],
         "optimizer.sparsity does not apply to fo-adam"),
    ],
)
def test_bad_variants_fail_with_one_line_naming_the_value(grid, message, tiny_suite):
    changes = {"grid": grid, "sweep": {"default": {"lr": [1e-3]}}}
    if "fo-adam" in message:
        changes["grid"] = [{"optimizer": ["fo-adam"], "variant": grid[0]["variant"]}]
    with pytest.raises(SuiteError) as error:
        expand_suite(tiny_suite(**changes))
    text = str(error.value)
    assert message in text and "\n" not in text


def test_the_cpu_studies_suite_holds_the_three_enhancements_and_the_template_ablation():
    suite = load_suite("cpu-studies")
    variants = [c.variant for c in suite.cells]
    for name in ("dense", "sparsity-0.2", "hybrid-k0-fo", "hybrid-k30-zo", "no-template",
                 "block-layer", "q32-matched"):
        assert name in variants
    sparsity = {r.config["optimizer"].get("sparsity") for r in suite.runs}
    assert sparsity == {None, 0.1, 0.2, 0.5, 0.8}
    # dense and template are one config; hybrid rows run in fp32 under bf16 autocast
    assert len(suite.run_ids) == 34
    block_rates = {
        r.hparams["optimizer.lr"] for r in suite.runs if r.cell.variant == "block-layer"
    }
    assert block_rates == {3.0e-4, 1.0e-4}, "block-wise gets its own learning-rate grid"
    seeds = {}
    for run in suite.runs:
        seeds.setdefault(run.cell.variant, set()).add(run.seed)
    close = ("dense", "sparsity-0.2", "template", "no-template", "fo-template",
             "fo-no-template", "block-layer", "q32-matched")
    assert all(seeds[name] == {0, 1, 2} for name in close), "close studies run three seeds"
    assert seeds["sparsity-0.8"] == {0}
    settings = {(r.cell.variant, r.seed): r.id for r in load_suite("cpu-settings").runs}
    ids = {(r.cell.variant, r.seed): r.id for r in suite.runs}
    assert ids["dense", 1] == settings["bf16-sr", 1], "the baseline is the settings study's run"
    assert ids["hybrid-k30-zo", 0] == settings["autocast-bf16", 0]


V1_SCHEMA_ROW = (
    "INSERT INTO runs VALUES ('abc', 'tiny', 'm', 'sst2', 'full', 'zo-sgd', '{}', 0, '{}', "
    "'done', '{\"test_accuracy\": 1.0}', NULL, 0.0, 1.0, 1.0, 1, '0.1.0', 'h', 'cpu')"
)


def test_a_store_written_before_studies_is_upgraded_in_place(tmp_path, study_suite):
    import sqlite3

    from zotune.bench import store as store_module

    v1_schema = store_module.SCHEMA.replace(",\n    variant TEXT NOT NULL DEFAULT ''", "")
    assert "variant" not in v1_schema
    db = sqlite3.connect(tmp_path / store_module.DB_NAME)
    db.executescript(v1_schema)
    db.execute(V1_SCHEMA_ROW)
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    run = expand_suite(study_suite()).runs[-1]
    with ResultsStore(tmp_path) as store:
        store.record(record_for(run))
        old, new = store.records()
    assert old.id == "abc" and old.cell == Cell("m", "sst2", "full", "zo-sgd")
    assert new.cell.variant == run.cell.variant == "again-dense"


# Store -------------------------------------------------------------------------------------


def record_for(run, status="done", val=0.5, test=0.5, error="zotune: error: boom", **metrics):
    return RunRecord.for_run(
        "tiny",
        run,
        status=status,
        metrics={"best_val_accuracy": val, "test_accuracy": test, **metrics}
        if status == "done"
        else None,
        error=None if status == "done" else error,
        started_at=100.0,
        finished_at=112.5,
        zotune_version="0.1.0",
        hostname="host",
        hardware="a CPU (2 cores)",
    )


def test_store_round_trips_records_and_counts_attempts(tmp_path, tiny_suite):
    run = expand_suite(tiny_suite()).runs[0]
    with ResultsStore(tmp_path) as store:
        store.record(record_for(run, status="failed"))
        store.record(record_for(run, val=0.75, peak_memory_mb=123.0))
    with ResultsStore(tmp_path, create=False) as store:
        (record,) = store.records()
        assert store.statuses() == {run.id: "done"}
        assert [a["status"] for a in store.attempts(run.id)] == ["failed", "done"]
    assert record.attempts == 2
    assert record.cell == run.cell and record.config == run.config
    assert record.hparams == run.hparams and record.seed == run.seed
    assert record.metrics["best_val_accuracy"] == 0.75 and record.duration_s == 12.5


CRASH_MID_WRITE = """
import os
from zotune.bench.store import ResultsStore, RunRecord
from zotune.bench.suite import Cell

class CrashingStore(ResultsStore):
    def _log_attempt(self, db, record):
        os._exit(9)  # the process dies between the two inserts of one record

record = RunRecord(
    id="abc", suite="tiny", cell=Cell("m", "sst2", "full", "zo-sgd"), hparams={}, seed=0,
    config={}, status="done", metrics={"test_accuracy": 1.0}, error=None, started_at=0.0,
    finished_at=1.0, zotune_version="0", hostname="h", hardware="cpu",
)
CrashingStore(RESULTS).record(record)
"""


def test_a_crash_mid_write_leaves_no_half_written_row(tmp_path):
    script = CRASH_MID_WRITE.replace("RESULTS", repr(str(tmp_path)))
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert crashed.returncode == 9, crashed.stderr
    with ResultsStore(tmp_path, create=False) as store:
        assert store.records() == []
        assert store.statuses() == {}


# Selection ---------------------------------------------------------------------------------


def test_selection_chooses_on_validation_never_on_test(tiny_suite):
    suite = expand_suite(tiny_suite())
    zo_full = [r for r in suite.runs if r.cell == Cell("random:tiny-llama", "sst2", "full",
                                                           "zo-sgd")]
    records = []
    for run in zo_full:
        high_lr = run.hparams["optimizer.lr"] == 1e-3
        # lr 1e-3: better on validation, worse on test; lr 1e-4 the other way round
        val, test = (0.9, 0.6) if high_lr else (0.7, 0.95)
        records.append(record_for(run, val=val + run.seed * 0.01, test=test + run.seed * 0.02))
    (selection,) = select(records)
    assert selection.chosen.hparams["optimizer.lr"] == 1e-3
    assert selection.chosen.test_mean == pytest.approx(0.61)
    assert selection.chosen.test_std == pytest.approx(0.0141421, rel=1e-4)
    assert not selection.partial


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (0, None),  # zero-shot takes no step: no step time, no passes per step
        (400, {"seconds_per_step": 1.5, "forward_passes_per_step": 2}),
    ],
)
def test_per_step_figures_come_only_from_runs_that_stepped(tiny_suite, steps, expected):
    run = expand_suite(tiny_suite()).runs[0]
    record = record_for(run, steps=steps, seconds_per_step=1.5 if steps else 0.0,
                        forward_passes_per_step=2, peak_memory_mb=900.0)
    (selection,) = select([record])
    for name in ("seconds_per_step", "forward_passes_per_step"):
        assert selection.chosen.mean_metric(name) == (expected and expected[name])
    assert selection.chosen.mean_metric("peak_memory_mb") == 900.0


@pytest.mark.parametrize(
    ("proportion", "n", "low", "high"),
    [
        (0.5, 100, 0.4038, 0.5962),  # Brown, Cai & DasGupta (2001), Table 1
        (0.0, 10, 0.0, 0.2775),  # stays inside [0, 1] where the normal interval collapses
        (1.0, 10, 0.7225, 1.0),
        (0.719, 872, 0.6883, 0.7478),  # a cell of the SST-2 table
    ],
)
def test_wilson_interval_matches_published_values(proportion, n, low, high):
    assert wilson_interval(proportion, n) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize(
    ("proportion", "n", "message"),
    [(0.5, 0, "at least one test example"), (1.2, 10, "lies in [0, 1]")],
)
def test_wilson_interval_refuses_what_is_not_a_proportion(proportion, n, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        wilson_interval(proportion, n)


def test_a_cell_shows_its_seed_spread_and_its_test_set_interval(tiny_suite):
    suite = expand_suite(tiny_suite())
    runs = [r for r in suite.runs if r.cell == Cell("random:tiny-llama", "sst2", "full",
                                                        "zo-sgd")]
    records = [record_for(r, val=0.7, test=0.5 + 0.02 * r.seed, test_examples=100)
               for r in runs]
    (selection,) = select(records)
    assert selection.chosen.test_interval == pytest.approx(wilson_interval(0.51, 100))
    section = Section("tiny", "random:tiny-llama", "sst2", [selection], records, "zotune bench")
    cell = accuracy_table(section).rows[0][1]
    low, high = wilson_interval(0.51, 100)
    assert cell == f"51.0 ± 1.4 ({low * 100:.1f}–{high * 100:.1f})"
    without_counts = [record_for(r, val=0.7, test=0.5) for r in runs]
    (selection,) = select(without_counts)
    assert selection.chosen.test_interval is None, "older records name no test size"


@pytest.mark.parametrize(
    ("best_val_lr", "best_step", "finished_lrs", "steps", "untrained", "edges", "note"),
    [
        (1e-3, 5, (1e-3, 1e-4), 2, False, {"optimizer.lr": "top"}, "lr at the grid's top"),
        (1e-4, 5, (1e-3, 1e-4), 2, False, {"optimizer.lr": "bottom"},
         "lr at the grid's bottom"),
        (1e-3, 5, (1e-3,), 2, False, {}, ""),  # one value finished: no grid to be at the edge of
        (1e-3, 0, (1e-3, 1e-4), 2, True, {"optimizer.lr": "top"},
         "untrained: best at step 0; lr at the grid's top"),
        (1e-3, 0, (1e-3, 1e-4), 0, False, {"optimizer.lr": "top"}, "lr at the grid's top"),
    ],
    ids=["top", "bottom", "one-value", "untrained", "no-steps-baseline"],
)
def test_a_cell_says_when_its_grid_limits_it(tiny_suite, best_val_lr, best_step, finished_lrs,
                                             steps, untrained, edges, note):
    runs = [r for r in expand_suite(tiny_suite()).runs
            if r.cell.optimizer == "zo-sgd" and r.cell.scheme == "full"
            and r.hparams["optimizer.lr"] in finished_lrs]
    records = []
    for run in runs:
        record = record_for(run, val=0.9 if run.hparams["optimizer.lr"] == best_val_lr else 0.7,
                            best_step=best_step)
        record.config = {**record.config, "train": {**record.config["train"], "steps": steps}}
        records.append(record)
    (selection,) = select(records)
    assert selection.untrained is untrained
    assert selection.grid_edges == edges
    assert selection_notes(selection) == note
    section = Section("tiny", "random:tiny-llama", "sst2", [selection], records, "zotune bench")
    assert accuracy_table(section).rows[0][1].endswith("°") is untrained


def zo_full_runs(tiny_suite):
    return [r for r in expand_suite(tiny_suite()).runs
            if r.cell.optimizer == "zo-sgd" and r.cell.scheme == "full"]


@pytest.mark.parametrize(
    ("vals", "best_steps", "chosen_lr", "tied", "edges"),
    [
        # the smaller rate; a tie across the whole grid points to no edge of it
        ({1e-3: 0.7, 1e-4: 0.7}, {1e-3: 1, 1e-4: 1}, 1e-4, True, {}),
        ({1e-3: 0.7, 1e-4: 0.7 + 1e-12}, {1e-3: 1, 1e-4: 1}, 1e-4, True, {}),  # rounding
        ({1e-3: 0.8, 1e-4: 0.7}, {1e-3: 1, 1e-4: 1}, 1e-3, False, {"optimizer.lr": "top"}),
    ],
    ids=["tie", "tie-within-rounding", "no-tie"],
)
def test_a_tie_on_validation_goes_to_the_smaller_rate_and_is_stated(tiny_suite, vals,
                                                                     best_steps, chosen_lr,
                                                                     tied, edges):
    """The suite lists 1e-3 first: the old rule (suite order) chose the larger rate silently."""
    records = [record_for(r, val=vals[r.hparams["optimizer.lr"]],
                          best_step=best_steps[r.hparams["optimizer.lr"]])
               for r in zo_full_runs(tiny_suite)]
    (selection,) = select(records)
    assert selection.chosen.hparams["optimizer.lr"] == chosen_lr
    assert bool(selection.ties) is tied
    assert selection.grid_edges == edges
    assert selection_notes(selection) == (
        "tied on validation with lr=0.001, eps=0.001: chosen by the tie rule" if tied
        else "lr at the grid's top")
    section = Section("tiny", "random:tiny-llama", "sst2", [selection], records, "zotune bench")
    text = markdown_report([section], Path("/nonexistent"))
    assert ("**Ties:** in 1 cell of 1 another setting" in text) is tied
    assert ("the smaller learning rate, then the earlier checkpoint" in text) is tied


def test_among_tied_rates_the_earlier_checkpoint_wins(tiny_suite):
    suite = tiny_suite(sweep={"zo-sgd": {"eps": [1e-3, 1e-2]}, "fo-adam": {"lr": [1e-3]}})
    runs = [r for r in expand_suite(suite).runs
            if r.cell.optimizer == "zo-sgd" and r.cell.scheme == "full"]
    records = [record_for(r, val=0.7, best_step=3 if r.hparams["optimizer.eps"] == 1e-3 else 1)
               for r in runs]
    (selection,) = select(records)
    assert selection.chosen.hparams["optimizer.eps"] == 1e-2


@pytest.mark.parametrize(
    ("predictions", "best_step", "reasons"),
    [
        ([1, 1, 1, 1], 1, ["predicts one class on every test example"]),
        ([1, 1, 1, 1], 0, ["best at step 0", "predicts one class on every test example"]),
        ([1, 0, 1, 1], 1, []),
        (None, 1, []),  # a record from before predictions were kept says nothing
    ],
    ids=["one-class", "both", "two-classes", "no-predictions"],
)
def test_a_constant_predictor_is_marked_and_not_counted_as_trained(tiny_suite, predictions,
                                                                   best_step, reasons):
    """Every cell predicting one class while the report said "0 of 2 cells untrained"."""
    records = [record_for(r, val=0.9 if r.hparams["optimizer.lr"] == 1e-3 else 0.7,
                          best_step=best_step, test_predictions=predictions)
               for r in zo_full_runs(tiny_suite)]
    (selection,) = select(records)
    assert selection.untrained_reasons == reasons
    assert selection.untrained is bool(reasons)
    section = Section("tiny", "random:tiny-llama", "sst2", [selection], records, "zotune bench")
    assert accuracy_table(section).rows[0][1].endswith("°") is bool(reasons)
    text = markdown_report([section], Path("/nonexistent"))
    assert ("**Untrained:** 1 of 1 cells" in text) is bool(reasons)
    assert ("1 cell gave every test example the same class" in text) is (
        "predicts one class on every test example" in reasons)


def test_columns_that_average_over_seeds_say_so(tiny_suite):
    records = [record_for(r, best_step=1) for r in zo_full_runs(tiny_suite)]
    (selection,) = select(records)
    section = Section("tiny", "random:tiny-llama", "sst2", [selection], records, "zotune bench")
    header = selection_table(section).header
    assert "best step (seed mean)" in header and "best step" not in header


@pytest.mark.parametrize(
    ("task", "optimizers", "schemes", "rows"),
    [
        ("sst2", ["zo-sgd", "fo-sgd", "zo-sgd-cons"], ["full", "lora"], ["zo-sgd", "fo-sgd"]),
        ("sst2", ["zo-sgd", "fo-sgd"], ["lora"], []),  # one scheme: a study, not the table
        ("sst2", ["zo-sgd", "zo-sgd-cons"], ["full", "lora"], []),  # one of the paper's
        ("copa", ["zo-sgd", "fo-sgd"], ["full", "lora"], []),
    ],
    ids=["mirror", "one-scheme", "one-paper-optimizer", "other-task"],
)
def test_the_paper_comparison_shows_only_what_the_suite_ran_and_only_for_the_papers_table(
        tiny_suite, task, optimizers, schemes, rows):
    sweep = {o: {"lr": [1e-3]} for o in optimizers}
    suite = tiny_suite(grid={"tuning": schemes, "optimizer": optimizers}, sweep=sweep,
                       seeds=[0])
    runs = expand_suite(suite).runs
    records = [record_for(r) for r in runs]
    selections = select(records)
    section = Section("tiny", "random:tiny-llama", task, selections, records, "zotune bench")
    text = markdown_report([section], Path("/nonexistent"))
    table = text.split("Beside the paper")[1].split("###")[0] if rows else ""
    assert ("Beside the paper" in text) is bool(rows)
    assert [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()
            if line.startswith("| ") and "/" in line] == rows


def test_a_seed_band_is_the_mean_and_range_at_the_steps_every_seed_logged():
    from zotune.bench.plots import seed_band

    band = seed_band([{0: 1.0, 1: 2.0, 2: 3.0}, {0: 3.0, 1: 4.0}, {}])
    assert (band.steps, band.mean, band.low, band.high, band.seeds) == (
        [0, 1], [2.0, 3.0], [1.0, 2.0], [3.0, 4.0], 2)


def write_curves(results, records, val_of):
    """Each record's curve.jsonl: a loss every step, validation at steps 0 and 2."""
    for record in records:
        folder = results / RUNS_DIR / record.id
        folder.mkdir(parents=True)
        lines = [{"step": 0, "val_accuracy": 0.5}, {"step": 1, "loss": 1.0 + record.seed},
                 {"step": 2, "loss": 0.5, "val_accuracy": val_of(record)}]
        (folder / "curve.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def title_fits(figure):
    """Whether the figure's titles (its suptitle, its panels') lie inside it."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    box = figure.bbox
    for text in [*figure.texts, *(axis.title for axis in figure.axes)]:
        extent = text.get_window_extent(renderer)
        if extent.x0 < box.x0 - 0.5 or extent.x1 > box.x1 + 0.5 or extent.y1 > box.y1 + 0.5:
            return False
    return True


@pytest.mark.parametrize("key", ["loss", "val_accuracy"])
def test_curves_show_every_setting_tried_with_its_seed_band(tmp_path, tiny_suite, key):
    """Loss plots showed the selected runs only, and there were no validation curves."""
    pytest.importorskip("matplotlib")
    from zotune.bench.plots import cell_curves, curve_panels, curves_figure

    records = [record_for(r, val=0.9 if r.hparams["optimizer.lr"] == 1e-3 else 0.7)
               for r in zo_full_runs(tiny_suite)]
    write_curves(tmp_path, records, lambda r: 0.9 if r.hparams["optimizer.lr"] == 1e-3 else 0.7)
    (selection,) = select(records)
    curves = cell_curves(selection, tmp_path, key)
    assert [(c.label, c.chosen, c.band.seeds) for c in curves] == [
        ("lr=0.001, eps=0.001", True, 2), ("lr=0.0001, eps=0.001", False, 2)]
    if key == "val_accuracy":
        assert curves[0].band.steps == [0, 2] and curves[0].band.mean == [50.0, 90.0]
    else:
        assert curves[0].band.low[0] < curves[0].band.high[0], "the seeds differ at step 1"
    section = Section("tiny-with-a-long-suite-name", "random:tiny-llama-with-a-long-name",
                      "sst2", [selection], records, "zotune bench")
    figure = curves_figure(section, tmp_path, key)
    assert title_fits(figure), "a one-panel figure's title ran past its edge"
    study = dataclasses.replace(selection, cell=dataclasses.replace(selection.cell,
                                                                    variant="dense"))
    studies = Section("tiny", "random:tiny-llama", "sst2", [], records, "zotune bench",
                      studies=[study])
    assert [[name for name, _ in row] for row in curve_panels(studies, tmp_path, key)] == [
        ["dense: zo-sgd / full"]], "a suite of studies only has curves too"


@pytest.mark.parametrize(
    ("values", "limits"),
    [
        ([50.0, 52.0], (41.0, 61.0)),  # a 2-point wobble is drawn on 20 points, not the axis
        ([1.0, 3.0], (0.0, 20.0)),  # kept above 0
        ([99.0, 100.0], (80.0, 100.0)),  # and below 100
        ([40.0, 90.0], (37.5, 92.5)),  # a wide span keeps its own, with a margin
        ([0.0, 100.0], (0.0, 100.0)),
    ],
)
def test_an_accuracy_axis_spans_at_least_twenty_points_within_0_to_100(values, limits):
    from zotune.bench.plots import accuracy_limits

    assert accuracy_limits(values) == pytest.approx(limits)


@pytest.mark.parametrize("seeds", [[0], [0, 1]])
def test_validation_curves_do_not_stretch_a_wobble_nor_promise_a_band_of_one_seed(
        tmp_path, tiny_suite, seeds):
    """cpu-settings' panels spanned 58-66%: a one-example wobble looked like a climb; and a
    one-seed suite's title promised shaded seed ranges it did not have."""
    pytest.importorskip("matplotlib")
    from zotune.bench.plots import MIN_ACCURACY_SPAN, curves_figure

    runs = [r for r in expand_suite(tiny_suite(seeds=seeds)).runs
            if r.cell.optimizer == "zo-sgd" and r.cell.scheme == "full"]
    records = [record_for(r, val=0.52) for r in runs]
    write_curves(tmp_path, records, lambda r: 0.51 + 0.01 * r.seed)
    (selection,) = select(records)
    section = Section("tiny", "random:tiny-llama", "sst2", [selection], records, "zotune bench")
    figure = curves_figure(section, tmp_path, "val_accuracy")
    (axis,) = figure.axes
    low, high = axis.get_ylim()
    assert high - low == pytest.approx(MIN_ACCURACY_SPAN) and low < 50 and high > 52
    title = figure.texts[0].get_text().replace("\n", " ")
    assert ("no band" in title) is (len(seeds) == 1)
    assert ("shaded" in title) is (len(seeds) > 1)
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert all(label.endswith(f"{len(seeds)} seed{'s' * (len(seeds) > 1)})")
               for label in labels), labels
    assert title_fits(figure)


@pytest.mark.parametrize(
    ("levels", "ceiling"),
    [
        ([[0.9, 0.8, 0.7], [1.0, 0.9, 0.9]], None),  # nothing leaves the scale
        ([[0.6] * 3, [0.9] * 3, [1.0, 50.0, 3.5e5, 2e5]], 0.9 * 5),  # one line diverges
        ([[5.0, 10.2, 4.0], [-0.02, -0.03, 0.0]], None),  # two objectives' levels in a row
        ([[-0.5, -0.6], [-0.4, -0.5]], None),  # negative losses (-F1)
    ],
    ids=["calm", "diverging", "mixed-objectives", "negative"],
)
def test_a_diverging_loss_is_cut_off_rather_than_flattening_its_row(levels, ceiling):
    """cpu's zo-sgd/full row: one rate reached 3.5e5 and every other line was flat at 0."""
    from zotune.bench.plots import Band, loss_ceiling

    bands = [Band(list(range(len(v))), v, v, v, 1) for v in levels]
    assert loss_ceiling(bands) == (pytest.approx(ceiling) if ceiling else None)


def test_figures_are_saved_as_paletted_pngs(tmp_path):
    """A report's PNGs are committed and embedded in its HTML: 256 colours, a third of the
    bytes, drawn the same."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    from zotune.utils.figures import PALETTE_COLORS, pyplot, save_figure

    figure, axis = pyplot().subplots()
    axis.fill_between([0, 1, 2], [0, 1, 0], [1, 2, 1], alpha=0.2)
    axis.plot([0, 1, 2], [0.5, 1.5, 0.5])
    save_figure(figure, tmp_path / "figure.png")
    with Image.open(tmp_path / "figure.png") as image:
        assert image.mode == "P" and len(image.getcolors(PALETTE_COLORS)) <= PALETTE_COLORS


def test_accuracy_vs_memory_draws_its_axes_from_zero_with_each_measurements_spread(tiny_suite):
    """634 and 641 MB spanned the whole axis, suggesting a difference that is noise."""
    pytest.importorskip("matplotlib")
    from zotune.bench.plots import accuracy_vs_memory_figure, memory_points

    records = []
    for run in expand_suite(tiny_suite()).runs:
        memory = (634.0 if run.cell.optimizer == "zo-sgd" else 641.0) + run.seed
        records.append(record_for(run, val=0.7, test=0.6, peak_memory_mb=memory,
                                  test_examples=100))
    selections = select(records)
    section = Section("tiny", "random:tiny-llama", "sst2", selections, records, "zotune bench")
    points = memory_points(section)
    assert {(p.memory_low, p.memory_high) for p in points} == {(634.0, 635.0), (641.0, 642.0)}
    low, high = wilson_interval(0.6, 100)
    assert points[0].accuracy_low == pytest.approx(low * 100)
    assert points[0].accuracy_high == pytest.approx(high * 100)
    figure = accuracy_vs_memory_figure(section)
    (axis,) = figure.axes
    assert axis.get_xlim()[0] == 0 and axis.get_ylim() == (0, 100)
    assert title_fits(figure)


PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000" "1f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def test_the_html_report_is_one_page_with_its_tables_and_embedded_plots(tmp_path):
    from zotune.bench.html_report import render_html

    (tmp_path / "cell_loss.png").write_bytes(PNG_1x1)
    (tmp_path.parent / "outside.png").write_bytes(PNG_1x1)
    markdown = textwrap.dedent("""\
        # zotune benchmark report

        - reproduce: `zotune bench cpu && zotune report x`

        **Grid limits:** 1 of 2 cells <untrained>.

        | optimizer | full | notes |
        |:--|--:|:--|
        | zo-sgd | 66.6 ± 1.2 | a \\| b |

        ![cell_loss](cell_loss.png)
        ![outside](../outside.png)

        <details><summary>All 2 runs</summary>

        | run | status |
        |:--|:--|
        | `abc` | done |

        </details>
        """)
    page = render_html(markdown, tmp_path)
    assert "<h1>zotune benchmark report</h1>" in page
    assert "<li>reproduce: <code>zotune bench cpu &amp;&amp; zotune report x</code></li>" in page
    assert "<strong>Grid limits:</strong> 1 of 2 cells &lt;untrained&gt;." in page
    assert ('<tr><td>zo-sgd</td><td class="number">66.6 ± 1.2</td><td>a | b</td></tr>'
            in page)
    embedded = "data:image/png;base64," + base64.b64encode(PNG_1x1).decode()
    assert page.count(embedded) == 1, "the figure outside the report folder is not read"
    assert "(figure outside: not found beside the report)" in page
    assert "<details><summary>All 2 runs</summary>" in page and "</details>" in page
    assert "http" not in page and 'src="data:' in page, "it opens offline, from disk"


def test_a_diverged_setting_completes_its_cell_and_bounds_its_grid(tiny_suite):
    """lr 1e-3 diverged on every seed, 1e-4 finished: the cell is complete, and its choice
    is the bottom of what was tried, with nothing to look for above it but divergence."""
    runs = [r for r in expand_suite(tiny_suite()).runs
            if r.cell.optimizer == "zo-sgd" and r.cell.scheme == "full"]
    records = [record_for(r, status="failed", error="zotune: error: the run diverged")
               if r.hparams["optimizer.lr"] == 1e-3 else record_for(r, val=0.7, best_step=2)
               for r in runs]
    (selection,) = select(records)
    assert selection.chosen.hparams["optimizer.lr"] == 1e-4
    assert selection.diverged_runs == 2 and not selection.partial
    assert selection.grid_edges == {"optimizer.lr": "bottom"}
    section = Section("tiny", "random:tiny-llama", "sst2", [selection], records, "zotune bench")
    row = dict(zip(selection_table(section).header, selection_table(section).rows[0],
                   strict=True))
    assert (row["settings tried"], row["diverged runs"]) == ("2/2", "2")
    crashed = [record_for(r, status="failed") if r.hparams["optimizer.lr"] == 1e-3 else record
               for r, record in zip(runs, records, strict=True)]
    (selection,) = select(crashed)
    assert selection.partial and selection.grid_edges == {}, "a crash says nothing of its lr"


def test_selection_prefers_settings_whose_every_seed_finished(tiny_suite):
    suite = expand_suite(tiny_suite())
    runs = [r for r in suite.runs if r.cell.optimizer == "zo-sgd" and r.cell.scheme == "full"]
    records = []
    for run in runs:
        if run.hparams["optimizer.lr"] == 1e-3:
            # best validation on seed 0, but seed 1 diverged
            status = "done" if run.seed == 0 else "failed"
            records.append(record_for(run, status=status, val=0.99, test=0.99))
        else:
            records.append(record_for(run, val=0.6, test=0.6))
    planned = [
        {"id": r.id, "model": r.cell.model, "task": r.cell.task, "scheme": r.cell.scheme,
         "optimizer": r.cell.optimizer, "hparams": r.hparams, "seed": r.seed}
        for r in suite.runs
    ]
    selections = {s.cell.optimizer + "/" + s.cell.scheme: s for s in select(records, planned)}
    chosen = selections["zo-sgd/full"]
    assert chosen.chosen.hparams["optimizer.lr"] == 1e-4
    assert chosen.partial, "a seed of the cell failed"
    assert selections["fo-adam/lora"].chosen is None, "never ran"


@pytest.mark.parametrize(
    ("metric", "label", "scores", "interval"),
    [
        ("accuracy", "acc", None, True),
        ("f1", "F1", None, False),
        ("f1", "F1", [0.2, 0.6, 0.4, 0.4], True),
    ],
)
def test_tables_name_the_sections_metric(metric, label, scores, interval, tiny_suite):
    """A generation task's section (SQuAD: F1) says F1 where others say accuracy. F1 is not
    a proportion of examples, so its interval is the bootstrap of the per-example scores,
    and a record without them shows none."""
    suite = expand_suite(tiny_suite())
    runs = [r for r in suite.runs if r.cell.optimizer == "zo-sgd" and r.cell.scheme == "full"]
    records = [record_for(r, val=0.3, test=0.4, metric=metric, test_examples=50,
                          test_scores=scores) for r in runs]
    (selection,) = select(records)
    section = Section("tiny", "random:tiny-llama", "sst2", [selection], records, "zotune bench")
    header = selection_table(section).header
    assert header[header.index("notes") + 1:][:2] == [f"val {label} (%, seed mean)",
                                                      f"test {label} (%, seed mean ± std)"]
    assert ("(" in accuracy_table(section).rows[0][1]) == interval


@pytest.mark.parametrize(
    ("unplanned", "line"),
    [(0, None),
     (1, "1 stored run belongs to no current suite plan (its suite's grid or config changed "
         "since); it is left out."),
     (2, "2 stored runs belong to no current suite plan (their suite's grid or config "
         "changed since); they are left out.")],
)
def test_the_report_counts_runs_outside_the_plan(unplanned, line, tmp_path):
    text = markdown_report([], tmp_path, unplanned)
    assert (line in text) if line else "suite plan" not in text


def test_a_partial_sections_budget_says_it_covers_the_runs_recorded_so_far(tiny_suite):
    """Only FO runs finished: "100 steps (every optimizer)" would be wrong for the ZO cells."""
    from zotune.bench.report import context_lines

    suite = expand_suite(tiny_suite())
    planned = [{"id": r.id, **r.cell.__dict__, "hparams": r.hparams, "seed": r.seed}
               for r in suite.runs]
    records = [record_for(r) for r in suite.runs if r.cell.optimizer == "fo-adam"]
    whole = [record_for(r) for r in suite.runs]
    for recorded, label in [(records, "step budget (runs recorded so far):"),
                            (whole, "step budget:")]:
        selections = select(recorded, planned)
        section = Section("tiny", "random:tiny-llama", "sst2", selections, recorded, "zotune")
        assert any(line.startswith(f"- {label}") for line in context_lines(section))


@pytest.mark.parametrize(
    ("error", "diverged"),
    [
        ("step 3: the trainable weights hold non-finite values, so the run diverged", 1),
        ("step 1: the update overflowed the float16 weights (optimizer.lr=60000)", 1),
        ("2 of 4 steps were skipped for non-finite losses (more than 10%)", 1),
        ("CUDA out of memory", 0),
    ],
)
def test_the_report_counts_diverged_runs_and_skipped_steps(error, diverged, tiny_suite):
    from zotune.bench.report import failed_runs_table, selection_table

    suite = expand_suite(tiny_suite())
    runs = [r for r in suite.runs if r.cell.optimizer == "zo-sgd" and r.cell.scheme == "full"]
    records = [
        record_for(run, status="failed", error=error) if run.hparams["optimizer.lr"] == 1e-3
        else record_for(run, skipped_steps=2)
        for run in runs
    ]
    (selection,) = select(records)
    assert selection.diverged_runs == diverged * 2  # both seeds of lr 1e-3
    assert selection.skipped_steps == 4
    assert selection.chosen.hparams["optimizer.lr"] == 1e-4, "a diverged setting is never chosen"
    section = Section("tiny", "random:tiny-llama", "sst2", [selection], records, "zotune bench")
    table = selection_table(section)
    assert table.header[-2:] == ["diverged runs", "skipped steps"]
    assert table.rows[0][-2:] == [str(diverged * 2), "4"]
    failures = failed_runs_table(section)
    outcome = failures.header.index("outcome")
    expected = "diverged: not retried" if diverged else "failed: retried by the next bench"
    assert [row[outcome].split(" (")[0] for row in failures.rows] == [expected] * 2


# Runner and report, end to end -------------------------------------------------------------


def run_cli(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def smoke_results(sst2_dir, tmp_path_factory):
    """The smoke suite run once through the command line, two runs at a time."""
    results = tmp_path_factory.mktemp("smoke")
    started = time.monotonic()
    code = cli.main(
        ["bench", "smoke", f"task.data_dir={sst2_dir}", "--results", str(results),
         "--jobs", "2"]
    )
    return results, code, time.monotonic() - started


def test_the_smoke_suite_runs_end_to_end(smoke_results):
    results, code, _ = smoke_results
    assert code == 0
    with ResultsStore(results, create=False) as store:
        records = store.records()
        (plan_row,) = store.plans()
    assert len(records) == 4 and {r.status for r in records} == {"done"}
    assert {(r.cell.optimizer, r.cell.scheme) for r in records} == {
        (o, s) for o in ("zo-sgd", "fo-sgd") for s in ("full", "lora")
    }
    for record in records:
        assert 0 <= record.metrics["test_accuracy"] <= 1
        assert record.metrics["steps"] == 2
        assert record.metrics["threads"] == threads_per_job(2)
        assert record.hardware and record.hostname and record.zotune_version
        assert (results / RUNS_DIR / record.id / "metrics.jsonl").is_file()
        assert json.loads((results / RUNS_DIR / record.id / OUTCOME_FILE).read_text())[
            "status"] == "done"
    assert plan_row.name == "smoke" and len(plan_row.runs) == 4
    assert plan_row.command.startswith("zotune bench smoke task.data_dir=")


def test_running_again_runs_nothing(smoke_results, sst2_dir, capsys):
    results, _, _ = smoke_results
    code, out, err = run_cli(
        ["bench", "smoke", f"task.data_dir={sst2_dir}", "--results", str(results)], capsys
    )
    assert code == 0
    assert "4 done before, 0 to run" in err
    assert "4 done, 0 failed (0 run now" in out
    with ResultsStore(results, create=False) as store:
        assert {r.attempts for r in store.records()} == {1}


def test_dry_run_lists_runs_and_their_state(smoke_results, sst2_dir, capsys):
    results, _, _ = smoke_results
    code, out, _ = run_cli(["bench", "smoke", "--results", str(results), "--dry-run"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 5 and lines[-1] == "4 runs, 0 to run"
    assert all(" done " in line and " skip " in line for line in lines[:4])


def test_report_writes_tables_and_plots(smoke_results, capsys):
    results, _, _ = smoke_results
    code, out, err = run_cli(["report", str(results)], capsys)
    assert code == 0, err
    report = results / "report"
    markdown = (report / "report.md").read_text()
    assert "| optimizer | full | lora |" in markdown
    assert any(line.startswith("| zo-sgd | ") for line in markdown.splitlines())
    assert any(line.startswith("| fo-sgd | ") for line in markdown.splitlines())
    assert "Partial" not in markdown and "—" not in markdown.split("Beside the paper")[0]
    paper_rows = [line for line in markdown.splitlines() if "/ 91.1 |" in line]
    assert len(paper_rows) == 1 and paper_rows[0].startswith("| fo-sgd | ")
    for fact in ("random:tiny-llama", "2 steps, batch 4", "cores", "zotune: 0.1.0",
                 "reproduce: `zotune bench smoke task.data_dir="):
        assert fact in markdown
    with (report / "accuracy.csv").open() as file:
        accuracy = list(csv.DictReader(file))
    assert len(accuracy) == 4
    assert {row["optimizer"] for row in accuracy} == {"zo-sgd", "fo-sgd"}
    with (report / "runs.csv").open() as file:
        assert len(list(csv.DictReader(file))) == 4
    pngs = sorted(report.glob("*.png"))
    assert [p.name for p in pngs] == [
        "smoke-sst2-random-tiny-llama_accuracy_vs_memory.png",
        "smoke-sst2-random-tiny-llama_loss.png",
        "smoke-sst2-random-tiny-llama_validation.png",
        "smoke-sst2-random-tiny-llama_validation_vs_forward_passes.png",
    ]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<table>" in page
    assert "### Time to accuracy" in markdown, "the smoke suite's ZO-SGD cells have curves"
    assert str(report / "report.md") in out


def test_a_failed_run_is_recorded_and_retried(tmp_path, capsys, write_suite, two_run_suite):
    suite_file = tmp_path / "tiny.yaml"
    results = tmp_path / "results"
    common = two_run_suite()
    # fo-adam reads from a folder that does not exist, so its worker crashes; zo-sgd never runs.
    broken = {"fo-adam": {"task": {"data_dir": str(tmp_path / "missing")}}}
    write_suite(suite_file, overrides=broken, **common)
    argv = ["bench", str(suite_file), "--results", str(results), "--only", "fo-adam"]
    code, out, err = run_cli(argv, capsys)
    assert code == 1
    assert "0 done, 1 failed" in out
    with ResultsStore(results, create=False) as store:
        (failed,) = store.records()
    assert failed.status == "failed" and failed.cell.optimizer == "fo-adam"
    assert failed.error.startswith("zotune: error:") and "missing" in failed.error
    assert failed.error in err, "the progress line shows the error"
    assert "missing" in (results / RUNS_DIR / failed.id / STDERR_FILE).read_text()

    # A partial report marks the empty cells and lists the failure.
    build_report(results, plots=False)
    markdown = (results / "report" / "report.md").read_text()
    assert "**Partial:** 2 of 2 cells" in markdown
    assert "| fo-adam | — |" in markdown and "| zo-sgd | — |" in markdown
    assert "### Failed runs" in markdown and failed.id in markdown

    # --no-retry-failed leaves it; the default retries it, and only it.
    code, out, _ = run_cli([*argv, "--no-retry-failed"], capsys)
    assert code == 1 and "(0 run now" in out
    write_suite(suite_file, **common)  # the data folder fixed: same run ids
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "0 done before, 1 to run" in err
    with ResultsStore(results, create=False) as store:
        (retried,) = store.records()
        attempts = [a["status"] for a in store.attempts(failed.id)]
    assert retried.id == failed.id and retried.status == "done"
    assert retried.attempts == 2 and attempts == ["failed", "done"]


def test_an_outcome_written_before_the_runner_died_is_recorded_without_rerunning(
    tmp_path, tiny_suite
):
    suite = expand_suite(tiny_suite(seeds=[0], grid={"tuning": ["full"],
                                                     "optimizer": ["zo-sgd"]},
                                    sweep={"zo-sgd": {"lr": [1e-3]}}))
    (run,) = suite.runs
    run_dir = tmp_path / RUNS_DIR / run.id
    run_dir.mkdir(parents=True)
    outcome = {"run_id": run.id, "status": "done", "started_at": 1.0, "finished_at": 3.0,
               "metrics": {"best_val_accuracy": 0.5, "test_accuracy": 0.5},
               "zotune_version": "0.1.0", "hostname": "h", "hardware": "cpu"}
    (run_dir / OUTCOME_FILE).write_text(json.dumps(outcome))
    summary = Runner(suite, tmp_path).run()
    assert (summary.done, summary.failed) == (1, 0)
    assert not (run_dir / STDERR_FILE).exists(), "no worker was started"


def test_dry_run_plan_marks_pending_and_failed(tmp_path, tiny_suite):
    suite = expand_suite(tiny_suite())
    first, second = suite.runs[:2]
    statuses = {first.id: "done", second.id: "failed"}
    retry = {p.spec.id: (p.state, p.will_run) for p in plan(suite, statuses, True)}
    assert retry[first.id] == ("done", False) and retry[second.id] == ("failed", True)
    assert retry[suite.runs[2].id] == ("pending", True)
    no_retry = {p.spec.id: p.will_run for p in plan(suite, statuses, False)}
    assert no_retry[second.id] is False
    listing = describe_plan(plan(suite, statuses, True))
    assert listing.endswith(f"{len(suite.runs)} runs, {len(suite.runs) - 1} to run")


@pytest.mark.parametrize(
    ("error", "state", "retried"),
    [
        ("zotune: error: NonFiniteLossError: 10 non-finite losses in a row at step 242: the "
         "run diverged (lower optimizer.lr, currently 0.0001)", "diverged", False),
        ("zotune: error: the worker was killed (signal 9)", "failed", True),
    ],
    ids=["diverged", "crashed"],
)
def test_a_diverged_run_is_not_retried_but_can_be_rerun(tmp_path, tiny_suite, error, state,
                                                        retried):
    """Divergence is what a run's settings do, so a retry would spend its steps to diverge
    again; a crash is not, so it is retried. --rerun runs a diverged cell again."""
    suite = expand_suite(tiny_suite())
    run = suite.runs[0]
    with ResultsStore(tmp_path) as store:
        store.record(record_for(run, status="failed", error=error))
        states = run_states(store)
    assert states == {run.id: state}
    (planned,) = [p for p in plan(suite, states, True) if p.spec.id == run.id]
    assert (planned.state, planned.will_run) == (state, retried)
    rerun = {p.spec.id: p.will_run for p in plan(suite, states, True, rerun=["zo-sgd/full"])}
    assert rerun[run.id] is True
    assert f"{run.id}  {state:8s}  {'run' if retried else 'skip'}" in describe_plan(
        plan(suite, states, True))


def test_only_runs_the_cells_a_selector_picks(tiny_suite):
    suite = expand_suite(tiny_suite())
    picked = [p.spec for p in plan(suite, {}, True, ["zo-sgd/lora", "fo-adam"]) if p.will_run]
    assert {(r.cell.optimizer, r.cell.scheme) for r in picked} == {
        ("zo-sgd", "lora"), ("fo-adam", "full"), ("fo-adam", "lora")
    }
    assert len(plan(suite, {}, True, ["lora"])) == len(suite.runs), "the plan keeps every run"
    with pytest.raises(SuiteError, match="--only: selector 'zo-sgdd' names nothing"):
        plan(suite, {}, True, ["zo-sgdd"])


def test_rerun_runs_finished_runs_of_the_cells_it_picks_again(tmp_path, capsys, write_suite,
                                                              two_run_suite):
    """A finished run rerun from scratch: a new attempt in its record, the others untouched;
    a selector naming nothing is refused in one line that names --rerun."""
    suite_file = write_suite(tmp_path / "tiny.yaml", **two_run_suite())
    results = tmp_path / "results"
    assert run_cli(["bench", str(suite_file), "--results", str(results)], capsys)[0] == 0
    with ResultsStore(results, create=False) as store:
        before = {r.cell.optimizer: r for r in store.records()}
    argv = ["bench", str(suite_file), "--results", str(results), "--rerun", "zo-sgd"]
    code, out, err = run_cli([*argv, "--dry-run"], capsys)
    assert code == 0 and "2 runs, 1 to run" in out
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "2 done before, 1 to run" in err
    with ResultsStore(results, create=False) as store:
        after = {r.cell.optimizer: r for r in store.records()}
        assert len(store.attempts(after["zo-sgd"].id)) == 2
    assert after["zo-sgd"].started_at > before["zo-sgd"].finished_at
    assert after["fo-adam"] == before["fo-adam"]
    for record in after.values():  # a finished run keeps its best weights, not its last.pt
        run_dir = results / RUNS_DIR / record.id
        assert (run_dir / "best.pt").is_file() and not (run_dir / "last.pt").exists()
    code, _, err = run_cli([*argv[:-1], "zo-sgdd"], capsys)
    assert code == 2 and "--rerun: selector 'zo-sgdd' names nothing" in err


def test_jobs_must_be_positive(tmp_path, capsys):
    code, _, err = run_cli(["bench", "smoke", "--results", str(tmp_path), "--jobs", "0"], capsys)
    assert code == 2 and "--jobs must be at least 1, got 0" in err


def test_bad_suite_files_fail_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""
        grid: {optimizer: [zo-sgd]}
        sweep: {zo-sgd: {lr: [1.0e-3]}, fo-sgd: {lr: [1.0e-2]}}
    """))
    code, _, err = run_cli(["bench", str(path), "--results", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "selector 'fo-sgd' names nothing in the grid" in err
    assert not (tmp_path / "r").exists()


def test_a_study_runs_its_shared_baseline_once_and_reports_each_variant(sst2_dir, tmp_path,
                                                                       capsys, write_suite):
    suite = write_suite(
        tmp_path / "study.yaml",
        grid=[{"tuning": ["full"], "optimizer": ["zo-sgd"],
               "variant": {"dense": {}, "sparse-0.5": {"optimizer": {"sparsity": 0.5}},
                           "dense-again": {}}}],
        sweep={"default": {"lr": [1e-3], "eps": [1e-3]}},
        seeds=[0],
    )
    results = tmp_path / "results"
    code, out, err = run_cli(
        ["bench", str(suite), f"task.data_dir={sst2_dir}", "--results", str(results)], capsys
    )
    assert code == 0, err
    assert "2 runs: 2 done" in out, "dense and dense-again share one run"
    code, _, err = run_cli(["report", str(results), "--no-plots"], capsys)
    assert code == 0, err
    markdown = (results / "report" / "report.md").read_text()
    assert "### Studies" in markdown and "### Test accuracy" not in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| dense")]
    assert len(rows) == 2 and all("lr=0.001" in row for row in rows)
    assert "| sparse-0.5 | zo-sgd | full |" in markdown
    with (results / "report" / "accuracy.csv").open() as file:
        variants = [row["variant"] for row in csv.DictReader(file)]
    assert sorted(variants) == ["dense", "dense-again", "sparse-0.5"]


def test_a_run_past_the_time_limit_is_stopped_and_recorded(sst2_dir, tmp_path, capsys, write_suite):
    suite = write_suite(
        tmp_path / "slow.yaml",
        grid={"tuning": ["full"], "optimizer": ["zo-sgd"]},
        sweep={"zo-sgd": {"lr": [1e-3], "eps": [1e-3]}},
        overrides={"zo-sgd": {"train": {"steps": 1_000_000, "eval_every": 1_000_000}}},
        seeds=[0],
    )
    results = tmp_path / "results"
    started = time.monotonic()
    code, out, err = run_cli(
        ["bench", str(suite), f"task.data_dir={sst2_dir}", "--results", str(results),
         "--time-limit", "12"],
        capsys,
    )
    assert code == 1 and time.monotonic() - started < 60
    assert "1 runs: 0 done, 1 failed" in out
    with ResultsStore(results, create=False) as store:
        (record,) = store.records()
    assert record.status == "failed" and record.error == "stopped after the time limit of 12 s"
    code, _, err = run_cli(["bench", str(suite), "--time-limit", "0"], capsys)
    assert code == 2 and "--time-limit must be a positive number of seconds, got 0.0" in err


def test_killing_the_runner_mid_suite_loses_no_finished_run(sst2_dir, tmp_path, write_suite):
    suite = write_suite(
        tmp_path / "three.yaml",
        grid={"tuning": ["full"], "optimizer": ["zo-sgd"]},
        sweep={"zo-sgd": {"lr": [1e-2, 1e-3, 1e-4], "eps": [1e-3]}},
        seeds=[0],
    )
    results = tmp_path / "results"
    command = [sys.executable, "-m", "zotune", "bench", str(suite),
               f"task.data_dir={sst2_dir}", "--results", str(results)]
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    done: dict[str, str] = {}
    while not done and time.monotonic() < deadline and runner.poll() is None:
        time.sleep(0.5)
        if (results / "results.sqlite").is_file():
            with ResultsStore(results, create=False) as store:
                done = store.statuses()
    # SIGTERM, as a scheduler would send; the runner treats it as Ctrl-C (SIGINT itself may
    # be ignored in a process started in the background, as CI can start the tests).
    runner.send_signal(signal.SIGTERM)
    runner.communicate(timeout=60)
    assert done, "no run finished before the deadline"
    with ResultsStore(results, create=False) as store:
        after_kill = store.statuses()
    assert 1 <= len(after_kill) < 3 and set(after_kill.values()) == {"done"}
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(after_kill)} done before, {3 - len(after_kill)} to run" in resumed.stderr
    with ResultsStore(results, create=False) as store:
        records = store.records()
    assert len(records) == 3 and {r.status for r in records} == {"done"}
    assert {r.attempts for r in records} == {1}, "no run was recorded twice"


def test_the_frontier_suite_gives_every_zo_method_the_same_forward_passes():
    """cpu-frontier compares methods at an equal budget of forward passes, evaluated at the
    same passes: each ZO run's steps and evaluation interval times its passes per step (MeZO-
    SVRG's anchor batches counted) give 960 and 240."""
    suite = load_suite("cpu-frontier")
    checked = set()
    for run in suite.runs:
        if run.cell.optimizer == "fo-sgd" or run.cell.scheme != "full" or run.confirm:
            continue
        options = {k: v for k, v in run.config["optimizer"].items()
                   if k not in ("name", "schedule", "warmup_steps") and v is not None}
        optimizer = create_optimizer(run.cell.optimizer, torch.nn.Linear(4, 4), **options)
        train = run.config["train"]
        optimizer.examples_wanted(train["batch_size"], run.config["task"]["num_train"])
        passes = optimizer.forward_passes_per_step
        assert train["steps"] * passes == pytest.approx(960), run.label()
        assert train["eval_every"] * passes == pytest.approx(240), run.label()
        checked.add(run.cell.optimizer)
    assert len(checked) == 7
