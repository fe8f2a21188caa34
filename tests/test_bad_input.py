"""Bad input and damaged files a user can meet, each answered by one clear line (issue 17's
cases; docs/reliability.md lists them with the test that holds each)."""

from __future__ import annotations

import shutil

import pytest
import torch

from zotune import cli
from zotune.training import run as run_module

TINY = ["--model=random:tiny-llama", "--num-train=16", "--num-val=6", "--num-test=8",
        "--batch-size=4", "--eval-every=1", "--no-progress"]


def run_cli(argv, capsys):
    code = cli.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err):
    """The ``zotune: error:`` line of a failed command (there must be exactly one)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("zotune: error:")]
    assert len(lines) == 1, err
    return lines[0]


# Damaged checkpoints (issue 17, item 15) ---------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(sst2_dir, tmp_path_factory):
    """A finished two-step run's output folder (last.pt, best.pt)."""
    out = tmp_path_factory.mktemp("run") / "R"
    code = cli.main(["train", *TINY, f"--data-dir={sst2_dir}", "--steps=2", "--output-dir",
                     str(out)])
    assert code == 0
    return out


def empty(path):
    path.write_bytes(b"")


def truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path):
    path.write_bytes(b"not a checkpoint at all\n" * 10)


def without_keys(path):
    torch.save({"step": 2}, path)


def empty_mapping(path):
    torch.save({}, path)


def not_tensors(path):
    torch.save({"model.embed_tokens.weight": [1, 2, 3]}, path)


@pytest.mark.parametrize("damage", [empty, truncated, garbage, without_keys, empty_mapping,
                                    not_tensors])
@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_a_damaged_checkpoint_is_named_in_one_line(name, damage, finished_run, sst2_dir,
                                                    tmp_path, capsys):
    out = tmp_path / "R"
    shutil.copytree(finished_run, out)
    damage(out / name)
    if name == "last.pt":
        argv = ["train", *TINY, f"--data-dir={sst2_dir}", "--steps=4", "--output-dir", out,
                "--resume"]
    else:
        argv = ["eval", out]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert str(out / name) in one_error_line(err)


