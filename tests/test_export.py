"""Export: a run's model loads back with plain transformers / peft in a fresh process and
scores its test examples as the run did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zotune.cli import main
from zotune.config import load_config
from zotune.models.export import CARD_FILE, ExportError, export_run
from zotune.training.checkpoints import BEST_FILE, load_trainable_checkpoint, load_trainable_state
from zotune.training.run import setup
from zotune.training.train import finetune

# (name, tuning scheme, merge, optimizer, lr, best step > 0): every scheme, LoRA merged too,
# head by ZO and FO. Where the tiny run's validation picks a trained step (seeded, so always
# the same), the export must differ from the untrained model.
# Tiny runs that learn: their kept checkpoint is a trained step (seeded, so always).
LEARNS = {"optimizer__name": "fo-sgd", "optimizer__lr": 1e-1, "train__steps": 4}

EXPORTS = [
    ("full", "full", False, "fo-sgd", 1e-1, True),
    ("lora", "lora", False, "zo-sgd", 1e-1, True),
    ("lora-merged", "lora", True, "zo-sgd", 1e-1, True),
    ("prefix", "prefix", False, "zo-sgd", 1e-2, False),
    ("prompt", "prompt", False, "fo-sgd", 1e-1, True),
    ("head", "head", False, "zo-sgd", 1e-2, False),
    ("head-fo", "head", False, "fo-sgd", 1e-1, True),
]

# Loads each exported folder with transformers / peft only, and scores the run's test
# examples with zotune's scorer: {name: {"accuracy": a, "scores": [[...]]}}.
LOADER = """
import json, sys
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from zotune.config import load_config
from zotune.training.run import load_task_splits
from zotune.evaluation.scoring import Scorer

jobs = json.loads(sys.argv[1])
answers = {}
for name, job in jobs.items():
    folder = job["folder"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if job["adapter"]:
        base = AutoModelForCausalLM.from_pretrained(folder + "/base_model")
        model = PeftModel.from_pretrained(base, folder)
        if job["virtual_tokens"]:  # as the model card says
            from zotune.tuning import positions_as_trained
            positions_as_trained(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    config = load_config(job["run_dir"] + "/config.yaml")
    test = load_task_splits(config, log=lambda message: None).test
    scorer = Scorer(model, tokenizer, kind="causal")
    scores = []
    for start in range(0, len(test), job["batch_size"]):
        batch = scorer.encode(test[start : start + job["batch_size"]])
        with __import__("torch").no_grad():
            scores += scorer.scores(batch).tolist()
    answers[name] = {"accuracy": scorer.accuracy(test, job["batch_size"]), "scores": scores}
print(json.dumps(answers))
"""


def zotune_scores(run_dir: Path, trained: bool) -> torch.Tensor:
    """The test scores of the run's model as zotune builds it (best checkpoint or untrained)."""
    config = load_config(run_dir / "config.yaml")
    run = setup(config, for_training=False)
    if trained:
        load_trainable_state(run.model, load_trainable_checkpoint(run_dir / BEST_FILE))
    test, size = run.splits.test, config.train.eval_batch_size
    with torch.no_grad():
        batches = [test[start : start + size] for start in range(0, len(test), size)]
        return torch.cat([run.scorer.scores(run.scorer.encode(batch)) for batch in batches])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, sst2_dir, tiny_run_config):
    """Every export of :data:`EXPORTS`, loaded back in one fresh process."""
    root = tmp_path_factory.mktemp("export")
    jobs = {}
    for name, scheme, merge, optimizer, lr, _ in EXPORTS:
        run_dir = root / f"run-{name}"
        finetune(tiny_run_config(
            sst2_dir, run_dir, tuning__scheme=scheme, optimizer__name=optimizer,
            optimizer__lr=lr, train__steps=4,
        ))
        folder = export_run(run_dir, root / name, merge=merge, allow_untrained=True)
        jobs[name] = {
            "folder": str(folder),
            "run_dir": str(run_dir),
            "adapter": scheme in ("lora", "prefix", "prompt") and not merge,
            "batch_size": 8,
            "virtual_tokens": scheme in ("prefix", "prompt"),
        }
    # The prefix adapter as plain peft loads it, without the model card's call.
    jobs["prefix-plain-peft"] = {**jobs["prefix"], "virtual_tokens": False}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    completed = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(jobs)],
        capture_output=True, text=True, env=env, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return jobs, json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name, trained", [(e[0], e[-1]) for e in EXPORTS])
