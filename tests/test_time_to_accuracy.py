"""Time to accuracy: each cell's forward passes and wall time to the validation accuracy at
which ZO-SGD ends, its table in the report, and validation against forward passes plotted."""

from __future__ import annotations

import json

import pytest

from zotune.bench.plots import Band
from zotune.bench.report import build_report
from zotune.bench.runner import RUNS_DIR
from zotune.bench.section import build_sections
from zotune.bench.store import METRICS_FILE, ResultsStore, RunRecord, SuitePlan
from zotune.bench.suite import expand_suite
from zotune.bench.time_to_accuracy import PassCurve, reach, times_to_accuracy


def curve(mean, steps=(0, 10, 20), passes_per_step=2.0, seconds_per_step=0.5):
    return PassCurve("lozo", "full", [s * passes_per_step for s in steps],
                     Band(list(steps), list(mean), list(mean), list(mean), 1),
                     passes_per_step, seconds_per_step)


@pytest.mark.parametrize(
    ("mean", "target", "passes_per_step", "seconds_per_step", "expected"),
    [
        ([0.5, 0.6, 0.7], 0.6, 2.0, 0.5, (10, 20.0, 5.0)),
        ([0.5, 0.6, 0.7], 0.65, 2.0, 0.5, (20, 40.0, 10.0)),
        ([0.5, 0.7, 0.6], 0.6, 2.0, 0.5, (10, 20.0, 5.0)),  # the first reach, not the last
        ([0.5, 0.6 - 1e-12, 0.55], 0.6, 2.0, 0.5, (10, 20.0, 5.0)),  # a mean's rounding
        ([0.5, 0.6, 0.7], 0.6, 3.0, 0.5, (10, 30.0, 5.0)),  # HiZOO's third pass counts
        ([0.5, 0.6, 0.7], 0.6, 2.5, None, (10, 25.0, None)),  # SVRG's amortised anchor
        ([0.5, 0.7, 0.6], 0.8, 2.0, 0.5, (None, None, None)),
    ],
)
def test_a_cell_reaches_the_target_at_its_first_evaluation_at_or_above_it(
        mean, target, passes_per_step, seconds_per_step, expected):
    got = reach(curve(mean, passes_per_step=passes_per_step,
                      seconds_per_step=seconds_per_step), target)
    assert (got.step, got.forward_passes, got.seconds) == pytest.approx(expected)
    assert got.reached is (expected[0] is not None)
    best_step = (0, 10, 20)[mean.index(max(mean))]
    assert (got.best, got.best_passes) == pytest.approx((max(mean), best_step * passes_per_step))


# A store: ZO-SGD (two rates, two seeds), LOZO and FO-Adam, on full and LoRA; validation at
# steps 0, 10, 20 of each run's curve.
VALIDATION = {
    # (optimizer, lr): per seed, validation at steps 0, 10, 20
    ("zo-sgd", 1e-3): [[0.50, 0.60, 0.70], [0.50, 0.64, 0.72]],  # chosen: ends at 0.71
    ("zo-sgd", 1e-4): [[0.50, 0.55, 0.60], [0.50, 0.55, 0.60]],
    ("lozo", 1e-3): [[0.50, 0.72, 0.74], [0.50, 0.70, 0.74]],  # reaches 0.71 at step 10
    ("fo-adam", 1e-3): [[0.50, 0.60, 0.66], [0.50, 0.62, 0.68]],  # never does: best 0.67
}
PASSES = {"zo-sgd": 2, "lozo": 2, "fo-adam": 1}
SECONDS = {"zo-sgd": 1.5, "lozo": 1.0, "fo-adam": 3.0}


