"""Adding an optimizer from outside the package: a rule plus one registry entry.

This file is the README's "Adding an optimizer" recipe. It defines ZO-Clip (ZO-SGD on an
elementwise-clipped estimate) and takes it through ``create_optimizer``, ``zotune train``,
``zotune profile --estimate-only`` and a bench suite, without touching zotune. The bench
runs each run in a subprocess, which finds the optimizer through ``ZOTUNE_PLUGINS``: this
module, imported there, registers it (under pytest the fixture does, and undoes it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from plugin_helpers import import_as_plugin
from zotune import cli
from zotune.optim import OptimizerEntry, Option, ZerothOrderOptimizer, create_optimizer, rules
from zotune.optim.options import finite_above
from zotune.optim.registry import register, unregister


class Clip(rules.Transform):
    """u = clamp(g, −c, c), c = group["clip"]: no estimate entry moves θ more than lr·c."""

    def __call__(self, u, state, ctx):
        return u.clamp(-ctx.group["clip"], ctx.group["clip"])


ZO_CLIP = OptimizerEntry(
    key="zo-clip",
    summary="ZO-SGD on an elementwise-clipped estimate",
    estimator="rge",
    rule=lambda options: rules.Rule(Clip(), rules.DecoupledWeightDecay()),
    options=(
        Option("clip", 1.0, "clip each estimate entry to [-c, c]", check=finite_above(0),
               problem="a finite number > 0", hyperparameter=True),
    ),
)

PLUGIN = Path(__file__).stem
if PLUGIN in os.environ.get("ZOTUNE_PLUGINS", "").split(","):
    register(ZO_CLIP)  # imported as a plugin, by a bench worker


@pytest.fixture
def zo_clip(monkeypatch):
    register(ZO_CLIP)
    import_as_plugin(monkeypatch, __file__)
    yield ZO_CLIP
    unregister(ZO_CLIP.key)


def test_create_optimizer_assembles_it_and_it_learns(zo_clip):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(60, 20, generator=gen) / 20**0.5
    b = a @ torch.randn(20, generator=gen)
    x = torch.zeros(20, requires_grad=True)
    optimizer = create_optimizer("zo-clip", [x], lr=0.02, clip=0.5, distribution="gaussian")
    assert isinstance(optimizer, ZerothOrderOptimizer)
    assert optimizer.param_groups[0]["clip"] == 0.5
    assert not zo_clip.is_linear() and zo_clip.state_tensors() == 0

    def loss():
        return ((a @ x - b) ** 2).mean()

    start = float(loss().detach())
    for _ in range(1000):
        optimizer.step(loss)
    assert float(loss().detach()) < start / 5
    with pytest.raises(ValueError, match=r"Invalid clip: -1.0 \(must be a finite number > 0\)"):
        create_optimizer("zo-clip", [x], lr=0.02, clip=-1.0)


def test_zotune_train_takes_it_and_its_flag(zo_clip, sst2_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main([
        "train", "--model", "random:tiny-llama", "--data-dir", str(sst2_dir), "--task", "sst2",
        "--num-train", "16", "--num-val", "6", "--num-test", "6", "--steps", "2",
        "--batch-size", "4", "--eval-every", "1", "--optimizer", "zo-clip", "--lr", "1e-3",
        "--clip", "0.25", "--no-progress", "--output-dir", str(out),
    ])
    assert code == 0, capsys.readouterr().err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["optimizer"] == {  # eps: the run default for full tuning
        "name": "zo-clip", "lr": 1e-3, "schedule": "constant", "warmup_steps": 0, "clip": 0.25,
        "eps": 1e-3
    }
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "clip each estimate entry to [-c, c]; default 1 (config optimizer.clip; zo-clip)" in (
        " ".join(capsys.readouterr().out.split())
    )


def test_profile_estimates_its_memory(zo_clip, capsys):
    code = cli.main(["profile", "--estimate-only", "--model", "random:tiny-llama",
                     "--optimizers", "zo-sgd,zo-clip"])
    out = capsys.readouterr().out
    assert code == 0
    assert "zo-clip" in out


def test_a_bench_suite_runs_it(zo_clip, sst2_dir, tmp_path, capsys, tiny_suite):
    suite = tiny_suite(
        name="clip",
        grid={"tuning": ["full"], "optimizer": ["zo-clip"]},
        sweep={"zo-clip": {"lr": [1e-3], "clip": [0.5]}},
        seeds=[0],
    )
    path = tmp_path / "clip.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = tmp_path / "results"
    code = cli.main(["bench", str(path), f"task.data_dir={sst2_dir}", "--results", str(results)])
    assert code == 0, capsys.readouterr().err
    outcomes = [json.loads(p.read_text()) for p in results.rglob("outcome.json")]
    assert [o["status"] for o in outcomes] == ["done"]
