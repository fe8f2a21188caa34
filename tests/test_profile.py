"""zotune profile: per-optimizer memory/time, the sequence-length sweep, the step-cost
benchmark, and the MeZO-style reference step it compares against."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from zotune.cli import main
from zotune.profiling.measurement import run_profile
from zotune.profiling.mezo_reference import MezoReferenceStep
from zotune.profiling.render import profile_table, sweep_table
from zotune.profiling.results import load_results
from zotune.profiling.spec import ProfileResult, ProfileSpec, grid
from zotune.profiling.step_cost import StepCostConfig, run_step_cost, step_cost_table

TINY = {"model": "random:tiny-llama", "batch_size": 2, "steps": 1, "warmup": 0}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny models run 30x slower on two threads when other processes hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the profile's worker processes
    yield
    torch.set_num_threads(threads)


def test_profile_end_to_end_in_fresh_processes(tmp_path, capsys):
    out = tmp_path / "profile.json"
    page = tmp_path / "profile.md"
    argv = ["profile", "--model", "random:tiny-llama", "--optimizers", "zo-sgd,fo-adam"]
    argv += ["--batch-size", "2", "--seq-len", "16", "--steps", "1", "--warmup", "0"]
    argv += ["--json", str(out), "--markdown", str(page)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "[2/2] fo-adam full random:tiny-llama" in printed.err
    assert "zo-sgd" in printed.out and "estimate breakdown" in printed.out
    payload = json.loads(out.read_text())
    assert payload["kind"] == "profile"
    results = load_results(out)
    assert [r.spec.method for r in results] == ["zo-sgd", "fo-adam"]
    for r in results:
        assert r.isolated and r.seconds_per_step > 0 and r.peak_bytes >= r.loaded_bytes
        assert r.memory_bytes == r.weights_bytes + r.above_weights_bytes
        assert r.trainable_parameters == r.total_parameters > 0
    zo, fo = results
    assert zo.forward_passes_per_step == 2 and fo.forward_passes_per_step == 1
    assert fo.estimate["optimizer_state"] == 2 * fo.estimate["trainable"]
    assert zo.estimate["optimizer_state"] == 0 and zo.estimate["gradients"] == 0
    assert "| zo-sgd | full |" in page.read_text()
    assert "one fresh process per measurement" in page.read_text()


def test_seq_len_sweep_fo_grows_and_zo_stays_near_inference(capsys):
    specs = grid(["zo-sgd", "fo-sgd", "fo-adam"], seq_lens=[16, 64], **TINY)
    results = run_profile(specs, isolate=False)
    by = {(r.spec.method, r.spec.seq_len): r.estimate for r in results}
    fo_growth = by["fo-sgd", 64]["activations"] - by["fo-sgd", 16]["activations"]
    zo_growth = by["zo-sgd", 64]["activations"] - by["zo-sgd", 16]["activations"]
    assert fo_growth > 3 * zo_growth > 0
    assert by["fo-adam", 64]["total"] > by["fo-sgd", 64]["total"]
    table = sweep_table(results)
    assert table.splitlines()[0].split()[:3] == ["T", "B×T", "zo-sgd/full"]
    assert len(table.splitlines()) == 4  # header, rule, T = 16, T = 64
    assert "fo-adam/full MB (est.)" in sweep_table(results, markdown=True)


_MEASURE_TIED_LLAMA = """
import json, sys, torch
from transformers import AutoModelForCausalLM, LlamaConfig
from zotune.profiling.measurement import measure
from zotune.profiling.spec import ProfileSpec
method, batch, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=512,
                     num_hidden_layers=2, num_attention_heads=4, tie_word_embeddings=True)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(config).eval()