def frontier_store(tmp_path, tiny_suite, curves=True, schemes=("full", "lora"),
                   validation=VALIDATION):
    suite = expand_suite(tiny_suite(
        grid={"tuning": list(schemes), "optimizer": ["zo-sgd", "lozo", "fo-adam"]},
        sweep={"zo-sgd": {"lr": [1e-3, 1e-4]}, "lozo": {"lr": [1e-3]},
               "fo-adam": {"lr": [1e-3]}}))
    folder = tmp_path / "store"
    with ResultsStore(folder) as store:
        store.save_plan(SuitePlan.of(suite, "zotune bench tiny"), now=1.0)
        for run in suite.runs:
            optimizer = run.cell.optimizer
            values = validation[(optimizer, run.hparams["optimizer.lr"])][run.seed]
            run_dir = folder / RUNS_DIR / run.id
            run_dir.mkdir(parents=True)
            if curves:
                lines = [{"step": step, "val_accuracy": value, "test_accuracy": value}
                         for step, value in zip((0, 10, 20), values, strict=True)]
                (run_dir / METRICS_FILE).write_text(  # the attempt's; recording copies it
                    "".join(json.dumps(line) + "\n" for line in lines))
            store.record(RunRecord.for_run(
                "tiny", run, status="done", error=None, started_at=1.0, finished_at=2.0,
                metrics={"best_val_accuracy": max(values), "test_accuracy": values[-1],
                         "best_step": 20, "steps": 20, "threads": 1,
                         "forward_passes_per_step": PASSES[optimizer],
                         "seconds_per_step": SECONDS[optimizer]},
                zotune_version="0.2.0", hostname="host", hardware="a CPU"))
    return folder


def reaches_of(folder, reference="zo-sgd"):
    with ResultsStore(folder, create=False) as store:
        (section,) = build_sections(store.records(), store.plans(), folder)
    return {(r.curve.scheme, r.curve.optimizer): r
            for r in times_to_accuracy(section, folder, reference)}


@pytest.mark.parametrize(
    ("reference", "target", "expected"),
    [
        # the chosen ZO-SGD setting's best seed mean (here at its last evaluation): 0.71, not
        # its unchosen rate's 0.60 nor its best seed's 0.72
        ("zo-sgd", 0.71, {"zo-sgd": (20, 40, 30.0), "lozo": (10, 20, 10.0),
                          "fo-adam": (None, None, None)}),
        ("fo-adam", 0.67, {"zo-sgd": (20, 40, 30.0), "lozo": (10, 20, 10.0),
                           "fo-adam": (20, 20, 60.0)}),
    ],
)
def test_every_cell_is_timed_to_where_the_reference_ends(tmp_path, tiny_suite, reference,
                                                          target, expected):
    reaches = reaches_of(frontier_store(tmp_path, tiny_suite), reference)
    assert set(reaches) == {(s, o) for s in ("full", "lora") for o in expected}
    for (_, optimizer), item in reaches.items():
        assert item.target == pytest.approx(target)
        assert (item.step, item.forward_passes, item.seconds) == pytest.approx(
            expected[optimizer])
    fo = reaches[("full", "fo-adam")]
    if not fo.reached:
        assert (fo.best, fo.best_passes) == pytest.approx((0.67, 20))


def test_a_reference_that_rises_then_falls_sets_its_best_as_the_target(tmp_path, tiny_suite):
    """Runs keep their best checkpoint, so a ZO-SGD cell that peaks and then collapses below
    the initial model ends at its peak: the target is 0.65 there, not the final 0.45 that every
    cell meets before its first update."""
    collapsing = {("zo-sgd", 1e-3): [[0.50, 0.66, 0.45], [0.50, 0.64, 0.45]],
                  ("zo-sgd", 1e-4): [[0.50, 0.55, 0.60], [0.50, 0.55, 0.60]]}
    reaches = reaches_of(frontier_store(tmp_path, tiny_suite,
                                        validation={**VALIDATION, **collapsing}))
    full = {optimizer: (r.target, r.step) for (scheme, optimizer), r in reaches.items()
            if scheme == "full"}
    assert full == {"zo-sgd": (pytest.approx(0.65), 10), "lozo": (pytest.approx(0.65), 10),
                    "fo-adam": (pytest.approx(0.65), 20)}


def test_the_plot_dashes_the_target_not_the_references_last_evaluation(tmp_path, tiny_suite):
    """The dashed line is the target the table times every cell to (ZO-SGD's best seed mean,
    0.65), not where its curve ends (0.45)."""
    pytest.importorskip("matplotlib")
    from zotune.bench.plots import validation_vs_forward_passes_figure

    collapsing = {("zo-sgd", 1e-3): [[0.50, 0.66, 0.45], [0.50, 0.64, 0.45]],
                  ("zo-sgd", 1e-4): [[0.50, 0.55, 0.60], [0.50, 0.55, 0.60]]}
    folder = frontier_store(tmp_path, tiny_suite, validation={**VALIDATION, **collapsing})
    with ResultsStore(folder, create=False) as store:
        (section,) = build_sections(store.records(), store.plans(), folder)
    figure = validation_vs_forward_passes_figure(section, folder)
    for axis in figure.axes:
        dashed = [line for line in axis.get_lines() if line.get_linestyle() == "--"]
        assert [list(line.get_ydata()) for line in dashed] == [[pytest.approx(65.0)] * 2]
    assert "dashed: the target, zo-sgd's best" in figure.get_suptitle().replace("\n", " ")


