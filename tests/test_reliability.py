"""Nothing lost, nothing silently wrong: the run-folder, divergence and optimizer-contract
cases of the hostile-input review (issue 17), one test each, numbered as there."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from zotune import cli
from zotune.optim import create_optimizer
from zotune.training.run_folder import LOCK_FILE
from zotune.utils.files import FolderLock


def train_argv(sst2_dir, out=None, *flags):
    argv = [
        "train", "--model=random:tiny-llama", f"--data-dir={sst2_dir}", "--num-train=16",
        "--num-val=6", "--num-test=8", "--steps=2", "--batch-size=4", "--eval-every=1",
        "--lr=1e-3", "--no-progress", *flags,
    ]
    return [*argv, f"--output-dir={out}"] if out is not None else argv


def run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("zotune: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def finished_run(sst2_dir, tmp_path, capsys):
    """A finished 2-step run in tmp_path/run."""
    out = tmp_path / "run"
    code, _, err = run_cli(train_argv(sst2_dir, out), capsys)
    assert code == 0, err
    return out


# 1, 3, 6, 8: a folder holds one run, resumed only by the same run ----------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seed=3", "--lr=1e-2"], "already holds a run: --resume continues it, --overwrite"),
        (["--resume", "--lr=1e-2"], "--resume: optimizer.lr is 0.001 in the run"),
        (["--resume", "--optimizer=zo-adam"], "--resume: optimizer.name is 'zo-sgd'"),
        (["--resume", "--model=random:tiny-opt"], "--resume: model.name is 'random:tiny-llama'"),
        (["--resume", "--overwrite"], "train.resume and train.overwrite cannot both be set"),
    ],
)
def test_a_folder_that_holds_a_run_is_refused_and_left_as_it_was(
    flags, message, finished_run, sst2_dir, capsys
):
    before = {p.name: p.read_bytes() for p in finished_run.iterdir() if p.name != LOCK_FILE}
    code, _, err = run_cli(train_argv(sst2_dir, finished_run, *flags), capsys)
    assert code == 2
    assert message in one_error_line(err)
    after = {p.name: p.read_bytes() for p in finished_run.iterdir() if p.name != LOCK_FILE}
    assert after == before


def test_overwrite_replaces_the_run(finished_run, sst2_dir, capsys):
    code, _, err = run_cli(
        train_argv(sst2_dir, finished_run, "--overwrite", "--seed=3", "--steps=1"), capsys
    )
    assert code == 0, err
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert config["train"]["seed"] == 3
    steps = [json.loads(line)["step"] for line in (finished_run / "metrics.jsonl").open()]
    assert steps == [0, 1, 1], "one run's metrics: step 0, step 1, the final record"


@pytest.mark.parametrize("where", ["missing folder", "empty folder", "no output dir"])
def test_resume_with_nothing_to_resume_is_refused(where, sst2_dir, tmp_path, capsys):
    out = {"missing folder": tmp_path / "typo", "empty folder": tmp_path}.get(where)
    code, _, err = run_cli(train_argv(sst2_dir, out, "--resume"), capsys)
    assert code == 2
    line = one_error_line(err)
    assert "--resume" in line and ("holds no run" in line or "output" in line)


def test_resume_may_extend_the_run(finished_run, sst2_dir, capsys):
    code, _, err = run_cli(train_argv(sst2_dir, finished_run, "--resume", "--steps=3"), capsys)
    assert code == 0, err


# 2: one process per run folder ---------------------------------------------------------------


def test_a_second_process_on_a_run_folder_stops_at_once(sst2_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with FolderLock(out, LOCK_FILE, "held by the test"):
        code, _, err = run_cli(train_argv(sst2_dir, out), capsys)
    assert code == 2
    assert "another zotune process is training in" in one_error_line(err)
    assert not (out / "config.yaml").exists()


# 9: a resumed run's metrics hold each step once ------------------------------------------------


def test_resume_truncates_the_metrics_written_after_the_checkpoint(
    finished_run, sst2_dir, capsys
):
    metrics = finished_run / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.open()]
    kept = [r for r in lines if "final" not in r]
    # What a kill after step 3's metrics and before its checkpoint leaves behind:
    text = "".join(json.dumps(r) + "\n" for r in [*kept, {"step": 3, "loss": 9.9}])
    metrics.write_text(text + '{"step": 4, "lo')
    code, _, err = run_cli(train_argv(sst2_dir, finished_run, "--resume", "--steps=4"), capsys)
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in metrics.open()]
    assert steps == [0, 1, 2, 3, 4, 4], "each step once, then the final record"


# 4, 19: diverged weights are never a candidate; overflow is named ------------------------------


def test_non_finite_weights_never_become_the_best_checkpoint(sst2_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = train_argv(sst2_dir, out, "--dtype=float16", "--steps=3", "--lr=6e4", "--seed=8")
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    line = one_error_line(err)
    assert "diverged" in line or "overflowed" in line
    assert "lower the learning rate" in line or "lower optimizer.lr" in line
    if (out / "best.pt").exists():
        best = torch.load(out / "best.pt", weights_only=True)
        assert all(bool(torch.isfinite(t).all()) for t in best.values())
    assert not (out / "result.json").exists()


# 5: non-finite settings are refused; a run that mostly skipped does not succeed ----------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--eps=inf"], "Invalid perturbation scale eps: inf"),
        (["--lr=inf"], "Invalid learning rate: inf"),
        (["--lr=nan"], "Invalid learning rate: nan"),
        (["--weight-decay=inf"], "Invalid weight_decay value: inf"),
    ],
)
def test_non_finite_hyperparameters_are_refused(flags, message, sst2_dir, capsys):
    code, _, err = run_cli(train_argv(sst2_dir, None, *flags), capsys)
    assert code == 2 and message in one_error_line(err)


@pytest.mark.parametrize("name", ["zo-sgd", "fo-adam", "forward-grad"])
def test_create_optimizer_refuses_non_finite_values(name):
    with pytest.raises(ValueError, match="Invalid learning rate: inf"):
        create_optimizer(name, [torch.zeros(2, requires_grad=True)], lr=float("inf"))


def test_a_run_that_skips_most_steps_fails_and_still_writes_last_pt(
    sst2_dir, tmp_path, monkeypatch
):
    from zotune.estimators import NonFiniteLossError
    from zotune.training import train as train_module

    real_step = train_module._step

    def flaky(run, closure, step):  # every odd step's loss is not finite
        if step % 2 == 1:
            raise NonFiniteLossError("non-finite loss during probing: [nan]")
        return real_step(run, closure, step)

    monkeypatch.setattr(train_module, "_step", flaky)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"2 of 4 steps were skipped"):
        train_module.finetune(cli._config_from(*_parsed(train_argv(sst2_dir, out, "--steps=4",
                                                                    "--eval-every=100"))))
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 4, "the skipped last step"


def _parsed(argv):
    args = cli.build_parser().parse_args(argv)
    return args, args.items


# 10: a failing closure leaves θ where it was; torch-style FO closures work ---------------------


@pytest.mark.parametrize("name", ["zo-sgd", "zo-adam", "zo-sgd-cons"])
@pytest.mark.parametrize("probe", ["two-point", "one-sided"])
@pytest.mark.parametrize(
    ("returns", "error"),
    [
        ("raise", RuntimeError),
        ("none", TypeError),
        ("vector", ValueError),
        ("bool", TypeError),
    ],
)
def test_a_failing_closure_leaves_the_parameters_unchanged(name, probe, returns, error):
    x = torch.linspace(-1, 1, 8, requires_grad=True)
    before = x.detach().clone()
    optimizer = create_optimizer(name, [x], lr=0.1, probe=probe, distribution="gaussian")
    calls = []

    def closure():
        calls.append(1)
        if len(calls) < 2:
            return (x**2).sum()
        return {
            "raise": lambda: (_ for _ in ()).throw(RuntimeError("out of memory")),
            "none": lambda: None,
            "vector": lambda: x * 2,
            "bool": lambda: torch.tensor(True),
        }[returns]()

    with pytest.raises(error):
        optimizer.step(closure)
    # Back to θ up to fp32 rounding of θ + εz − εz (the probe displacement is 1e-3).
    torch.testing.assert_close(x.detach(), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["fo-sgd", "fo-adam"])
def test_first_order_optimizers_take_a_torch_style_closure(name):
    x = torch.ones(3, requires_grad=True)
    ours = create_optimizer(name, [x], lr=0.1)
    y = torch.ones(3, requires_grad=True)
    theirs = create_optimizer(name, [y], lr=0.1)

    def torch_closure():
        ours.zero_grad()
        loss = (x**2).sum()
        loss.backward()
        return loss

    ours.step(torch_closure)
    theirs.step(lambda: (y**2).sum())
    torch.testing.assert_close(x, y, rtol=0, atol=0)


# 12: a scheme's options under another scheme are refused ---------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lora-r=4"], "tuning.lora_r=4 applies to lora tuning, not to tuning.scheme='full'"),
        (["--tuning=prompt", "--prefix-tokens=3"], "tuning.prefix_tokens=3 applies to prefix"),
        (["--tuning=lora", "--prompt-init-text=hi"], "applies to prompt tuning"),
    ],
)
def test_options_of_another_scheme_are_refused(flags, message, sst2_dir, capsys):
    code, _, err = run_cli(train_argv(sst2_dir, None, *flags), capsys)
    assert code == 2 and message in one_error_line(err)


# 13: the summary names the metric, the split and its size ---------------------------------------


def test_the_summary_names_metric_and_split(sst2_dir, capsys):
    code, out, err = run_cli(train_argv(sst2_dir), capsys)
    assert code == 0, err
    assert "test accuracy" in out and "(8 examples" in out
    assert "validation accuracy" in out and "(6 examples) at step" in out


# 16: the data is checked before the model loads --------------------------------------------------


def test_bad_data_is_reported_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from zotune.training import run as run_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(run_module, "build_model", no_model)
    code, _, err = run_cli(
        ["train", "--model=random:tiny-llama", f"--data-dir={tmp_path / 'nowhere'}",
         "--no-progress"],
        capsys,
    )
    assert code == 2 and "nowhere" in one_error_line(err)
