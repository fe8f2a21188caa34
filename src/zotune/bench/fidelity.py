"""docs/results/fidelity.md, generated: the reference's settings beside zotune's, read from code.

``python -m zotune.bench.fidelity --out docs/results/fidelity.md`` writes the page;
``--check`` exits 1 (naming the first differing line) when the file is not what the code
gives, and ``tests/test_fidelity.py`` runs that check, so a row cannot say "differs" after the
code changed, nor "same" after it drifted.

Two sources, each fact stated once:

* ``fidelity.yaml`` (beside this module): readings of the reference code (ZO-LLM, MeZO, and
  for §4 the ZO frontier's authors' code: LOZO, SubZero, HiZOO, MeZO-SVRG), each with the
  file and line it was read from, and the prose rows whose zotune side is a behaviour rather
  than a value (templates, selection rules);
* the code: the ``paper`` and ``cpu`` suites (every grid cell's lr, ε, steps and batch), the
  optimizer registry (every option's default and choices, so options added later, such as a
  new ``distribution`` or a ``base`` rule, appear when the page is regenerated), the task
  catalog (training loss per task), the run config's defaults, the block partition
  (counted on a 24-layer OPT built from a config), and each frontier entry's defaults,
  forward passes and state tensors (the ``frontier`` probe's measures).

A settings row of the data file whose ``zotune`` is ``{code: NAME}`` gets its zotune column
and its status from the probe ``NAME`` below; the others are printed as written.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig
from ..enhance.blocks import partition
from ..optim import registry
from ..optim.options import ZO_OPTIONS
from ..tasks.builtin import TASKS
from ..tuning.registry import get_scheme, scheme_keys
from .suite import load_suite

DATA_FILE = "fidelity.yaml"
FRONTIER_SUITE = "cpu-frontier"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _numbers(values: Iterable[Any]) -> str:
    return ", ".join(_number(v) for v in sorted(values, reverse=True))


@dataclass
class Sources:
    """What the page reads from code, loaded once."""

    data: dict[str, Any]
    paper_runs: list = field(default_factory=list)
    cpu_runs: list = field(default_factory=list)

    @classmethod
    def load(cls) -> Sources:
        text = (resources.files("zotune.bench") / DATA_FILE).read_text(encoding="utf-8")
        return cls(yaml.safe_load(text), load_suite("paper").runs, load_suite("cpu").runs)

    def paper_cell(self, cell: str, variant: str = "") -> list:
        optimizer, scheme = cell.split("/")
        return [
            r for r in self.paper_runs
            if (r.cell.optimizer, r.cell.scheme, r.cell.variant) == (optimizer, scheme, variant)
        ]

    def paper_values(self, optimizer: str, option: str) -> set:
        """The values the `paper` suite's runs of ``optimizer`` give ``option``."""
        accepted = registry.entry(optimizer).accepted()
        default = accepted[option].default if option in accepted else None
        return {
            r.config["optimizer"].get(option, default)
            for r in self.paper_runs
            if r.cell.optimizer == optimizer
        }

    @cached_property
    def frontier_runs(self) -> list:
        """The `cpu-frontier` suite's runs (the ZO frontier at CPU scale)."""
        return load_suite(FRONTIER_SUITE).runs

    @cached_property
    def block_counts(self) -> dict[str, int]:
        """Blocks per level on a 24-layer OPT (the OPT-1.3B depth), from a config."""
        from transformers import OPTConfig, OPTForCausalLM

        config = OPTConfig(vocab_size=64, hidden_size=8, word_embed_proj_dim=8, ffn_dim=16,
                           num_hidden_layers=24, num_attention_heads=2,
                           max_position_embeddings=32)
        model = OPTForCausalLM(config)
        from ..enhance.blocks import BLOCK_LEVELS

        return {level: len(partition(model, level)) for level in BLOCK_LEVELS}


# Section 1: the SST-2 grid -------------------------------------------------------------------


