"""zotune profile --plot / --from-json: the memory-against-sequence-length figure, re-rendering
saved results, and the option combinations refused before anything is measured."""

from __future__ import annotations

import json
import os
import shlex
import struct

import pytest
import torch

from zotune.cli import main
from zotune.profiling.plot import plot_memory_vs_seq_len
from zotune.profiling.results import load_payload, load_results, profile_payload, write_json
from zotune.profiling.spec import ProfileResult, ProfileSpec
from zotune.utils import environment
from zotune.utils.measure import MB

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HARDWARE = "Test CPU (2 cores)"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk of a PNG file; fails on anything else."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def result(method: str, seq_len: int, scheme: str = "full", **spec) -> ProfileResult:
    """A made-up measurement: FO grows with T, ZO and inference stay near the weights."""
    weights = 100 * MB
    grows = {"inference": 0.1, "zo-sgd": 0.2, "fo-sgd": 2.0, "fo-adam": 2.5}[method]
    above = int(grows * seq_len * MB)
    estimate = {
        "weights": weights,
        "gradients": 0,
        "optimizer_state": 0,
        "scratch": 0,
        "activations": above,
        "above_weights": above,
        "total": weights + above,
    }
    return ProfileResult(
        spec=ProfileSpec(method=method, seq_len=seq_len, scheme=scheme, batch_size=2, **spec),
        seconds_per_step=0.01 * seq_len,
        step_seconds=[0.01 * seq_len],
        weights_bytes=weights,
        loaded_bytes=weights + 50 * MB,
        peak_bytes=weights + 50 * MB + above,
        peak_reset=True,
        isolated=True,
        trainable_parameters=0 if method == "inference" else 1000,
        total_parameters=1000,
        forward_passes_per_step=2 if method.startswith("zo") else 1,
        attn_implementation=None,
        estimate=estimate,
        hardware=HARDWARE,
    )


def sweep(methods=("zo-sgd", "fo-sgd", "fo-adam"), seq_lens=(32, 64, 128), schemes=("full",)):
    return [result(m, t, s) for t in seq_lens for s in schemes for m in methods]


@pytest.mark.parametrize(
    ("results", "drawn"),
    [
        (sweep(), True),
        (sweep(methods=("inference", "zo-sgd", "fo-adam"), seq_lens=(32, 512)), True),
        (sweep(schemes=("full", "lora")), True),
        (sweep(seq_lens=(64,)), False),  # one length: no line to draw
        ([], False),
    ],
    ids=["three-optimizers", "with-inference", "two-schemes", "one-length", "empty"],
)
def test_plot_memory_vs_seq_len_writes_a_png_or_nothing(tmp_path, results, drawn):
    path = tmp_path / "figures" / "memory.png"
    assert plot_memory_vs_seq_len(results, path) is drawn
    assert path.is_file() is drawn
    if drawn:
        width, height = png_size(path)
        assert width > 300 and height > 200
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == (["memory.png"] if drawn else [])


def test_plot_accepts_results_as_saved_and_read_back(tmp_path):
    saved = tmp_path / "sweep.json"
    write_json(saved, profile_payload(sweep(), command="zotune profile --seq-lens 32,64,128"))
    results = load_results(saved)
    assert results == sweep()
    assert plot_memory_vs_seq_len(results, tmp_path / "memory.png")
    png_size(tmp_path / "memory.png")


