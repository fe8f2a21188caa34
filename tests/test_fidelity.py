"""The paper's settings around the update rules (issue 13, items 1, 6 and 7): run defaults
per tuning scheme, first-order steps as HF's Trainer made them, and hybrid ZO/FO's split."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from zotune.config import build_config
from zotune.enhance import split_hybrid
from zotune.models.random_shapes import random_model
from zotune.optim import create_optimizer
from zotune.training.run import resolve_config, setup
from zotune.training.train import _step


def config_for(sst2_dir, **sections):
    data = {
        "model": {"name": "random:tiny-llama"},
        "task": {"name": "sst2", "data_dir": str(sst2_dir), "num_train": 16, "num_val": 6,
                 "num_test": 6},
        "train": {"steps": 1, "batch_size": 4, "progress": False},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


@pytest.mark.parametrize(
    ("scheme", "optimizer", "settings", "expected"),
    [
        ("full", "zo-sgd", {}, {"eps": 1e-3}),
        ("lora", "zo-sgd", {}, {"eps": 1e-2}),
        ("prefix", "zo-adam", {}, {"eps": 1e-1}),
        ("prompt", "zo-sgd-sign", {}, {"eps": 1e-3}),
        ("lora", "zo-sgd", {"eps": 1e-4}, {"eps": 1e-4}),  # a set value wins
        ("full", "forward-grad", {}, {}),  # no finite difference, no ε
        ("full", "fo-adam", {}, {"max_grad_norm": 1.0}),
        ("lora", "fo-sgd", {"max_grad_norm": 5.0}, {"max_grad_norm": 5.0}),
    ],
)
def test_a_run_takes_the_papers_defaults_for_its_scheme(
    scheme, optimizer, settings, expected, sst2_dir
):
    config = resolve_config(
        config_for(sst2_dir, tuning={"scheme": scheme},
                   optimizer={"name": optimizer, "lr": 1e-3, **settings})
    )
    assert config.optimizer.settings == expected
    assert config.to_dict()["optimizer"] == {
        "name": optimizer, "lr": 1e-3, "schedule": "constant", "warmup_steps": 0, **expected
    }


def test_the_library_keeps_torch_defaults():
    x = torch.zeros(3, requires_grad=True)
    assert create_optimizer("fo-sgd", [x], lr=0.1).max_grad_norm is None
    assert create_optimizer("zo-sgd", [x], lr=0.1).estimator.eps == 1e-3


@pytest.mark.parametrize("name", ["fo-sgd", "fo-adam"])
def test_first_order_steps_clip_the_gradient_norm_like_torch(name):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 4, generator=gen), torch.randn(8, generator=gen)
    ours_x = torch.ones(4, requires_grad=True)
    ref_x = torch.ones(4, requires_grad=True)
    ours = create_optimizer(name, [ours_x], lr=0.1, max_grad_norm=0.5)
    ref = create_optimizer(name, [ref_x], lr=0.1)
    for _ in range(3):
        ours.step(lambda: ((a @ ours_x - b) ** 2).sum())
        ref.zero_grad()
        ((a @ ref_x - b) ** 2).sum().backward()
        norm = torch.nn.utils.clip_grad_norm_([ref_x], 0.5)
        assert norm > 0.5, "the test must exercise the clipping"
        ref.step()
    torch.testing.assert_close(ours_x, ref_x, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("optimizer", "training"), [("fo-adam", True), ("zo-sgd", False)])
def test_first_order_steps_run_in_train_mode_and_zo_probes_in_eval_mode(
    optimizer, training, sst2_dir
):
    run = setup(resolve_config(config_for(sst2_dir, optimizer={"name": optimizer, "lr": 1e-3})))
    seen = []
    batch = run.scorer.encode_for_loss(run.splits.train[:4])

    def closure():
        seen.append(run.model.training)
        return run.scorer.loss(batch)

    _step(run, closure, 0)
    assert set(seen) == {training}
    assert not run.model.training, "evaluation always sees eval mode"


# Hybrid ZO/FO (item 7) ------------------------------------------------------------------------


def test_hybrid_fo_part_has_its_own_learning_rate():
    model = random_model("tiny-llama").model
    optimizer = create_optimizer("zo-sgd", model, lr=1e-6, hybrid_layers=1, fo_lr=1e-3)
    lrs = {group["part"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"zo": 1e-6, "fo": 1e-3}
    with pytest.raises(ValueError, match="fo_lr is the learning rate of a hybrid step"):
        create_optimizer("zo-sgd", model, lr=1e-6, fo_lr=1e-3)


@pytest.mark.parametrize(("shape", "tied"), [("tiny-opt", True), ("tiny-llama", False)])
def test_hybrid_places_the_head_as_documented_for_tied_and_untied_models(shape, tied):
    model = random_model(shape).model
    head = model.get_output_embeddings().weight
    assert (head is model.get_input_embeddings().weight) == tied
    groups = {g["part"]: {id(p) for p in g["params"]} for g in split_hybrid(model, 1)}
    # Tied: one tensor, with the embeddings in the ZO part (FO would record every layer).
    # Untied: the head is the FO part's, as the docstring says.
    assert (id(head) in groups["zo"]) == tied
    assert (id(head) in groups["fo"]) == (not tied)


def test_build_config_keeps_what_the_user_wrote():
    config = build_config({"optimizer": {"name": "zo-sgd", "lr": 1e-3}})
    assert config.optimizer.settings == {}, "run defaults are resolved for a run, not here"


# docs/results/fidelity.md is generated from the reference readings and the code ---------------

FIDELITY_PAGE = Path(__file__).resolve().parents[1] / "docs" / "results" / "fidelity.md"


@pytest.fixture(scope="module")
def fidelity_sources():
    from zotune.bench.fidelity import Sources

    return Sources.load()


def test_the_committed_fidelity_page_is_what_the_code_gives(fidelity_sources):
    from zotune.bench.fidelity import first_difference, render

    line = first_difference(FIDELITY_PAGE.read_text(encoding="utf-8"), render(fidelity_sources))
    assert line is None, (
        f"docs/results/fidelity.md:{line} is stale: python -m zotune.bench.fidelity "
        "--out docs/results/fidelity.md"
    )


def _row(sources, setting):
    (row,) = [r for r in sources.data["settings"] if r["setting"] == setting]
    return {**row["zotune"], "status": row.get("status", "")}


def test_the_sign_row_reads_the_rule_options_from_the_registry(fidelity_sources, monkeypatch):
    """The row lists the registry's rule options and what the `paper` suite sets; it says
    "same" only while the suite runs the released form (base adamw, sign(c)·z)."""
    from zotune.bench.fidelity import PROBES, Sources

    row = _row(fidelity_sources, "ZO update, ZO-SGD-Sign")
    text, verdict = PROBES["zo-update"](fidelity_sources, row)
    assert ("`sign_of` ∈ {estimate, coefficient} (default estimate); "
            "`paper` uses coefficient") in text
    assert "`base` ∈ {sgd, adamw} (default sgd); `paper` uses adamw" in text
    assert verdict == row["same"]
    paper_text_form = {"base": {"sgd"}, "sign_of": {"estimate"}}
    monkeypatch.setattr(Sources, "paper_values", lambda self, key, name: paper_text_form[name])
    text, verdict = PROBES["zo-update"](fidelity_sources, row)
    assert "`paper` uses sgd" in text and verdict == row["differs"]


def test_the_grid_status_compares_the_suite_with_the_reading(fidelity_sources):
    from zotune.bench.fidelity import sst2_rows

    row = next(r for r in sst2_rows(fidelity_sources) if r.startswith("| zo-adam/prefix |"))
    assert row.split("|")[-2].strip() == "grid same"
    changed = copy.deepcopy(fidelity_sources.data)
    changed["sst2_cells"]["zo-adam/prefix"]["eps"] = [0.1]
    sources = dataclasses.replace(fidelity_sources, data=changed)
    row = next(r for r in sst2_rows(sources) if r.startswith("| zo-adam/prefix |"))
    assert row.split("|")[-2].strip() == "grid differs: ε"


def test_the_block_row_counts_zo_llms_27_blocks(fidelity_sources):
    from zotune.bench.fidelity import PROBES

    row = _row(fidelity_sources, "block-wise partition")
    text, status = PROBES["blocks"](fidelity_sources, row)
    assert "`block_level: transformer-block` (27 blocks" in text and status == row["same"]


# §4: the ZO frontier's rows read the registry ------------------------------------------------


def _frontier_row(sources, optimizer, measure, option=None):
    (row,) = [
        r for r in sources.data["frontier"]
        if isinstance(r["zotune"], dict) and r["zotune"]["optimizer"] == optimizer
        and r["zotune"].get("measure") == measure and r["zotune"].get("option") == option
        and "options" not in r["zotune"]
    ]
    return {**row["zotune"], "status": row.get("status", "")}


def _with_default(monkeypatch, optimizer, option, value):
    from zotune.optim import registry

    entry = registry.entry(optimizer)
    options = tuple(dataclasses.replace(o, default=value) if o.name == option else o
                    for o in entry.options)
    assert options != entry.options, f"{optimizer} declares no {option}"
    monkeypatch.setitem(registry.REGISTRY, optimizer,
                        dataclasses.replace(entry, options=options))


@pytest.mark.parametrize(
    ("optimizer", "option", "changed", "shown"),
    [
        ("lozo", "lozo_rank", 4, "`lozo_rank` default 4"),
        ("lozo", "lozo_interval", 100, "`lozo_interval` default 100"),
        ("lozo", "lozo_update", "probed", "`lozo_update` default probed"),
        ("lozo-m", "lozo_beta", 0.7, "`lozo_beta` default 0.7"),
        ("subzero", "subzero_rank", 24, "`subzero_rank` default 24"),
        ("subzero", "subzero_interval", 1000, "`subzero_interval` default 1000"),
        ("hizoo", "hessian_smooth", 0.0, "`hessian_smooth` default 0"),
        ("mezo-svrg", "anchor_every", 3, "`anchor_every` default 3"),
        ("mezo-svrg", "anchor_lr", 1e-6, "`anchor_lr` default 1e-06"),
        ("mezo-svrg", "anchor_batch_size", 64, "`anchor_batch_size` default 64"),
        ("mezo-svrg", "control_at", "anchor", "`control_at` default anchor"),
    ],
)
def test_a_frontier_row_follows_its_registry_default(
    fidelity_sources, monkeypatch, optimizer, option, changed, shown
):
    """A row says "same" exactly while the registry's default is the reference's: changing
    the default flips it (HiZOO's, which differs on purpose, flips the other way)."""
    from zotune.bench.fidelity import PROBES

    row = _frontier_row(fidelity_sources, optimizer, "default", option)
    before = PROBES["frontier"](fidelity_sources, row)[1]
    _with_default(monkeypatch, optimizer, option, changed)
    text, after = PROBES["frontier"](fidelity_sources, row)
    assert shown in text
    same, differs = row.get("same", "same"), row.get("differs", "differs")
    assert (before, after) in ((same, differs), (differs, same)), (before, after)
    assert after == (same if changed == row["expect"] else differs)


def test_the_frontier_counts_follow_the_step_strategies(fidelity_sources, monkeypatch):
    """HiZOO's pass row compares `forward_passes` with the reference's four; MeZO-SVRG's state
    row says "less memory" while `control_at` keeps no parameter-sized anchor."""
    from zotune.bench.fidelity import PROBES
    from zotune.optim.hessian import HessianStep

    passes = _frontier_row(fidelity_sources, "hizoo", "forward-passes")
    assert PROBES["frontier"](fidelity_sources, passes) == (
        "3 (`forward_passes`): no fourth pass; the step returns ℓ₀ = f(θ_t)", passes["differs"])
    state = _frontier_row(fidelity_sources, "mezo-svrg", "state-tensors")
    assert PROBES["frontier"](fidelity_sources, state)[1] == state["differs"]

    monkeypatch.setattr(HessianStep, "planned_forward_passes", lambda self, passes: passes + 2)
    assert PROBES["frontier"](fidelity_sources, passes)[1] == "same"
    _with_default(monkeypatch, "mezo-svrg", "control_at", "anchor")
    assert PROBES["frontier"](fidelity_sources, state)[1] == "same"


def test_sparse_mezo_sparsity_stays_unverified(fidelity_sources, monkeypatch):
    """No code of the authors: the row shows the registry's default and never says "same"."""
    from zotune.bench.fidelity import PROBES

    row = _frontier_row(fidelity_sources, "sparse-mezo", "default", "sparsity")
    text, status = PROBES["frontier"](fidelity_sources, row)
    assert text.startswith("`sparsity` default 0.8") and status == "unverified"
    _with_default(monkeypatch, "sparse-mezo", "sparsity", 0.5)
    text, status = PROBES["frontier"](fidelity_sources, row)
    assert text.startswith("`sparsity` default 0.5") and status == "unverified"


def test_the_frontier_section_names_each_methods_golden_test(fidelity_sources):
    from zotune.bench.fidelity import render

    page = render(fidelity_sources)
    section = page[page.index("## 4. The ZO frontier against its authors' code"):]
    tests = Path(__file__).resolve().parent
    for name in ("lowrank", "hizoo", "mezo_svrg", "sparse_mezo"):
        golden = f"tests/test_golden_frontier_{name}.py"
        assert golden in section and (tests.parent / golden).is_file()
    methods = {line.split("|")[1].strip() for line in section.splitlines()[2:]
               if line.startswith("| ")} - {"method", "---"}
    assert methods == {"LOZO", "LOZO-M", "SubZero", "HiZOO", "MeZO-SVRG", "Sparse-MeZO"}


def test_the_frontier_suite_rows_read_the_suite(fidelity_sources):
    """Each method's suite row lists what `cpu-frontier` sets away from the registry's
    defaults, per scheme (MeZO-SVRG's smaller anchor, Sparse-MeZO's LoRA threshold rule)."""
    from zotune.bench.fidelity import PROBES

    def suite_text(optimizer):
        (row,) = [r for r in fidelity_sources.data["frontier"]
                  if r["zotune"] == {"code": "frontier-suite", "optimizer": optimizer}]
        return PROBES["frontier-suite"](fidelity_sources, {**row["zotune"],
                                                            "status": row["status"]})[0]

    assert "`anchor_batch_size` 128" in suite_text("mezo-svrg")
    assert "`anchor_every`" not in suite_text("mezo-svrg"), "the suite keeps its default"
    full, lora = suite_text("sparse-mezo").split("; lora: ")
    assert "small-magnitude-step" in lora and "small-magnitude-step" not in full
