"""Adding a tuning scheme from outside the package: a function plus one registry entry.

This file is the README's "Adding a tuning scheme" recipe. It defines BitFit (Ben Zaken et
al., 2022: train the bias terms only) with an option of its own, and takes it through the
config, ``zotune train`` and its flags, ``zotune profile --estimate-only``, ``zotune export``
and a bench suite, without touching zotune. The bench runs each run in a subprocess, which
finds the scheme through ``ZOTUNE_PLUGINS``: this module, imported there, registers it (under
pytest the fixture does, and undoes it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from plugin_helpers import import_as_plugin
from zotune import cli
from zotune.bench.suite import run_id
from zotune.config import ConfigError, build_config
from zotune.models.random_shapes import random_model
from zotune.optim import Option
from zotune.tuning import (
    SchemeEntry,
    apply_tuning,
    count_parameters,
    get_scheme,
    register,
    scheme_keys,
    unregister,
    untie_output_embeddings,
)


def train_biases(model, options, tokenizer):
    """Freeze everything but the bias terms (and the output head, with ``bitfit_head``)."""
    biases = [p for name, p in model.named_parameters() if name.endswith(".bias")]
    if not biases:
        raise ValueError(f"{type(model).__name__} has no bias terms to tune (tuning 'bitfit')")
    if options["bitfit_head"]:
        untie_output_embeddings(model)  # training a tied head would move the inputs too
    model.requires_grad_(False)
    for bias in biases:
        bias.requires_grad_(True)
    if options["bitfit_head"]:
        model.get_output_embeddings().requires_grad_(True)
    return model


BITFIT = SchemeEntry(
    key="bitfit",
    summary="the bias terms only (BitFit)",
    apply=train_biases,
    options=(Option("bitfit_head", False, "BitFit: also train the output head", kind=bool),),
)

PLUGIN = Path(__file__).stem
if PLUGIN in os.environ.get("ZOTUNE_PLUGINS", "").split(","):
    register(BITFIT)  # imported as a plugin, by a bench worker

TRAIN = ["train", "--model", "random:tiny-opt", "--task", "sst2", "--num-train", "16",
         "--num-val", "6", "--num-test", "6", "--steps", "2", "--batch-size", "4",
         "--eval-every", "1", "--lr", "1e-3", "--no-progress"]


@pytest.fixture
def bitfit(monkeypatch):
    register(BITFIT)
    import_as_plugin(monkeypatch, __file__)
    yield BITFIT
    unregister(BITFIT.key)


def test_it_trains_the_biases_only(bitfit):
    model = random_model("tiny-opt").model
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))
    tuned = apply_tuning(model, "bitfit")
    assert count_parameters(tuned)[0] == biases
    head = apply_tuning(random_model("tiny-opt").model, "bitfit", bitfit_head=True)
    assert count_parameters(head)[0] == biases + model.get_output_embeddings().weight.numel()
    with pytest.raises(ValueError, match="has no bias terms to tune"):
        apply_tuning(random_model("tiny-llama").model, "bitfit")


def test_its_option_is_a_config_key_and_registering_moves_no_run_id(bitfit):
    assert scheme_keys()[-1] == "bitfit" and get_scheme("bitfit") is bitfit
    config = build_config({"tuning": {"scheme": "bitfit", "bitfit_head": True}})
    assert config.tuning.bitfit_head is True
    assert config.to_dict()["tuning"]["bitfit_head"] is True
    with pytest.raises(ConfigError, match=r"tuning\.bitfit_head: expected bool"):
        build_config({"tuning": {"scheme": "bitfit", "bitfit_head": "maybe"}})
    # Every config now holds bitfit_head at its default, which a run id leaves out.
    default = build_config({}).to_dict()
    assert default["tuning"]["bitfit_head"] is False
    unregister("bitfit")
    before = build_config({}).to_dict()
    id_before = run_id(before)
    register(bitfit)
    assert "bitfit_head" not in before["tuning"]
    assert run_id(default) == run_id(before) == id_before


def test_zotune_train_takes_it_and_its_flag(bitfit, sst2_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main([*TRAIN, "--data-dir", str(sst2_dir), "--tuning", "bitfit", "--bitfit-head",
                     "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["tuning"]["scheme"] == "bitfit" and config["tuning"]["bitfit_head"] is True
    assert config["optimizer"]["eps"] == 1e-3  # no ε of its own: the optimizer's default
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "bitfit: the bias terms only (BitFit)" in shown
    assert "--bitfit-head BitFit: also train the output head (config tuning.bitfit_head" in shown

    # Its option under another scheme would be ignored: refused, naming both.
    code = cli.main([*TRAIN, "--data-dir", str(sst2_dir), "--bitfit-head"])
    assert code == 2
    assert "tuning.bitfit_head=True applies to bitfit tuning, not to tuning.scheme='full'" in (
        capsys.readouterr().err
    )

    # Not an adapter: exported as a whole model; --merge is LoRA's.
    export = tmp_path / "export"
    assert cli.main(["export", str(out), "--out", str(export), "--allow-untrained"]) == 0
    assert (export / "config.json").is_file() and not (export / "adapter_config.json").exists()
    assert "(bitfit tuning)" in (export / "README.md").read_text()
    code = cli.main(["export", str(out), "--out", str(tmp_path / "merged"), "--merge"])
    assert code == 2
    assert "--merge applies to LoRA runs; this run's tuning is 'bitfit'" in (
        capsys.readouterr().err
    )


def test_profile_estimates_its_memory(bitfit, capsys):
    code = cli.main(["profile", "--estimate-only", "--model", "random:tiny-opt",
                     "--optimizers", "zo-sgd", "--schemes", "full,bitfit"])
    out = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("zo-sgd")}
    assert set(rows) == {"full", "bitfit"}


def test_a_bench_suite_runs_it(bitfit, sst2_dir, tmp_path, capsys, tiny_suite):
    suite = tiny_suite(
        name="bitfit",
        grid={"tuning": ["bitfit"], "optimizer": ["zo-sgd"]},
        sweep={"zo-sgd": {"lr": [1e-3]}},
        seeds=[0],
    )
    suite["base"]["model"]["name"] = "random:tiny-opt"
    path = tmp_path / "bitfit.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = tmp_path / "results"
    code = cli.main(["bench", str(path), f"task.data_dir={sst2_dir}", "--results", str(results)])
    assert code == 0, capsys.readouterr().err
    outcomes = [json.loads(p.read_text()) for p in results.rglob("outcome.json")]
    assert [o["status"] for o in outcomes] == ["done"]