def test_export_loads_back_with_the_runs_test_accuracy(exported, name, trained):
    jobs, answers = exported
    run_dir = Path(jobs[name]["run_dir"])
    result = json.loads((run_dir / "result.json").read_text())
    assert answers[name]["accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-5)
    loaded = torch.tensor(answers[name]["scores"])
    assert torch.allclose(loaded, zotune_scores(run_dir, trained=True), atol=1e-5)
    assert (result["best_step"] > 0) == trained
    if trained:  # the export holds the trained weights, not the base model's
        assert not torch.allclose(loaded, zotune_scores(run_dir, trained=False), atol=1e-6)


def test_a_prefix_adapter_in_plain_peft_computes_otherwise_and_the_card_says_so(exported):
    """peft numbers the real tokens after the prefix; the run (MeZO's way) from 0."""
    jobs, answers = exported
    run_scores = zotune_scores(Path(jobs["prefix"]["run_dir"]), trained=True)
    plain = torch.tensor(answers["prefix-plain-peft"]["scores"])
    # The tiny random model attends almost uniformly, so the shift moves its log-probabilities
    # by ~6e-5 only: well above fp32 rounding (~1e-6) and the 1e-5 under which the loaded
    # adapters above count as equal to the run.
    assert (plain - run_scores).abs().max() > 2e-5
    card = (Path(jobs["prefix"]["folder"]) / CARD_FILE).read_text()
    assert "positions_as_trained(model)" in card
    assert "Positions differ in plain peft" in card


@pytest.mark.parametrize("name", [e[0] for e in EXPORTS if not e[2]])
def test_export_holds_the_best_checkpoints_tensors(exported, name):
    from safetensors.torch import load_file

    jobs, _ = exported
    folder, run_dir = Path(jobs[name]["folder"]), Path(jobs[name]["run_dir"])
    weights = "adapter_model.safetensors" if jobs[name]["adapter"] else "model.safetensors"
    written = list(load_file(folder / weights).values())
    for tensor in load_trainable_checkpoint(run_dir / BEST_FILE).values():
        assert any(w.shape == tensor.shape and torch.equal(w, tensor) for w in written)


@pytest.mark.parametrize("name", [name for name, *_ in EXPORTS])
def test_model_card_names_task_optimizer_version_and_figures(exported, name):
    jobs, _ = exported
    card = (Path(jobs[name]["folder"]) / CARD_FILE).read_text()
    result = json.loads((Path(jobs[name]["run_dir"]) / "result.json").read_text())
    optimizer = {e[0]: e[3] for e in EXPORTS}[name]
    for text in ("sst2", optimizer, "zotune 0.1.0", f"{result['test_accuracy']:.4f}",
                 f"{result['best_val_accuracy']:.4f}", "## Settings"):
        assert text in card
    # A run that learned nothing says so at the top of its card (exported with
    # --allow-untrained); one that learned is called fine-tuned.
    marked = "> **This model learned nothing.** The run learned nothing: " in card
    assert marked == bool(result["untrained"])
    assert ("fine-tuned on sst2" in card) != marked
    if result["best_step"] == 0:
        assert marked


def test_fp32_export_of_a_bf16_run_says_so(tmp_path, sst2_dir, tiny_run_config):
    run_dir = tmp_path / "run"
    finetune(tiny_run_config(sst2_dir, run_dir, model__dtype="bfloat16", train__steps=1))
    out = export_run(run_dir, tmp_path / "model", dtype="float32", allow_untrained=True)
    card = (out / CARD_FILE).read_text()
    assert "Weights exported in float32 from a bfloat16 run (upcast" in card
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    same_dtype = export_run(run_dir, tmp_path / "model-bf16", allow_untrained=True)
    assert "Weights in bfloat16, as trained." in (same_dtype / CARD_FILE).read_text()


@pytest.fixture(scope="module")
def one_run(tmp_path_factory, sst2_dir, tiny_run_config):
    """A tiny run that learned (its kept checkpoint is a trained step)."""
    run_dir = tmp_path_factory.mktemp("one") / "run"
    finetune(tiny_run_config(sst2_dir, run_dir, **LEARNS))
    assert json.loads((run_dir / "result.json").read_text())["untrained"] is None
    return run_dir


def test_a_run_that_learned_nothing_is_exported_only_when_allowed(tmp_path, sst2_dir,
                                                                   tiny_run_config, capsys):
    run_dir = tmp_path / "run"
    finetune(tiny_run_config(sst2_dir, run_dir, optimizer__lr=1e-9, train__steps=2))
    reason = json.loads((run_dir / "result.json").read_text())["untrained"]
    assert reason.startswith("the run learned nothing: the kept checkpoint is step 0")
    assert main(["export", str(run_dir), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "the run learned nothing" in err and "--allow-untrained exports it anyway" in err
    assert not (tmp_path / "refused").exists()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "marked"),
                 "--allow-untrained"]) == 0
    card = (tmp_path / "marked" / CARD_FILE).read_text()
    assert "# random:tiny-llama trained (it learned nothing) on sst2 with zotune" in card
    assert f"> **This model learned nothing.** T{reason[1:]}" in card
    assert "- untrained" in card