def test_a_target_the_initial_model_scores_is_said_so(tmp_path, tiny_suite):
    """A reference that never left its step-0 validation sets a target every cell meets
    before its first update: the table says so rather than show a race won in 0 passes."""
    falling = {("zo-sgd", 1e-3): [[0.50, 0.45, 0.40], [0.50, 0.45, 0.40]],
               ("zo-sgd", 1e-4): [[0.50, 0.40, 0.30], [0.50, 0.40, 0.30]]}
    folder = frontier_store(tmp_path, tiny_suite, validation={**VALIDATION, **falling})
    build_report(folder, plots=False)
    table = (folder / "report" / "report.md").read_text().split("### Time to accuracy")[1]
    assert "| full | lozo | 50.0 | 40 | 0 (the initial model scores it) | 0 s | 2 |" in table


def test_no_reference_curve_no_time_to_accuracy(tmp_path, tiny_suite):
    folder = frontier_store(tmp_path, tiny_suite, curves=False)
    assert reaches_of(folder) == {}
    written = build_report(folder, plots=False)
    assert "Time to accuracy" not in (folder / "report" / "report.md").read_text()
    assert written


def test_the_report_tables_and_plots_time_to_accuracy(tmp_path, tiny_suite):
    pytest.importorskip("matplotlib")
    from zotune.bench.plots import validation_vs_forward_passes_figure

    folder = frontier_store(tmp_path, tiny_suite)
    build_report(folder)
    text = (folder / "report" / "report.md").read_text()
    table = text.split("### Time to accuracy")[1]
    assert "validation accuracy at which zo-sgd ends" in table
    assert "1 torch thread(s) per run, on a CPU" in table
    rows = [line.split(" | ")[:2] for line in table.splitlines() if line.startswith("| full")
            or line.startswith("| lora")]
    assert rows == [["| full", "zo-sgd"], ["| full", "lozo"], ["| full", "fo-adam"],
                    ["| lora", "zo-sgd"], ["| lora", "lozo"], ["| lora", "fo-adam"]], \
        "the reference leads each scheme"
    assert "| full | lozo | 71.0 | 40 | 20 (step 10) | 10 s | 2 |" in table
    assert "| lora | fo-adam | 71.0 | 20 | not reached (best 67.0 at 20 passes) | — | 2 |" in table
    png = "tiny-sst2-random-tiny-llama_validation_vs_forward_passes.png"
    assert png in text and (folder / "report" / png).is_file()
    page = (folder / "report" / "report.html").read_text()
    assert f'src="{png}"' not in page and page.count("data:image/png;base64,") == 2
    with ResultsStore(folder, create=False) as store:
        (section,) = build_sections(store.records(), store.plans(), folder)
    figure = validation_vs_forward_passes_figure(section, folder)
    assert [axis.get_title() for axis in figure.axes] == ["full", "lora"]
    lines = {line.get_label(): list(line.get_xdata()) for line in figure.axes[0].get_lines()
             if not line.get_label().startswith("_")}
    assert lines == {"zo-sgd (2 seeds)": [0, 20, 40], "lozo (2 seeds)": [0, 20, 40],
                     "fo-adam (2 seeds; each pass also runs backward)": [0, 10, 20]}
    dashed = [line for line in figure.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert [list(line.get_ydata()) for line in dashed] == [[pytest.approx(71.0)] * 2]


def profiled(path, model, rows):
    """A `zotune profile --json` file: per (method, scheme), (s/step, passes, memory MB)."""
    from zotune.profiling.results import profile_payload, write_json
    from zotune.profiling.spec import ProfileResult, ProfileSpec

    results = [ProfileResult(spec=ProfileSpec(model=model, method=method, scheme=scheme),
                             seconds_per_step=seconds, step_seconds=[seconds],
                             weights_bytes=memory * 2**20, loaded_bytes=0, peak_bytes=0,
                             peak_reset=True, isolated=True, trainable_parameters=1,
                             total_parameters=1, forward_passes_per_step=passes,
                             attn_implementation=None)
               for (method, scheme), (seconds, passes, memory) in rows.items()]
    write_json(path, profile_payload(results, command="zotune profile --model m",
                                     note="Alone on core 0."))
    return path


PROFILED = {("inference", "full"): (1.0, 1, 500), ("zo-sgd", "full"): (4.0, 2, 520),
            ("lozo", "full"): (3.0, 2, 510), ("zo-sgd", "lora"): (5.0, 2, 505)}


def section_model(folder):
    with ResultsStore(folder, create=False) as store:
        (section,) = build_sections(store.records(), store.plans(), folder)
    return section.model


def test_a_profile_in_the_store_adds_steps_alone_and_wall_time_alone(tmp_path, tiny_suite):
    """RESULTS_DIR/profile.json is read by default: a table of each optimizer's profiled
    memory and s/step beside inference, and each cell's forward passes to the target priced at
    the profiled seconds per pass (lozo full: 20 passes × 3.0 s / 2 = 30 s); a cell the
    profile lacks shows —."""
    folder = frontier_store(tmp_path, tiny_suite)
    profiled(folder / "profile.json", section_model(folder), PROFILED)
    build_report(folder, plots=False)
    text = (folder / "report" / "report.md").read_text()
    alone = text.split("### Step memory and time alone")[1].split("### Time to accuracy")[0]
    assert "`zotune profile --model m`" in alone and "Alone on core 0." in alone
    assert "| inference | 1 | 500 | 1.000 | — | — |" in alone
    assert "| zo-sgd | 2 | 520 | 4.000 | 505 | 5.000 |" in alone
    assert "| lozo | 2 | 510 | 3.000 | — | — |" in alone
    assert "fo-adam" not in alone, "an optimizer the profile lacks gets no row"
    table = text.split("### Time to accuracy")[1]
    assert "| full | lozo | 71.0 | 40 | 20 (step 10) | 10 s | 30 s | 2 |" in table
    assert "| full | zo-sgd | 71.0 | 40 | 40 (step 20) | 30 s | 80 s | 2 |" in table
    assert "| full | fo-adam | 71.0 | 20 | not reached (best 67.0 at 20 passes) | — | — | 2 |" \
        in table
    assert "| lora | lozo | 71.0 | 40 | 20 (step 10) | 10 s | — | 2 |" in table


@pytest.mark.parametrize(
    ("rows", "model", "error"),
    [
        # a second --dtype of one method: which one the report used would be a guess
        (None, None, "two profiled rows for zo-sgd/full"),
        ({}, None, None),  # no row of this model: no table, no column
        (PROFILED, "another-model", None),
    ],
)
def test_a_profile_that_does_not_fit_is_refused_or_left_out(tmp_path, tiny_suite, rows,
                                                            model, error):
    folder = frontier_store(tmp_path, tiny_suite)
    model = model or section_model(folder)
    path = tmp_path / "elsewhere.json"
    if rows is None:
        profiled(path, model, PROFILED)
        payload = json.loads(path.read_text())
        payload["results"].append(payload["results"][1])
        path.write_text(json.dumps(payload))
    else:
        profiled(path, model, rows)
    if error:
        with pytest.raises(ValueError, match=error):
            build_report(folder, plots=False, profile=path)
        return
    build_report(folder, plots=False, profile=path)
    text = (folder / "report" / "report.md").read_text()
    assert "Step memory and time alone" not in text and "target alone" not in text


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("not json", "not JSON"),
        ('{"kind": "bench"}', "not a zotune profile result"),
        ('{"kind": "profile", "results": [{"spec": {}}]}', "result 0 is not a profiled step"),
    ],
)
def test_a_file_that_is_not_a_profile_gets_one_line(tmp_path, tiny_suite, content, error):
    folder = frontier_store(tmp_path, tiny_suite)
    path = tmp_path / "profile.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=error):
        build_report(folder, plots=False, profile=path)
    with pytest.raises(ValueError, match="no such file"):
        build_report(folder, plots=False, profile=tmp_path / "missing.json")


def test_zotune_report_takes_a_profile_by_flag(tmp_path, tiny_suite, capsys):
    from zotune.cli import main

    folder = frontier_store(tmp_path, tiny_suite)
    path = profiled(tmp_path / "steps.json", section_model(folder), PROFILED)
    assert main(["report", str(folder), "--no-plots", "--profile", str(path)]) == 0
    assert "### Step memory and time alone" in (folder / "report" / "report.md").read_text()
    capsys.readouterr()