spec = ProfileSpec(method=method, batch_size=batch, seq_len=seq, steps=1, warmup=0)
result = measure(spec, model=model, isolated=True)
print(json.dumps({**result.as_dict(), "reset": result.peak_reset}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="clean CPU peaks need /proc")
@pytest.mark.parametrize(("method", "batch", "seq"), [("fo-sgd", 2, 16), ("inference", 8, 256)])
def test_measured_memory_matches_the_estimate_loosely(method, batch, seq):
    """A vocabulary-heavy tied model: FO peaks at the end of backward (G + 2·V·h·s).

    Each measurement runs in a fresh process, as ``zotune profile`` takes them: what earlier
    tests left in this process's heap would otherwise count towards the peak.
    """
    import json
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _MEASURE_TIED_LLAMA, method, str(batch), str(seq)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    if not result["reset"]:
        pytest.skip("this kernel does not reset the resident-set peak (/proc/self/clear_refs)")
    ratio = result["above_weights_bytes"] / result["estimate"]["above_weights"]
    assert 0.7 < ratio < 1.4, result


def test_profile_rejects_unknown_methods_before_running():
    with pytest.raises(ValueError, match="'sgd'"):
        run_profile([ProfileSpec(method="sgd", **TINY)])
    with pytest.raises(ValueError, match="seq_len: 0"):
        run_profile([ProfileSpec(seq_len=0, **TINY)])
    with pytest.raises(ValueError, match="threads: 0"):
        run_profile([ProfileSpec(threads=0, **TINY)])


def test_result_round_trips_through_json():
    result = run_profile([ProfileSpec(method="inference", seq_len=8, **TINY)], isolate=False)[0]
    again = ProfileResult.from_dict(json.loads(json.dumps(result.as_dict())))
    assert again == result
    assert again.trainable_parameters == 0 and again.forward_passes_per_step == 1
    assert "inference" in profile_table([again])


def test_step_cost_runs_on_a_tiny_shape():
    config = StepCostConfig(**{**TINY, "steps": 2}, seq_len=8, schemes=("full", "lora"))
    result = run_step_cost(config, isolate=False)
    rows = {(r.method, r.scheme): r for r in result.rows}
    assert list(rows) == [
        ("zo-sgd", "full"),
        ("zo-sgd-mmt", "full"),
        ("zo-adam", "full"),
        ("mezo-ref", "full"),
        ("zo-sgd", "lora"),
        ("mezo-ref", "lora"),
    ]
    for row in result.rows:
        assert row.ratio == row.seconds_per_step / (2 * row.forward_seconds)
        assert row.memory_bytes and row.inference_memory_bytes
    assert rows["mezo-ref", "lora"].speedup_vs_mezo == 1.0
    assert rows["zo-sgd", "lora"].trainable_parameters < rows["zo-sgd", "full"].trainable_parameters
    assert [(r.spec.method, r.spec.scheme) for r in result.memory[:2]] == [
        ("inference", "full"),
        ("inference", "lora"),
    ]
    assert all(len(row.step_seconds) == config.steps for row in result.rows)
    payload = result.as_dict()
    assert payload["kind"] == "step-cost" and len(payload["rows"]) == 6
    assert "speed-up vs MeZO-style" in step_cost_table(result)


# The MeZO-style reference step -------------------------------------------------------------


def _quadratic():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(6, 5))
    bias = torch.nn.Parameter(torch.randn(5))
    frozen = torch.nn.Parameter(torch.randn(3), requires_grad=False)
    named = [("layer.weight", weight), ("layer.bias", bias), ("frozen", frozen)]
    target = torch.randn(6, 5)

    def loss():
        return ((weight - target) ** 2).sum() + (bias**2).sum()

    return named, loss


def _z(seed: int, params):
    torch.manual_seed(seed)
    return [torch.normal(mean=0, std=1, size=p.size(), dtype=p.dtype) for p in params]


def test_mezo_reference_probes_at_plus_and_minus_eps_z_and_restores():
    named, loss = _quadratic()
    before = [p.detach().clone() for _, p in named]
    seen = []

    def closure():
        seen.append([p.detach().clone() for _, p in named])
        return loss()

    step = MezoReferenceStep(named, lr=0.0, eps=1e-3, seed=3)
    step.step(closure)
    z = _z(step.zo_random_seed, [named[0][1], named[1][1]])
    for i in range(2):
        torch.testing.assert_close(seen[0][i], before[i] + 1e-3 * z[i])
        torch.testing.assert_close(seen[1][i], before[i] - 1e-3 * z[i])
    for (_, param), original in zip(named, before, strict=True):
        torch.testing.assert_close(param.detach(), original, rtol=0, atol=1e-6)
    assert torch.equal(named[2][1], before[2])  # frozen tensors are never touched