@pytest.mark.parametrize(
    "options, message",
    [
        ({"merge": True}, "--merge applies to LoRA runs; this run's tuning is 'full'"),
        ({"dtype": "float8"}, "--dtype 'float8': choose from"),
    ],
)
def test_bad_export_options_are_refused(one_run, tmp_path, options, message):
    with pytest.raises(ExportError, match=message.replace("(", r"\(").replace("'", "'")):
        export_run(one_run, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_non_empty_out_is_refused_unless_overwrite(one_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not empty: choose another folder, or --overwrite"):
        export_run(one_run, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_run(one_run, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_cli_export_and_train_save_model(one_run, tmp_path, sst2_dir, capsys):
    assert main(["export", str(one_run), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / CARD_FILE).is_file()
    assert main(["export", str(one_run), "--out", str(tmp_path / "cli")]) == 2
    assert "is not empty" in capsys.readouterr().err
    saved = tmp_path / "saved"
    code = main([
        "train", "--model", "random:tiny-llama", "--task", "sst2", "--data-dir", str(sst2_dir),
        "--num-train", "8", "--num-val", "4", "--num-test", "4", "--steps", "1",
        "--batch-size", "4", "--no-progress", "--save-model", str(saved),
    ])
    assert code == 0
    assert (saved / "config.json").is_file() and (saved / "tokenizer.json").is_file()
    # A non-empty --save-model folder is refused before training.
    code = main([
        "train", "--model", "random:tiny-llama", "--task", "sst2", "--data-dir", str(sst2_dir),
        "--steps", "1", "--no-progress", "--save-model", str(saved),
    ])
    assert code == 2 and "is not empty" in capsys.readouterr().err


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_export_blocks() -> tuple[list[str], str]:
    """The command lines and the Python block of the README's "Export" section."""
    section = README.read_text().split("### Export", 1)[1].split("\n## ", 1)[0]
    shell, python = section.split("```\n", 2)[1], section.split("```python\n", 1)[1]
    commands = [line.split("#")[0].split() for line in shell.splitlines() if line.strip()]
    return commands, python.split("```", 1)[0]


def test_the_readme_export_example_runs_as_written(tmp_path, sst2_dir, tiny_run_config,
                                                   monkeypatch, capsys):
    """The README's runs (full, LoRA, a bf16 run) trained on a tiny model in runs/, then its
    export commands and its loading code, as written, in a fresh process."""
    monkeypatch.chdir(tmp_path)
    for name, scheme, dtype in (("full-run", "full", "float32"), ("lora-run", "lora", "float32"),
                                ("bf16-run", "full", "bfloat16")):
        finetune(tiny_run_config(sst2_dir, tmp_path / "runs" / name, tuning__scheme=scheme,
                                 model__dtype=dtype, **LEARNS))
    commands, python = readme_export_blocks()
    assert [c[:2] for c in commands] == [["zotune", "export"]] * 4
    for command in commands:
        assert main(command[1:]) == 0, capsys.readouterr().err
    base = tmp_path / "models" / "sst2-lora" / "base_model"
    script = f"BASE = {str(base)!r}\n{python}\nprint(type(adapted).__name__)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               env=env, check=False, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("PeftModelForCausalLM")


# Loads an exported adapter as a Hugging Face user would, from another working folder and
# offline: AutoPeftModelForCausalLM reads the base from base_model_name_or_path.
AUTO_PEFT_LOADER = """
import json, sys, torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
from zotune.config import load_config
from zotune.evaluation.scoring import Scorer
from zotune.training.run import load_task_splits

folder, run_dir, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = AutoPeftModelForCausalLM.from_pretrained(folder).eval()
scorer = Scorer(model, AutoTokenizer.from_pretrained(folder), kind="causal")
test = load_task_splits(load_config(run_dir + "/config.yaml"), log=lambda message: None).test
with torch.no_grad():
    batches = [test[start : start + batch_size] for start in range(0, len(test), batch_size)]
    scores = torch.cat([scorer.scores(scorer.encode(batch)) for batch in batches])
print(json.dumps(scores.tolist()))
"""


def test_a_random_shapes_adapter_loads_offline_from_another_folder(
    tmp_path, sst2_dir, tiny_run_config, monkeypatch
):
    """A random shape's base is written beside the adapter and named by its absolute path:
    ``AutoPeftModelForCausalLM.from_pretrained(DIR)`` from ``/``, offline, needs no hub and
    scores the test examples as zotune does. The export was written from a relative --out."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    finetune(tiny_run_config(sst2_dir, run_dir, tuning__scheme="lora", **LEARNS))
    export_run(run_dir, Path("models") / "lora")
    folder = tmp_path / "models" / "lora"
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(folder / "base_model")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", AUTO_PEFT_LOADER, str(folder), str(run_dir), "8"],
        capture_output=True, text=True, env=env, check=False, cwd="/",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    loaded = torch.tensor(json.loads(completed.stdout.strip().splitlines()[-1]))
    assert torch.allclose(loaded, zotune_scores(run_dir, trained=True), atol=1e-5)
    assert not torch.allclose(loaded, zotune_scores(run_dir, trained=False), atol=1e-6)


def test_an_export_prints_no_third_party_progress_bar(one_run, tmp_path, sst2_dir,
                                                      tiny_run_config, capfd):
    """transformers 5 drew a "Writing model shards" bar into quickstart's and export's output,
    and a "Loading weights" bar when the run's model loads from a folder (a real model)."""
    first = export_run(one_run, tmp_path / "model", allow_untrained=True)
    assert "Writing model shards" not in capfd.readouterr().err
    run_dir = tmp_path / "from-folder"
    finetune(tiny_run_config(sst2_dir, run_dir, model__name=str(first), train__steps=1))
    capfd.readouterr()
    export_run(run_dir, tmp_path / "again", allow_untrained=True)
    assert "Loading weights" not in capfd.readouterr().err