# Settings refused before anything loads (issue 17, item 15) --------------------------------


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if the run gets as far as building its model."""

    def build_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(run_module, "build_model", build_model)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device=cuda"], "device 'cuda' requested but CUDA is not available"),
        (["--device=cuda:0"], "device 'cuda:0' requested but CUDA is not available"),
        (["--device=gpu"], "unknown device 'gpu'"),
        (["--num-train=0"], "task.num_train: must be at least 1, got 0"),
        (["--num-val=0"], "task.num_val: must be at least 1, got 0"),
        (["--num-test=-3"], "task.num_test: must be at least 1, got -3"),
    ],
)
def test_settings_that_cannot_run_are_refused_before_loading(flags, message, nothing_loads,
                                                              sst2_dir, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(["train", *TINY, f"--data-dir={sst2_dir}", "--steps=1", *flags],
                           capsys)
    assert code == 2
    assert message in one_error_line(err)


# TSV columns by header name (issue 17, item 7) ---------------------------------------------


@pytest.mark.parametrize(
    ("lines", "rows"),
    [
        (["idx\tsentence\tlabel", "7\tgreat fun\t1", "8\tdull\t0"],
         [("great fun", "1"), ("dull", "0")]),
        (["label\tsentence", "1\tgreat fun"], [("great fun", "1")]),
        (["text\tlabel", "great fun\t1"], [("great fun", "1")]),
        (["Sentence \t Label", "great fun\t1"], [("great fun", "1")]),
        (["great fun\t1", "dull\t0"], [("great fun", "1"), ("dull", "0")]),
    ],
    ids=["index-first", "label-first", "renamed", "spaced-capitals", "no-header"],
)
def test_tsv_columns_are_read_by_header_name(lines, rows, tmp_path):
    from zotune.tasks.formats import read_glue_tsv

    path = tmp_path / "train.tsv"
    path.write_text("\n".join(lines) + "\n")
    assert [(row["sentence"], row["label"]) for _, row in read_glue_tsv(path)] == rows


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["idx\tsentence\tgold", "7\tgreat\t1"], "train.tsv: the header lacks a 'label' column"),
        (["idx\tcomment\tlabel", "7\tgreat\t1"],
         "train.tsv: the header lacks a 'sentence' (or 'text') column"),
        (["7\tgreat fun\t1"], "train.tsv: no header, and 3 columns"),
        (["sentence\tlabel", "great fun"],
         "train.tsv line 2: expected text<TAB>label in 2 columns, found 1"),
    ],
)
def test_a_tsv_without_the_expected_columns_is_refused(lines, message, tmp_path):
    from zotune.tasks import TaskDataError
    from zotune.tasks.formats import read_glue_tsv

    path = tmp_path / "train.tsv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskDataError, match="^" + str(tmp_path).replace("\\", "\\\\")) as error:
        list(read_glue_tsv(path))
    assert message in str(error.value) and "\n" not in str(error.value)


# Numbers YAML 1.1 reads as strings (issue 17, item 17) -------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("optimizer: {lr: 1e-4}", "optimizer.lr", 1e-4),
        ("optimizer: {eps: 1E-3}", "optimizer.eps", 1e-3),
        ("optimizer: {sparsity: 5e-1}", "optimizer.sparsity", 0.5),
        ("optimizer: {hybrid_layers: 5e-1}", "optimizer.hybrid_layers", 0.5),
        ("optimizer: {lr: +1e-4}", "optimizer.lr", 1e-4),
    ],
)
def test_a_config_file_number_in_exponent_form_is_a_number(text, key, value, tmp_path):
    from zotune.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(text + "\n")
    section, name = key.split(".")
    read = getattr(getattr(load_config(path), section), name)
    assert read == value and isinstance(read, float)
    override = getattr(getattr(load_config(None, [f"{key}={text.split(': ')[-1][:-1]}"]),
                               section), name)
    assert override == value


def test_a_suite_sweep_in_exponent_form_is_a_number():
    from zotune.bench.suite import expand_suite

    suite = expand_suite({
        "base": {"model": {"name": "random:tiny-llama"}},
        "grid": {"tuning": ["full"], "optimizer": ["zo-sgd"]},
        "sweep": {"zo-sgd": {"lr": ["1e-5"]}},
    })
    (run,) = suite.runs
    assert run.config["optimizer"]["lr"] == 1e-5 and run.hparams["optimizer.lr"] == 1e-5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optimizer: {lr: fast}", "optimizer.lr: expected float, got 'fast'"),
        ("train: {steps: 1e3}", "train.steps: expected int, got '1e3'"),
        ("model: {name: 1e-4}", None),
    ],
)
def test_text_that_is_no_number_stays_refused_and_text_fields_stay_text(text, message,
                                                                        tmp_path):
    from zotune.config import ConfigError, load_config

    path = tmp_path / "run.yaml"
    path.write_text(text + "\n")
    if message is None:
        assert load_config(path).model.name == "1e-4"
        return
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.") + "$"):
        load_config(path)


# Overrides after flags (issue 17, item 18) -------------------------------------------------


def test_bench_takes_overrides_after_its_flags(tmp_path, capsys):
    def planned(argv):
        code, out, err = run_cli(["bench", "smoke", *argv], capsys)
        assert code == 0, err
        return [line.split()[0] for line in out.splitlines()[:-1]]

    results = ["--results", tmp_path / "D"]
    before = planned(["train.steps=3", *results, "--dry-run"])
    after = planned([*results, "--dry-run", "train.steps=3"])
    between = planned(["--dry-run", "train.steps=3", *results])
    assert before == after == between and before != planned([*results, "--dry-run"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["optimizer.lr=1e-3", "--steps=1", "optimizer.bogus=1"],
         "unknown config key: optimizer.bogus"),
        (["train.steps=1", "--no-progress", "task.num_train=0", "--lr=1e-3"],
         "task.num_train: must be at least 1"),
    ],
)
def test_train_takes_overrides_after_its_flags(argv, message, nothing_loads, capsys):
    code, _, err = run_cli(["train", "--model=random:tiny-llama", *argv], capsys)
    assert code == 2
    assert message in one_error_line(err)


def test_an_unknown_flag_after_overrides_is_still_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "smoke", "train.steps=3", "--resluts", "D"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --resluts D" in capsys.readouterr().err


# Profile settings checked before measuring (issue 17, item 11) -----------------------------


@pytest.fixture
def nothing_measured(monkeypatch):
    """Fail the test if ``zotune profile`` starts measuring."""
    from zotune.profiling import measurement, step_cost

    def measure(*args, **kwargs):
        raise AssertionError("the profile started measuring before checking its settings")

    monkeypatch.setattr(measurement, "run_profile", measure)
    monkeypatch.setattr(step_cost, "run_step_cost", measure)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seq-len=100000"],
         "--seq-len 100000 is longer than random:tiny-llama's 512 positions"),
        (["--seq-len=513", "--step-cost"],
         "--seq-len 513 is longer than random:tiny-llama's 512 positions"),
        (["--seq-lens=64,100000"],
         "--seq-lens 100000 is longer than random:tiny-llama's 512 positions"),
        (["--seq-len=0"], "--seq-len must be at least 1, got 0"),
        (["--steps=0"], "--steps must be at least 1, got 0"),
        (["--steps=0", "--step-cost"], "--steps must be at least 1, got 0"),
        (["--warmup=-1"], "--warmup must be at least 0, got -1"),
    ],
)
def test_profile_settings_that_cannot_run_are_refused_first(argv, message, nothing_measured,
                                                            capsys):
    code, _, err = run_cli(["profile", "--model=random:tiny-llama", *argv], capsys)
    assert code == 2
    assert message in one_error_line(err)