def test_mezo_reference_moves_along_minus_lr_c_z_with_its_own_z():
    named, loss = _quadratic()
    before = [p.detach().clone() for _, p in named[:2]]
    step = MezoReferenceStep(named, lr=1e-3, eps=1e-3, weight_decay=0.1, seed=5)
    step.step(loss)
    c = step.projected_grad
    assert c != 0
    z = _z(step.zo_random_seed, before)
    weight, bias = (p.detach() for _, p in named[:2])
    # Weights decay (MeZO's rule by name); biases do not.
    torch.testing.assert_close(
        weight, before[0] - 1e-3 * (c * z[0] + 0.1 * before[0]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(bias, before[1] - 1e-3 * c * z[1], atol=1e-6, rtol=0)
    seeds = {step.zo_random_seed}
    step.step(loss)
    assert step.zo_random_seed not in seeds  # a new direction each step


def test_mezo_reference_coefficient_is_the_directional_derivative():
    named, loss = _quadratic()
    weight, bias = named[0][1], named[1][1]
    step = MezoReferenceStep(named, lr=0.0, eps=1e-3, seed=7)
    step.step(loss)
    z = _z(step.zo_random_seed, [weight, bias])
    loss().backward()
    exact = float((weight.grad * z[0]).sum() + (bias.grad * z[1]).sum())
    assert step.projected_grad == pytest.approx(exact, rel=1e-2)


def test_estimate_only_sizes_llama_7b_without_building_it(tmp_path, capsys):
    out = tmp_path / "estimates.json"
    argv = ["profile", "--model", "random:llama-7b", "--dtype", "float16", "--estimate-only"]
    argv += ["--optimizers", "zo-sgd,fo-adam", "--schemes", "full,lora", "--json", str(out)]
    assert main(argv) == 0
    assert "W 12,853" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    total = {(r["spec"]["method"], r["spec"]["scheme"]): r["estimate"]["total"] for r in rows}
    assert total["fo-adam", "full"] > 3 * total["zo-sgd", "full"] > 3 * 12e9
    assert total["zo-sgd", "lora"] < 1.1 * total["zo-sgd", "full"]


def test_estimate_page_labels_each_precision_and_says_how_to_reproduce_it(tmp_path, capsys):
    page = tmp_path / "estimates.md"
    argv = ["profile", "--model", "random:tiny-llama", "--dtype", "float32,bfloat16",
            "--estimate-only", "--optimizers", "zo-sgd", "--markdown", str(page)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    text = page.read_text()
    assert "reproduce: `zotune profile --model random:tiny-llama --dtype float32,bfloat16" in text
    assert "float32, bfloat16, cpu: analytic" in text
    # One row per precision, told apart by its label.
    printed_rows = [line.split("  ")[0] for line in printed.splitlines()
                    if line.startswith("zo-sgd")]
    page_rows = [line.split("|")[1].strip() for line in text.splitlines()
                 if line.startswith("| zo-sgd")]
    assert printed_rows == page_rows == ["zo-sgd", "zo-sgd [bfloat16]"]


# Offloaded weights (--offload) ---------------------------------------------------------------


def test_offload_rows_follow_their_resident_ones_and_move_cpu_storage(tmp_path, capsys):
    pytest.importorskip("accelerate")
    out, page = tmp_path / "offload.json", tmp_path / "offload.md"
    argv = ["profile", "--model", "random:tiny-opt", "--optimizers", "inference,zo-sgd"]
    argv += ["--offload", "--batch-size", "1", "--seq-len", "8", "--steps", "1", "--warmup", "0"]
    argv += ["--no-isolate", "--json", str(out), "--markdown", str(page)]
    assert main(argv) == 0
    results = load_results(out)
    assert [(r.spec.method, r.spec.offload) for r in results] == [
        ("inference", False), ("inference", True), ("zo-sgd", False), ("zo-sgd", True)
    ]
    for r in results:
        assert r.seconds_per_step > 0 and r.forward_passes_per_step == (2 if r.spec.method ==
                                                                         "zo-sgd" else 1)
        assert bool(r.estimate) != r.spec.offload  # the memory model counts resident weights
    assert "zo-sgd [cpu-offload] | full |" in page.read_text()
    assert "not modelled (CPU offload)" in capsys.readouterr().out


@pytest.mark.parametrize("scheme", ["full", "lora", "prompt"])
def test_the_profiled_lm_head_gets_a_contiguous_input(scheme):
    """As in training (zotune.evaluation.scoring): a frozen head fed the strided last-position slice
    would make torch.matmul copy its weight per row, which the profile would then report."""
    from zotune.profiling.build import build_step

    built = build_step(ProfileSpec(method="zo-sgd", scheme=scheme, seq_len=8, **TINY))
    seen: list[bool] = []
    head = built.model.get_output_embeddings()
    probe = head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    try:
        built.step()
    finally:
        probe.remove()
    assert seen and all(seen)


def test_an_offloaded_model_takes_its_batch_on_the_execution_device():
    pytest.importorskip("accelerate")
    from zotune.profiling.build import build_step

    built = build_step(ProfileSpec(method="zo-sgd", offload=True, seq_len=8, **TINY))
    assert {p.device.type for p in built.model.parameters()} == {"meta"}
    before = [p.clone() for p in built.optimizer.param_groups[0]["params"]]
    built.step()
    after = built.optimizer.param_groups[0]["params"]
    assert all(p.device.type == "cpu" for p in after)  # the CPU storage, moved in place
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize(
    ("method", "scheme", "message"),
    [
        ("fo-sgd", "full", "fo-sgd cannot run on offloaded weights"),
        ("forward-grad", "full", "forward-grad cannot run on offloaded weights"),
        ("mezo-ref", "full", "mezo-ref cannot run on offloaded weights"),
        ("zo-sgd", "lora", "--offload measures full fine-tuning .* not lora"),
    ],
)
def test_offload_is_refused_where_it_cannot_work_before_anything_runs(method, scheme, message):
    with pytest.raises(ValueError, match=message):
        run_profile([ProfileSpec(method=method, scheme=scheme, offload=True, **TINY)])


@pytest.mark.parametrize("mode", ["--step-cost", "--estimate-only"])
def test_offload_applies_to_measured_profiles_only(mode, capsys):
    assert main(["profile", "--offload", mode]) == 2
    assert f"--offload applies to measured profiles; drop {mode}" in capsys.readouterr().err


# A failing measurement (--keep-going) ------------------------------------------------------


def _failing_for(method: str, real):
    """``measure`` that raises for ``method`` after poisoning the weights it was given, as a
    half-precision step that turns them non-finite does."""

    def fake(spec, **kwargs):
        if spec.method == method:
            for param in (kwargs.get("model") or torch.nn.Linear(1, 1)).parameters():
                param.data.fill_(float("nan"))
            raise ValueError(f"non-finite loss ({method})\nsecond line")
        return real(spec, **kwargs)

    return fake


def test_keep_going_reports_a_failing_measurement_and_keeps_the_others(
    tmp_path, capsys, monkeypatch
):
    import zotune.profiling.measurement as measurement

    monkeypatch.setattr(measurement, "measure", _failing_for("fo-adam", measurement.measure))
    out, page = tmp_path / "profile.json", tmp_path / "profile.md"
    argv = ["profile", "--model", "random:tiny-llama", "--optimizers", "zo-sgd,fo-adam,fo-sgd"]
    argv += ["--batch-size", "2", "--seq-len", "8", "--steps", "1", "--warmup", "0"]
    argv += ["--no-isolate", "--json", str(out), "--markdown", str(page)]
    assert main(argv) == 2
    assert "zotune: error: non-finite loss (fo-adam)" in capsys.readouterr().err
    assert main([*argv, "--keep-going"]) == 1
    assert "[2/3] fo-adam full random:tiny-llama B=2 T=8: FAILED" in capsys.readouterr().err
    payload = json.loads(out.read_text())
    assert [r["spec"]["method"] for r in payload["results"]] == ["zo-sgd", "fo-sgd"]
    assert [(f["spec"]["method"], f["error"]) for f in payload["failed"]] == [
        ("fo-adam", "ValueError: non-finite loss (fo-adam)")
    ]
    assert "## Failed measurements" in page.read_text()


def test_step_cost_times_the_other_rows_on_fresh_weights_after_a_failure(monkeypatch):
    import zotune.profiling.step_cost as step_cost

    monkeypatch.setattr(step_cost, "measure", _failing_for("zo-adam", step_cost.measure))
    config = StepCostConfig(**{**TINY, "steps": 2}, seq_len=8, schemes=("full",))
    failures = []
    result = run_step_cost(config, isolate=False, failures=failures)
    assert [(r.method, r.scheme) for r in result.rows] == [
        ("zo-sgd", "full"), ("zo-sgd-mmt", "full"), ("mezo-ref", "full")]
    assert all(math.isfinite(r.seconds_per_step) and r.seconds_per_step > 0 for r in result.rows)
    assert [(spec.method, error) for spec, error in failures] == [
        ("zo-adam", "ValueError: non-finite loss (zo-adam)")
    ]
    with pytest.raises(ValueError, match="non-finite loss"):
        run_step_cost(config, isolate=False)


def test_step_cost_reports_the_non_forward_part_per_precision():
    """Each row names its precision and T_step − passes · T_fwd as its own column."""
    from zotune.profiling.step_cost import merge_step_costs

    results = [
        run_step_cost(StepCostConfig(**{**TINY, "steps": 1, "dtype": dtype}, seq_len=8,
                                     schemes=("full",)), isolate=False)
        for dtype in ("float32", "bfloat16")
    ]
    merged = merge_step_costs(results)
    assert [row.precision for row in merged.rows if row.method == "zo-sgd"] == [
        "float32", "bfloat16"]
    for row in merged.rows:
        assert row.forward_passes == 2
        assert row.non_forward_seconds == pytest.approx(
            row.seconds_per_step - 2 * row.forward_seconds)
    text = step_cost_table(merged)
    assert "non-forward s" in text and "bfloat16" in text


def row(dtype="bfloat16", matmul="auto", resolved="float32"):
    return ProfileResult(spec=ProfileSpec(model="m", dtype=dtype, matmul=matmul),
                         seconds_per_step=1.0, step_seconds=[1.0], weights_bytes=0,
                         loaded_bytes=0, peak_bytes=0, peak_reset=True, isolated=True,
                         trainable_parameters=1, total_parameters=1, forward_passes_per_step=2,
                         attn_implementation=None, matmul=resolved)


@pytest.mark.parametrize(
    ("rows", "said"),
    [
        ([row(), row()], "m, bfloat16 (model.matmul auto: float32 products), cpu"),
        ([row(), row(resolved="native"), row()],
         "(model.matmul auto chose per process: float32 in 2, native in 1 of 3 rows)"),
        ([row(dtype="float32", resolved="native")], "m, float32, cpu"),
        ([row(matmul="native", resolved="native")], "m, bfloat16+matmul=native, cpu"),
        ([row(resolved=None)], "m, bfloat16, cpu"),  # a result saved before it was recorded
    ],
)
def test_the_setup_line_says_what_auto_products_resolved_to(rows, said):
    """Each measurement's process decides `model.matmul auto` for itself: the page says what
    the half-precision rows ran, and when processes disagreed."""
    from zotune.profiling.render import describe_setup

    assert said in describe_setup(rows)
    assert ProfileResult.from_dict(rows[0].as_dict()).matmul == rows[0].matmul


# Repeats: each row in several fresh processes ------------------------------------------------


def test_repeats_measure_round_by_round_and_show_each_rows_median_process(monkeypatch):
    """Three rounds over two rows (A B A B A B), each row's result the process with the
    median s/step, every process's s/step beside it; the table shows the range."""
    import dataclasses

    from zotune.profiling import measurement
    from zotune.profiling.render import describe_setup, profile_table

    seconds = {"zo-sgd": iter([3.0, 5.2, 3.1]), "hizoo": iter([4.5, 4.4, 4.6])}
    order = []
    template = run_profile([ProfileSpec(method="inference", seq_len=8, **TINY)],
                           isolate=False)[0]

    def fake(spec):
        order.append(spec.method)
        return dataclasses.replace(template, spec=spec, isolated=True,
                                   seconds_per_step=next(seconds[spec.method]),
                                   peak_bytes=template.loaded_bytes + len(order))

    monkeypatch.setattr(measurement, "measure_isolated", fake)
    specs = [ProfileSpec(method=m, seq_len=8, **TINY) for m in ("zo-sgd", "hizoo")]
    zo, hizoo = run_profile(specs, repeats=3)
    assert order == ["zo-sgd", "hizoo"] * 3
    assert (zo.seconds_per_step, zo.process_seconds) == (3.1, [3.0, 5.2, 3.1])
    assert (hizoo.seconds_per_step, hizoo.process_seconds) == (4.5, [4.5, 4.4, 4.6])
    assert zo.above_weights_bytes == 5  # the median process's own memory reading
    assert "3.100 (3.00–5.20)" in profile_table([zo, hizoo])
    assert "each row measured in 3 fresh processes" in describe_setup([zo, hizoo])
    assert ProfileResult.from_dict(zo.as_dict()) == zo
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        run_profile(specs, repeats=0)


@pytest.mark.parametrize(("argv", "message"), [
    (["--repeats", "0"], "--repeats must be at least 1, got 0"),
    (["--repeats", "2", "--step-cost"], "--repeats applies to measured profiles; drop --step-cost"),
    (["--repeats", "2", "--estimate-only"],
     "--repeats applies to measured profiles; drop --estimate-only"),
])
def test_bad_repeats_are_refused_before_anything_runs(argv, message, capsys):
    assert main(["profile", *argv]) == 2
    assert message in capsys.readouterr().err
