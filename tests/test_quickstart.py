"""``zotune quickstart`` and ``make demo``: each run gets a fresh folder, the quickstart trains,
evaluates and exports a tiny random model end to end, and says where everything is."""

from __future__ import annotations

import json
import time

import pytest

from zotune.cli import main
from zotune.models.export import CARD_FILE
from zotune.recipes import demo
from zotune.recipes.quickstart import fresh_folder


def test_fresh_folders_never_reuse_a_taken_name(tmp_path):
    assert fresh_folder(tmp_path, "demo") == tmp_path / "demo-1"
    (tmp_path / "demo-1").mkdir()
    (tmp_path / "demo-3").mkdir()
    assert fresh_folder(tmp_path, "demo") == tmp_path / "demo-2"


def test_quickstart_trains_evaluates_and_exports_in_seconds(tmp_path, capsys):
    started = time.perf_counter()
    assert main(["quickstart", "--root", str(tmp_path)]) == 0
    seconds = time.perf_counter() - started
    out = capsys.readouterr().out
    folder = tmp_path / "quickstart-1"
    result = json.loads((folder / "run" / "result.json").read_text())
    assert result["untrained"] is None, result["untrained"]
    assert result["test_accuracy"] > result["test_accuracy_before"] + 0.1
    assert (folder / "model" / "model.safetensors").is_file()
    assert "learned nothing" not in (folder / "model" / CARD_FILE).read_text()
    for line in (f"run folder {folder / 'run'}", f"model      {folder / 'model'}",
                 f"task file  {folder / 'task' / 'reviews.yaml'}", "make demo"):
        assert line in out
    # A generous bound: the issue asks for under a minute; this catches a many-fold slowdown
    # (such as threads oversubscribing a busy machine), not a noisy second.
    assert seconds < 120


def test_a_second_quickstart_is_a_new_run(tmp_path, capsys):
    (tmp_path / "quickstart-1").mkdir()
    assert main(["quickstart", "--root", str(tmp_path), "--steps", "1"]) == 0
    assert (tmp_path / "quickstart-2" / "run" / "result.json").is_file()


@pytest.fixture
def tiny_demo(monkeypatch, sst2_dir):
    """The demo's recipe on the tiny random model, reading the test SST-2 files."""
    recipe = {section: dict(values) for section, values in demo.DEMO_RECIPE.items()}
    recipe["model"] = {"name": "random:tiny-llama"}
    recipe["task"] = {"name": "sst2", "data_dir": str(sst2_dir), "num_train": 8, "num_val": 4,
                      "num_test": 4}
    recipe["train"].update(batch_size=4, progress=False)
    monkeypatch.setattr(demo, "DEMO_RECIPE", recipe)


def test_make_demo_runs_again_into_a_fresh_folder(tiny_demo, tmp_path, capsys):
    for _ in range(2):
        demo.run_demo(steps=1, root=tmp_path)
    out = capsys.readouterr().out
    for number in (1, 2):
        assert (tmp_path / f"demo-{number}" / "result.json").is_file()
        assert f"run folder {tmp_path / f'demo-{number}'}" in out
    assert "make demo again starts a new run" in out