def sst2_rows(sources: Sources) -> list[str]:
    header = [
        "| cell | ZO-LLM lr | ZO-LLM ε | ZO-LLM steps × batch | sweep file "
        "(zo-bench/sweeps/SST2_opt-1.3b/) | `paper` lr / ε / steps × batch | status |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = []
    for cell, ref in sources.data["sst2_cells"].items():
        runs = sources.paper_cell(cell)
        lrs = {r.config["optimizer"]["lr"] for r in runs}
        eps = {r.config["optimizer"].get("eps") for r in runs} - {None}
        budgets = {(r.config["train"]["steps"], r.config["train"]["batch_size"]) for r in runs}
        ours = " / ".join([
            _numbers(lrs) or "—",
            _numbers(eps) or "—",
            ", ".join(f"{s} × {b}" for s, b in sorted(budgets)) or "—",
        ])
        ref_lr, ref_eps = set(ref.get("lr") or []), set(ref.get("eps") or [])
        ref_budget = {(ref["steps"], ref["batch"])} if "steps" in ref else None
        differs = [
            what for what, mine, theirs in (
                ("lr", lrs, ref_lr), ("ε", eps, ref_eps), ("steps × batch", budgets, ref_budget),
            )
            if theirs is not None and (theirs or what != "ε") and mine != theirs
        ]
        if not ref_lr:
            status = "no reference file"
        else:
            status = "grid same" if not differs else f"grid differs: {', '.join(differs)}"
        if ref.get("note"):
            status = f"{status}; {ref['note']}"
        budget = f"{ref['steps']} × {ref['batch']}" if "steps" in ref else "—"
        rows.append(
            f"| {cell} | {_numbers(ref_lr) or '—'} | {_numbers(ref_eps) or '—'} | {budget} "
            f"| {ref['file']} | {ours} | {status} |"
        )
    return header + rows


# Section 2: settings, with probes for the rows whose zotune value lives in code --------------

Probe = Callable[[Sources, dict[str, Any]], tuple[str, str]]
PROBES: dict[str, Probe] = {}


def probe(name: str) -> Callable[[Probe], Probe]:
    def register(function: Probe) -> Probe:
        PROBES[name] = function
        return function

    return register


def _verdict(same: bool, row: dict[str, Any]) -> str:
    return row.get("same", "same") if same else row.get("differs", "differs")


@probe("budget")
def _budget(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    table = [r for r in sources.paper_runs if not r.cell.variant]
    key = row["key"]
    values = {}
    for run in table:
        values.setdefault(run.config["train"][key], set()).add(
            f"{run.cell.optimizer}/{run.cell.scheme}")
    main = max(values, key=lambda v: len(values[v]))
    others = [f"{v} ({', '.join(sorted(cells))})" for v, cells in values.items() if v != main]
    text = f"{main}" + (f"; {'; '.join(others)}" if others else "")
    return text, _verdict(text == str(row["expect"]), row)


@probe("schedule")
def _schedule(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    values = {r.config["optimizer"].get("schedule") for r in sources.paper_runs}
    text = f"`optimizer.schedule`: {', '.join(sorted(map(str, values)))}"
    return text, _verdict(values == {row["expect"]}, row)


@probe("eps-cells")
def _eps_cells(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    same = all(
        {r.config["optimizer"].get("eps") for r in sources.paper_cell(cell)} - {None}
        == set(ref.get("eps") or [])
        for cell, ref in sources.data["sst2_cells"].items() if ref.get("lr")
    )
    return "per cell, §1", _verdict(same, row)


@probe("cpu-prefix-eps")
def _cpu_prefix_eps(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    by_optimizer: dict[str, set] = {}
    for run in sources.cpu_runs:
        if run.cell.scheme == "prefix" and "eps" in run.config["optimizer"]:
            by_optimizer.setdefault(run.cell.optimizer, set()).add(run.config["optimizer"]["eps"])
    outside = []
    for optimizer, values in sorted(by_optimizer.items()):
        grid = set(sources.data["sst2_cells"].get(f"{optimizer}/prefix", {}).get("eps") or [])
        if grid and not values <= grid:
            outside.append(f"{optimizer} ({_numbers(values)}; its sweep {_numbers(grid)})")
    text = "; ".join(f"{o} {_numbers(v)}" for o, v in sorted(by_optimizer.items()))
    status = ("outside the reference sweep for " + ", ".join(outside) + ": " + row["differs"]
              if outside else "inside every optimizer's reference sweep")
    return f"prefix: {text}", status


@probe("run-eps")
def _run_eps(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    entry = registry.entry("zo-sgd")
    text = ", ".join(f"{_number(entry.run_defaults(s)['eps'])} {s}" for s in scheme_keys())
    library = _number(entry.accepted()["eps"].default)
    return (f"{text} (`OptimizerEntry.run_defaults`, written into `config.yaml`); "
            f"`create_optimizer` keeps {library}"), row["status"]


def _shared_option(name: str):
    (option,) = [o for o in ZO_OPTIONS if o.name == name]
    return option


@probe("zo-default")
def _zo_default(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    option = _shared_option(row["option"])
    used = set().union(*(sources.paper_values(o, option.name)
                         for o in registry.names(zeroth_order=True)
                         if option.name in registry.entry(o).accepted()))
    text = f"`{option.name}` default {_number(option.default)}"
    if option.choices:
        text += f" (choices: {', '.join(option.choices)})"
    text += f"; `paper` uses {', '.join(map(_number, sorted(used, key=str)))}"
    return text, _verdict(used == {row["expect"]}, row)


@probe("distribution")
def _distribution(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    option = _shared_option("distribution")
    text = (f"`distribution` choices: {', '.join(option.choices)} (default "
            f"{option.default}: the noise table on CPU, Gaussian on CUDA)")
    if "mezo" in option.choices:
        return text, row["with_mezo"]
    return text, row["status"]


@probe("zo-update")
def _zo_update(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    """The optimizer's own options that choose its rule (any option with choices)."""
    entry = registry.entry(row["optimizer"])
    forms = [o for o in entry.options if o.choices]
    if not forms:
        return row["only"], row["differs"]
    parts, same = [], True
    for option in forms:
        used = sources.paper_values(row["optimizer"], option.name)
        parts.append(f"`{option.name}` ∈ {{{', '.join(option.choices)}}} (default "
                     f"{option.default}); `paper` uses {', '.join(sorted(map(str, used)))}")
        if option.name in row.get("expect", {}):
            same = same and used == {row["expect"][option.name]}
    return "; ".join(parts), _verdict(same, row)


@probe("momentum")
def _momentum(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    default = registry.entry("zo-sgd-mmt").accepted()["momentum"].default
    used = sources.paper_values("zo-sgd-mmt", "momentum")
    text = f"default {_number(default)}; `paper` {_numbers(used)}"
    return text, _verdict(used == {row["expect"]}, row)


@probe("task-loss")
def _task_loss(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    losses = {task: TASKS[task].loss for task in row["tasks"]}
    text = ", ".join(f"{task}: `{loss}`" for task, loss in losses.items())
    return f"task catalog's paper loss: {text}", _verdict(
        set(losses.values()) == {row["expect"]}, row)


@probe("data-seed")
def _data_seed(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    default = RunConfig().task.data_seed
    seeds = {r.config["task"].get("data_seed", default) for r in sources.paper_runs}
    text = (f"`task.data_seed` (default {default}; `paper` {_numbers(seeds)}) samples the "
            "splits; `train.seed` drives batch order, adapter init and directions")
    return text, _verdict(seeds == {row["expect"]}, row)


@probe("template-version")
def _template_version(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    default = RunConfig().task.template_version
    used = {r.config["task"].get("template_version", default) for r in sources.paper_runs}
    text = f"`task.template_version` default {default}; `paper` {', '.join(sorted(used))}"
    return text, _verdict(used == {row["expect"]}, row)


@probe("tuning")
def _tuning(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    values = {key: {r.config["tuning"].get(key) for r in sources.paper_runs}
              for key in row["keys"]}
    text = ", ".join(f"`{k}` {', '.join(map(str, sorted(v, key=str)))}"
                     for k, v in values.items())
    same = all(v == {row["expect"][k]} for k, v in values.items() if k in row["expect"])
    return f"{text}; {row['rule']}", _verdict(same, row)


@probe("prefix-init")
def _prefix_init(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    option = get_scheme("prefix").option("prefix_init")
    default = option.default
    used = {r.config["tuning"].get("prefix_init", default) for r in sources.paper_runs}
    rule = "real for causal LMs, random for masked ones" if default is None else default
    tokens = {r.config["tuning"]["prefix_tokens"] for r in sources.paper_runs}
    text = (f"`tuning.prefix_init` ∈ {{{', '.join(option.choices)}}}, default {rule}; "
            f"`prefix_tokens` {_numbers(tokens)}; real tokens at positions 0…T−1 "
            "(`tuning.positions_as_trained`)")
    same = used == {None} or used == {"real"}
    return text, _verdict(same, row)


@probe("fo-clip")
def _fo_clip(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    values = {registry.entry(n).run_defaults("full").get("max_grad_norm")
              for n in registry.names(zeroth_order=False)}
    library = {registry.entry(n).accepted()["max_grad_norm"].default
               for n in registry.names(zeroth_order=False)}
    text = (f"`max_grad_norm` {_numbers(values)} for first-order runs (a run default; the "
            f"library's default is {', '.join(map(str, library))}, as torch.optim's)")
    return text, _verdict(values == {row["expect"]}, row)


@probe("blocks")
def _blocks(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    (run,) = sources.paper_cell(row["cell"], row["variant"])
    level, mode = run.config["optimizer"]["block_level"], run.config["optimizer"]["block_mode"]
    counts = sources.block_counts
    default = partition.__defaults__[0]
    text = (f"`paper`'s block-wise run: `block_level: {level}` ({counts[level]} blocks on a "
            f"24-layer OPT), `block_mode: {mode}`; the library's default level is {default} "
            f"({counts[default]}); `layer` gives the paper text's count "
            f"({counts['layer']}); each block's seed is `mix_seed(step seed, b)`")
    same = counts[level] == row["expect_blocks"] and mode == row["expect_mode"]
    return text, _verdict(same, row)


# Section 4: the ZO frontier, with the registry's values for the rows that name one ------------


def _schemes_on(entry: registry.OptimizerEntry, row: dict[str, Any]) -> str:
    on = [s for s in scheme_keys() if entry.run_defaults(s).get(row["option"])]
    return ", ".join(on) or "none"


def _accepts(entry: registry.OptimizerEntry, row: dict[str, Any]) -> str:
    option = entry.accepted().get(row["option"])
    return "not offered" if option is None else f"offered (default {_number(option.default)})"


def _state_init(entry: registry.OptimizerEntry, row: dict[str, Any]) -> str:
    init = entry.strategy(**row.get("options", {})).state_init
    return ", ".join(f"{name} = {_number(value)}" for name, value in init.items()) or "none"


FRONTIER_MEASURES: dict[str, Callable[[registry.OptimizerEntry, dict[str, Any]], Any]] = {
    "default": lambda entry, row: entry.accepted()[row["option"]].default,
    "forward-passes": lambda entry, row: entry.forward_passes(**row.get("options", {})),
    "state-tensors": lambda entry, row: entry.state_tensors(**row.get("options", {})),
    "state-init": _state_init,
    "schemes-on": _schemes_on,
    "accepts": _accepts,
}


@probe("frontier")
def _frontier(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    """A frontier method's value from its registry entry (``measure``: an option's default,
    forward passes, state tensors, ...) in ``text``; the status compares it with the
    reference's ``expect``, or is the row's own where the reference has no comparable value."""
    entry = registry.entry(row["optimizer"])
    options = row.get("options", {})
    value = FRONTIER_MEASURES[row["measure"]](entry, row)
    text = row["text"].format(
        value=_number(value),
        passes=_number(entry.forward_passes(**options)),
        state=entry.state_tensors(**options),
    )
    if "expect" not in row:
        return text, row["status"]
    return text, _verdict(value == row["expect"], row)


def resolved(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    """A data row's zotune column and status: as written, or its probe's."""
    zotune, status = row["zotune"], row.get("status", "")
    if isinstance(zotune, dict):
        return PROBES[zotune["code"]](sources, {**zotune, "status": status})
    return zotune, status


def settings_rows(sources: Sources) -> list[str]:
    rows = [
        "| setting | ZO-LLM (and MeZO) value | where it comes from | zotune `paper` suite / "
        "library | status |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in sources.data["settings"]:
        zotune, status = resolved(sources, row)
        rows.append(f"| {row['setting']} | {row['reference']} | {row['where']} | {zotune} "
                    f"| {status} |")
    return rows


@probe("frontier-suite")
def _frontier_suite(sources: Sources, row: dict[str, Any]) -> tuple[str, str]:
    """What the `cpu-frontier` suite runs of an optimizer, per scheme: its learning rates,
    steps × batch, and the options it sets away from the registry's defaults."""
    accepted = registry.entry(row["optimizer"]).accepted()
    cells: dict[str, list] = {}
    for run in sources.frontier_runs:
        if run.cell.optimizer == row["optimizer"]:
            cells.setdefault(run.cell.scheme, []).append(run)
    parts = []
    for scheme, runs in cells.items():
        lrs = {r.config["optimizer"]["lr"] for r in runs}
        budgets = {(r.config["train"]["steps"], r.config["train"]["batch_size"]) for r in runs}
        moved = sorted({
            f"`{name}` {_number(value)}"
            for r in runs for name, value in r.config["optimizer"].items()
            if name in accepted and name not in ("lr", "eps") and value != accepted[name].default
        })
        budget = ", ".join(f"{s} × {b}" for s, b in sorted(budgets))
        parts.append(f"{scheme}: lr {_numbers(lrs)}, {budget}"
                     + (f", {', '.join(moved)}" if moved else ""))
    if not parts:
        return f"not in the `{FRONTIER_SUITE}` suite", row["status"]
    return (f"`{FRONTIER_SUITE}` (SmolLM2-135M, SST-2, CPU scale): {'; '.join(parts)}; the "
            "other options at the defaults above"), row["status"]


def frontier_rows(sources: Sources) -> list[str]:
    """One table, a method per row group: the authors' code beside zotune's behaviour."""
    rows = ["| method | reference | where (repo@commit file:line) | zotune | agree |",
            "| --- | --- | --- | --- | --- |"]
    for row in sources.data["frontier"]:
        zotune, status = resolved(sources, row)
        rows.append(f"| {row['method']} | {row['reference']} | {row['where']} | {zotune} "
                    f"| {status} |")
    return rows


def registry_rows(sources: Sources) -> list[str]:
    """The options that choose a rule, a stream or a partition, from the registry: the shared
    ZO options once, then each optimizer's own."""
    rows = ["| optimizer | option | default | choices | `paper` uses |",
            "| --- | --- | --- | --- | --- |"]
    zeroth = registry.names(zeroth_order=True)
    for option in ZO_OPTIONS:
        if not option.choices:
            continue
        takers = [n for n in zeroth if option.name in registry.entry(n).accepted()]
        used = set().union(*(sources.paper_values(n, option.name) for n in takers))
        rows.append(f"| every ZO optimizer | `{option.name}` | {option.default} | "
                    f"{', '.join(option.choices)} | {', '.join(sorted(map(str, used)))} |")
    for name in registry.names():
        for option in registry.entry(name).options:
            if not option.choices:
                continue
            used = sources.paper_values(name, option.name)
            rows.append(f"| {name} | `{option.name}` | {option.default} | "
                        f"{', '.join(option.choices)} | {', '.join(sorted(map(str, used)))} |")
    return rows


def render(sources: Sources | None = None) -> str:
    sources = sources or Sources.load()
    data = sources.data
    parts = [
        data["intro"].rstrip(),
        "",
        "## 1. The SST-2 / OPT-1.3B grid, cell by cell",
        "",
        data["sst2_intro"].rstrip(),
        "",
        *sst2_rows(sources),
        "",
        data["sst2_after"].rstrip(),
        "",
        "## 2. Settings shared by the cells",
        "",
        *settings_rows(sources),
        "",
        "### Options that choose a rule, per optimizer (from the registry)",
        "",
        data["registry_intro"].rstrip(),
        "",
        *registry_rows(sources),
        "",
        data["copa_winogrande"].rstrip(),
        "",
        data["unsettled"].rstrip(),
        "",
        data["frontier_intro"].rstrip(),
        "",
        *frontier_rows(sources),
        "",
    ]
    return "\n".join(parts)


def first_difference(current: str, page: str) -> int | None:
    """The first line number where ``current`` differs from ``page`` (None: equal)."""
    pairs = itertools.zip_longest(current.splitlines(), page.splitlines())
    for number, (have, want) in enumerate(pairs, 1):
        if have != want:
            return number
    return None if current == page else len(page.splitlines()) + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zotune.bench.fidelity",
        description="Write docs/results/fidelity.md from the reference readings and the code.",
    )
    parser.add_argument("--out", type=Path, required=True, help="the page to write or check")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if --out differs from what the code gives")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        line = first_difference(current, page)
        if line is None:
            return 0
        print(f"{args.out}:{line}: stale; regenerate with "
              f"python -m zotune.bench.fidelity --out {args.out}", file=sys.stderr)
        return 1
    args.out.write_text(page, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
