"""The recipes page: per scheme, the best-validated ZO cell, ZO-SGD and the best FO cell, each
as the `zotune train` command of its chosen setting with its measured before → after; and the
README's recipe table is that page's, copied."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from zotune import cli
from zotune.bench import index, recipes
from zotune.bench.runner import RUNS_DIR
from zotune.bench.store import METRICS_FILE, ResultsStore, RunRecord, SuitePlan
from zotune.bench.suite import expand_suite
from zotune.config import config_from

ROOT = Path(__file__).resolve().parents[1]

# (optimizer, scheme, lr) → per seed: (validation at steps 0, 1, 2; test at 0; final test)
RUNS = {
    ("zo-sgd", "full", 1e-3): [([0.5, 0.6, 0.7], 0.50, 0.70), ([0.5, 0.6, 0.6], 0.50, 0.60)],
    ("zo-sgd", "full", 1e-4): [([0.5, 0.5, 0.6], 0.50, 0.55), ([0.5, 0.5, 0.6], 0.50, 0.55)],
    ("lozo", "full", 1e-3): [([0.5, 0.7, 0.8], 0.50, 0.75), ([0.5, 0.7, 0.8], 0.50, 0.85)],
    ("fo-adam", "full", 1e-3): [([0.5, 0.8, 0.9], 0.48, 0.90), ([0.5, 0.8, 0.9], 0.48, 0.90)],
    ("zo-sgd", "lora", 1e-3): [([0.5, 0.6, 0.6], 0.50, 0.60), ([0.5, 0.6, 0.6], 0.50, 0.60)],
    ("zo-sgd", "lora", 1e-4): [([0.5, 0.5, 0.5], 0.50, 0.50), ([0.5, 0.5, 0.5], 0.50, 0.50)],
    # best on validation at step 0 in every run: untrained, never a recipe, however it validates
    ("lozo", "lora", 1e-3): [([0.9, 0.5, 0.5], 0.50, 0.50), ([0.9, 0.5, 0.5], 0.50, 0.50)],
    ("fo-adam", "lora", 1e-3): [([0.5, 0.7, 0.8], 0.50, 0.80), ([0.5, 0.7, 0.8], 0.50, 0.80)],
}


def store(tmp_path, tiny_suite, runs=RUNS, missing=()):
    suite = expand_suite(tiny_suite(
        grid={"tuning": ["full", "lora"], "optimizer": ["zo-sgd", "lozo", "fo-adam"]},
        sweep={"zo-sgd": {"lr": [1e-3, 1e-4]}, "lozo": {"lr": [1e-3]},
               "fo-adam": {"lr": [1e-3]}},
        base={**tiny_suite()["base"], "train": {"steps": 2, "eval_every": 1,
                                                "eval_test_every": True}}))
    folder = tmp_path / "store"
    with ResultsStore(folder) as results:
        results.save_plan(SuitePlan.of(suite, "zotune bench tiny"), now=1.0)
        for run in suite.runs:
            key = (run.cell.optimizer, run.cell.scheme, run.hparams["optimizer.lr"])
            if (*key, run.seed) in missing:
                continue
            validation, before, after = runs[key][run.seed]
            run_dir = folder / RUNS_DIR / run.id
            run_dir.mkdir(parents=True)
            tests = [before, after, after]
            (run_dir / METRICS_FILE).write_text("".join(
                json.dumps({"step": step, "val_accuracy": v, "test_accuracy": t}) + "\n"
                for step, (v, t) in enumerate(zip(validation, tests, strict=True))))
            best = validation.index(max(validation))
            results.record(RunRecord.for_run(
                "tiny", run, status="done", error=None, started_at=1.0, finished_at=2.0,
                metrics={"best_val_accuracy": max(validation), "test_accuracy": after,
                         "best_step": best, "steps": 2, "seconds_per_step": 1.5,
                         "forward_passes_per_step": 2},
                zotune_version="0.2.0", hostname="host", hardware="a CPU"))
    return folder


def table_rows(text):
    return [index.cells(line) for line in text.splitlines()
            if line.startswith("| ") and not line.startswith(("| scheme", "| ---"))]


def test_each_scheme_gets_its_best_zo_cell_the_reference_and_its_best_fo_cell(
        tmp_path, tiny_suite):
    folder = store(tmp_path, tiny_suite)
    rows = table_rows(recipes.page(folder))
    assert [row[:5] for row in rows] == [
        ["full", "lozo (lr=0.001)", "best ZO on validation", "50.0 → 80.0 ± 7.1 (2 seeds)",
         "2"],
        ["full", "zo-sgd (lr=0.001)", "the ZO reference", "50.0 → 65.0 ± 7.1 (2 seeds)", "2"],
        ["full", "fo-adam (lr=0.001)", "best with backprop", "48.0 → 90.0 (2 seeds)", "2"],
        # LoRA's LOZO validated best, at step 0: untrained, so ZO-SGD is the best ZO cell
        ["lora", "zo-sgd (lr=0.001)", "best ZO on validation, the reference",
         "50.0 → 60.0 (2 seeds)", "2"],
        ["lora", "fo-adam (lr=0.001)", "best with backprop", "50.0 → 80.0 (2 seeds)", "2"],
    ]
    assert {row[5] for row in rows} == {"0 min (1.50 s/step, in the suite)"}
    assert {row[6] for row in rows} == {"—"}  # no profile: no step memory alone


def test_a_cell_with_all_its_seeds_is_a_recipe_before_one_still_waiting_for_some(
        tmp_path, tiny_suite):
    """LOZO full validates best, but its second seed has not run: ZO-SGD, with both, is the
    recipe; a scheme where no ZO cell has all its seeds still gets its best one."""
    folder = store(tmp_path, tiny_suite, missing={("lozo", "full", 1e-3, 1),
                                                  ("zo-sgd", "lora", 1e-3, 1),
                                                  ("zo-sgd", "lora", 1e-4, 1)})
    rows = table_rows(recipes.page(folder))
    assert [row[:4] for row in rows if row[2] != "best with backprop"] == [
        ["full", "zo-sgd (lr=0.001)", "best ZO on validation, the reference",
         "50.0 → 65.0 ± 7.1 (2 seeds)"],
        ["lora", "zo-sgd (lr=0.001)", "best ZO on validation, the reference",
         "50.0 → 60.0 (1 seed)"],
    ]


def test_a_recipes_command_builds_its_seed_0_run_less_where_it_ran(tmp_path, tiny_suite):
    """`zotune train` given a row's command builds the chosen setting's seed-0 config, with
    the suite's execution keys left out and the output folder named for the cell."""
    folder = store(tmp_path, tiny_suite)
    with ResultsStore(folder, create=False) as results:
        records = {(r.cell.optimizer, r.cell.scheme, r.hparams["optimizer.lr"], r.seed): r
                   for r in results.records()}
    rows = table_rows(recipes.page(folder))
    for row in rows:
        line = row[-1].strip("`")
        optimizer, lr = row[1].split(" (lr=")
        record = records[(optimizer, row[0], float(lr.rstrip(")")), 0)]
        args = cli.build_parser().parse_args(shlex.split(line)[1:])
        built = cli._config_from(args, args.items).to_dict()
        expected = config_from(record.config).to_dict()
        for dotted in recipes.EXECUTION_KEYS:
            section, name = dotted.split(".")
            built[section].pop(name), expected[section].pop(name)
        assert built == expected
        assert line.endswith(f"--output-dir runs/{optimizer}-{row[0]}")


def test_a_store_without_a_trained_chosen_cell_says_so(tmp_path, tiny_suite):
    untrained = {key: [([0.9, 0.5, 0.5], 0.5, 0.5)] * 2 for key in RUNS}
    text = recipes.page(store(tmp_path, tiny_suite, untrained))
    assert "No cell has a chosen, trained setting yet." in text and not table_rows(text)


def test_the_page_is_written_whole_and_a_missing_store_is_one_line(tmp_path, tiny_suite,
                                                                    capsys):
    out = tmp_path / "recipes.md"
    assert recipes.main([str(store(tmp_path, tiny_suite)), "--out", str(out)]) == 0
    assert out.read_text().startswith("# Recipes")
    assert recipes.main([str(tmp_path / "none"), "--out", str(tmp_path / "x.md")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"zotune: error: no results database or run records in {tmp_path / 'none'}")
    assert not (tmp_path / "x.md").exists()


@pytest.mark.parametrize("page", ["README.md"])
def test_the_readme_recipe_table_is_the_recipes_pages(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    assert "<!-- table: docs/results/recipes.md" in text
    assert index.refreshed(text, ROOT) == text, (
        f"{page} is stale: python -m zotune.bench.index {page}")
