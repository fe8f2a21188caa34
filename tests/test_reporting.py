"""Experiment logging (--report-to) and progress bars (terminal only, --quiet)."""

from __future__ import annotations

import json
import sys
import types
import typing

import pytest

from zotune.cli import build_parser, parse_args
from zotune.config import ConfigError
from zotune.training import loggers as reporting
from zotune.training.run import resolve_config
from zotune.training.train import finetune


class FakeWriter:
    """torch.utils.tensorboard.SummaryWriter's interface, recording its calls."""

    made: typing.ClassVar[list] = []

    def __init__(self, log_dir=None):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


class FakeWandbRun:
    def __init__(self, **init):
        self.init, self.logged, self.finished = init, [], False

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_backends(monkeypatch):
    """TensorBoard's writer and wandb replaced by recorders, both reported installed."""
    FakeWriter.made = []
    runs = []
    tensorboard = types.ModuleType("torch.utils.tensorboard")
    tensorboard.SummaryWriter = FakeWriter
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **init: runs.append(FakeWandbRun(**init)) or runs[-1]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", tensorboard)
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setattr(reporting, "installed", lambda package: True)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return runs


def metric_records(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "final" not in r]


def test_tensorboard_gets_every_scalar_of_metrics_jsonl(tmp_path, sst2_dir, tiny_run_config,
                                                      fake_backends):
    out = tmp_path / "run"
    finetune(tiny_run_config(sst2_dir, out, train__report_to="tensorboard"))
    (writer,) = FakeWriter.made
    assert writer.log_dir == str(out / "tensorboard") and writer.closed
    expected = [
        (tag, float(record[key]), record["step"])
        for record in metric_records(out)
        for key, tag in reporting.SCALARS.items()
        if key in record
    ]
    assert writer.scalars == expected
    tags = {tag for tag, _, _ in writer.scalars}
    assert {"train/loss", "train/lr", "eval/val_accuracy", "train/step_seconds",
            "train/peak_memory_mb"} <= tags


def test_wandb_runs_offline_without_credentials(tmp_path, sst2_dir, tiny_run_config,
                                                fake_backends):
    out = tmp_path / "run"
    finetune(tiny_run_config(sst2_dir, out, train__report_to="wandb"))
    (run,) = fake_backends
    assert run.init["mode"] == "offline" and run.init["dir"] == str(out) and run.finished
    assert run.init["config"]["optimizer"]["name"] == "zo-sgd"
    assert [step for step, _ in run.logged] == [r["step"] for r in metric_records(out)]


@pytest.mark.parametrize(
    "name, message",
    [
        ("tensorboard", "train.report_to=tensorboard needs the tensorboard package: "
                        "pip install 'zotune[tensorboard]'"),
        ("wandb", "train.report_to=wandb needs the wandb package: pip install 'zotune[wandb]'"),
        ("mlflow", "train.report_to: unknown reporter 'mlflow' (choose from none, tensorboard, "
                   "wandb)"),
    ],
)
def test_a_missing_or_unknown_reporter_is_refused_before_loading(monkeypatch, name, message):
    monkeypatch.setattr(reporting, "installed", lambda package: False)
    with pytest.raises(ConfigError) as error:
        resolve_config({"train": {"report_to": name}})
    assert str(error.value) == message


class Terminal:
    def __init__(self, is_terminal):
        self.is_terminal, self.text = is_terminal, ""

    def isatty(self):
        return self.is_terminal

    def write(self, text):
        self.text += text

    def flush(self):
        pass


@pytest.mark.parametrize(
    "terminal, progress, bars",
    [(True, True, True), (False, True, False), (True, False, False)],
)
def test_train_and_eval_bars_only_on_a_terminal_and_not_quiet(
    monkeypatch, sst2_dir, tiny_run_config, terminal, progress, bars
):
    stderr = Terminal(terminal)
    monkeypatch.setattr(sys, "stderr", stderr)
    finetune(tiny_run_config(sst2_dir, train__progress=progress))
    assert ("train:" in stderr.text) == bars
    assert ("eval:" in stderr.text) == bars
    assert "zotune: model random:tiny-llama" in stderr.text  # the log lines stay


@pytest.mark.parametrize("command", ["train", "eval"])
def test_quiet_is_no_progress(command):
    args = parse_args(build_parser(), [command, "--quiet"])
    assert getattr(args, "train.progress") is False