def test_from_json_renders_markdown_and_plot_without_measuring(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(environment, "cpu_affinity", lambda: None)
    saved = tmp_path / "sweep.json"
    measured = "zotune profile --seq-lens 32,64,128 --json sweep.json"
    write_json(saved, profile_payload(sweep(), command=measured, note="busy machine"))
    page, figure = tmp_path / "out" / "sweep.md", tmp_path / "out" / "memory.png"
    argv = ["profile", "--from-json", str(saved), "--markdown", str(page), "--plot", str(figure)]
    assert main(argv) == 0
    png_size(figure)
    lines = page.read_text().splitlines()
    assert lines[0] == "# Memory and time"
    assert lines[2] == f"reproduce: `{measured} && zotune {' '.join(argv)}`"
    assert HARDWARE in lines[4]  # the setup saved with the results, not this machine's
    assert "busy machine" in page.read_text()
    assert "![memory against sequence length](memory.png)" in page.read_text()
    assert "| 128 | 2×128 |" in page.read_text()
    printed = capsys.readouterr()
    assert "fo-adam/full" in printed.out and "wrote" in printed.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--plot", "{png}"], "give --seq-lens with two or more lengths"),
        (["--seq-lens", "64", "--plot", "{png}"], "give --seq-lens with two or more lengths"),
        (["--seq-lens", "64,64", "--plot", "{png}"], "give --seq-lens with two or more lengths"),
        (["--step-cost", "--plot", "{png}"], "drop --step-cost"),
        (["--estimate-only", "--seq-lens", "32,64", "--plot", "{png}"], "drop --estimate-only"),
        (["--from-json", "{one}", "--plot", "{png}"], "holds one length only (T=64)"),
        (["--from-json", "{sweep}", "--seq-lens", "32,64"], "--seq-lens shapes a measurement"),
        (["--from-json", "{sweep}", "--optimizers", "zo-sgd"], "--optimizers shapes a"),
        (["--from-json", "{sweep}", "--json", "{out}"], "would only copy the file it reads"),
        (["--from-json", "{sweep}", "--step-cost"], "drop --step-cost"),
        (["--from-json", "{other}", "--plot", "{png}"], "not a zotune profile result"),
        (["--from-json", "{garbled}"], "not JSON"),
        (["--from-json", "{missing}"], "No such file"),
        (["--option", "q"], "--option 'q': expected KEY=VALUE"),
        (["--option", "hybrid_layerz=1"], "--option hybrid_layerz: not an option of zo-sgd"),
        (["--optimizers", "fo-adam", "--option", "eps=0.1"], "not an option of fo-adam"),
        (["--step-cost", "--option", "q=2"], "--option applies to measured profiles"),
        (["--from-json", "{sweep}", "--option", "q=2"], "--option shapes a measurement"),
    ],
    ids=lambda value: None if isinstance(value, list) else value.split(":")[0][:24],
)
def test_bad_combinations_fail_with_one_line_before_measuring(tmp_path, capsys, argv, message):
    files = {name: tmp_path / f"{name}.json" for name in ("one", "sweep", "other", "garbled")}
    write_json(files["one"], profile_payload(sweep(seq_lens=(64,))))
    write_json(files["sweep"], profile_payload(sweep()))
    write_json(files["other"], {"kind": "step-cost", "rows": []})
    files["garbled"].write_text("{not json")
    before = sorted(tmp_path.iterdir())
    paths = {**files, "png": tmp_path / "m.png", "out": tmp_path / "o.json"}
    paths["missing"] = tmp_path / "missing.json"
    argv = [item.format(**paths) for item in argv]
    # A random model that would take a while to measure: the refusal must come first.
    assert main(["profile", "--model", "random:opt-125m", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zotune: error: "), err
    assert message in err
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_profile_sweep_writes_json_markdown_and_plot_then_re_renders(tmp_path, capsys):
    """A real (tiny, in-process) sweep end to end, then the same page again from its JSON."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    saved, page, figure = tmp_path / "sweep.json", tmp_path / "sweep.md", tmp_path / "sweep.png"
    argv = ["profile", "--model", "random:tiny-llama", "--optimizers", "inference,zo-sgd"]
    argv += ["--seq-lens", "8,16", "--batch-size", "2", "--steps", "1", "--warmup", "0"]
    argv += ["--no-isolate", "--threads", "1", "--note", "tiny test"]
    argv += ["--json", str(saved), "--markdown", str(page), "--plot", str(figure)]
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    png_size(figure)
    payload = load_payload(saved)
    assert payload["command"].endswith(shlex.join(["zotune", *argv]))
    assert payload["note"] == "tiny test"
    results = load_results(saved)
    assert [(r.spec.method, r.spec.seq_len) for r in results] == [
        ("inference", 8),
        ("zo-sgd", 8),
        ("inference", 16),
        ("zo-sgd", 16),
    ]
    assert all(r.hardware == environment.hardware_description("cpu") for r in results)
    text = page.read_text()
    assert f"reproduce: `{payload['command']}`" in text
    assert "1 torch thread(s)" in text and "tiny test" in text
    assert f"![memory against sequence length]({figure.name})" in text
    capsys.readouterr()

    again, figure_again = tmp_path / "again.md", tmp_path / "again.png"
    assert main(["profile", "--from-json", str(saved), "--markdown", str(again)]) == 0
    assert main(["profile", "--from-json", str(saved), "--plot", str(figure_again)]) == 0
    png_size(figure_again)

    def tables(page_text: str) -> str:
        body = page_text[page_text.index("| method |") :]
        return body.replace(f"\n\n![memory against sequence length]({figure.name})", "")

    assert tables(again.read_text()) == tables(text)
    assert payload["command"] in again.read_text()  # the measuring command, then the render


@pytest.mark.parametrize(
    ("cpus", "count", "expected"),
    [
        ({0, 1}, 2, None),
        ({0}, 2, "0"),
        ({1}, 2, "1"),
        ({0, 1, 2, 5}, 8, "0-2,5"),
        ({3, 5}, 8, "3,5"),
    ],
)
def test_reproduce_command_names_the_cpus_the_run_was_pinned_to(monkeypatch, cpus, count, expected):
    from zotune.profiling.command import reproduce_command

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: count)
    assert environment.cpu_affinity() == expected
    command = reproduce_command(["profile", "--note", "two words"])
    prefix = f"taskset -c {expected} " if expected else ""
    assert command == prefix + "zotune profile --note 'two words'"


def test_old_results_without_hardware_still_load(tmp_path):
    payload = profile_payload(sweep())
    for item in payload["results"]:
        del item["hardware"]
    write_json(tmp_path / "old.json", payload)
    assert all(r.hardware is None for r in load_results(tmp_path / "old.json"))
    assert json.loads((tmp_path / "old.json").read_text())["kind"] == "profile"


def test_optimizer_options_make_rows_and_leave_inference_alone(tmp_path, capsys):
    """--option crosses each value with the optimizers; the unmodelled ones have no estimate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    saved = tmp_path / "hybrid.json"
    argv = ["profile", "--model", "random:tiny-llama", "--optimizers", "inference,zo-sgd"]
    argv += ["--option", "hybrid_layers=0,2", "--batch-size", "2", "--seq-len", "8"]
    argv += ["--steps", "1", "--warmup", "0", "--no-isolate", "--json", str(saved)]
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    results = load_results(saved)
    assert [r.spec.method_label() for r in results] == [
        "inference", "zo-sgd hybrid_layers=0", "zo-sgd hybrid_layers=2"
    ]
    assert [r.forward_passes_per_step for r in results] == [1, 1, 2]  # k = 0 is all backprop
    assert results[0].estimate and not results[1].estimate
    assert "zo-sgd hybrid_layers=2" in out and "not modelled (optimizer options)" in out
