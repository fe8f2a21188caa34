"""Benchmark suites: a YAML grid expanded into runs, each with a stable id.

A suite file::

    name: smoke                          # optional; the file's stem otherwise
    description: two optimizers × two schemes, seconds in total
    base:                                # a partial RunConfig applied to every run
      model: {name: random:tiny-llama}
      task: {num_train: 16, num_val: 8, num_test: 8}
      train: {steps: 2, batch_size: 4, eval_every: 1}
    grid:                                # cells = the product of these lists
      model: [random:tiny-llama]         # model.name   (optional: base's value)
      task: [sst2]                       # task.name    (optional)
      tuning: [full, lora]               # tuning.scheme (optional)
      optimizer: [zo-sgd, fo-sgd]        # optimizer.name (optional)
      variant:                           # optional: named partial configs, one cell each
        dense: {}
        sparse-0.2: {optimizer: {sparsity: 0.2}}
    overrides:                           # partial RunConfigs for the cells a selector picks
      fo-sgd: {train: {steps: 1}}
    sweep:                               # hyperparameter grids; a cell's runs = their product
      default: {lr: [1.0e-3]}
      zo-sgd: {lr: [1.0e-3, 1.0e-4], eps: [1.0e-3]}
      zo-sgd/lora: {lr: [1.0e-2]}        # replaces zo-sgd's lr list for LoRA; keeps its eps
    seeds: [0, 1]                        # or per cell: {default: [0], zo-sgd/lora: [0, 1, 2]}
    confirm_seeds: [1, 2]                # optional: more seeds at each cell's chosen setting only
    resources:                           # what a run asks Ray for (``zotune bench --ray``)
      default: {cpus: 2}                 # default: 1 CPU; 1 GPU when model.device is cuda
      fo-sgd: {gpus: 1}

``seeds`` is a list for every cell, or a selector table of lists (the most specific match
wins; cells no entry matches run ``base``'s ``train.seed``): a study whose differences are
within a few points runs three seeds while the rest of the suite runs one.

``confirm_seeds`` (a list, or a selector table of lists like ``seeds``) are seeds that run
only at each cell's chosen setting: once every run of a cell's sweep (its ``seeds`` at every
setting) is recorded, the setting chosen on validation (:mod:`zotune.bench.selection`) runs
these seeds too, so a cell gets three seeds at the rate it would be reported at without three
seeds of every rate tried. The choice rests on the sweep's seeds alone, so a confirming seed
cannot change it; the cell's figures are over all the chosen setting's seeds. The runner
starts confirming runs as choices are made (:mod:`zotune.bench.runner`).

``grid`` may also be a list of such mappings: the suite's cells are their union. That is how
a study sits beside a main table: its own grid, whose ``variant`` axis names the settings it
compares (a variant's partial config is applied last, after ``overrides``, so it wins). A cell
is (model, task, scheme, optimizer, variant); cells of the main table have no variant. Two
cells may hold the same run (the same resolved config, e.g. a study's dense baseline shared by
two studies): it runs once and counts for both; the same config twice in one cell is an error.

Selectors (the keys of ``overrides``, ``sweep`` and ``resources``) are ``default`` or grid
values (variant names included) joined by ``/`` (``fo-adam``, ``lora``, ``zo-sgd/lora``,
``facebook/opt-1.3b/prefix``); a cell is picked when it has every named value. Matching
entries apply from general to specific (fewer parts first, then file order), so the most
specific one wins. Sweep keys are
optimizer options (``lr``) or any dotted config key (``tuning.lora_r``); a scalar is a
one-value list. ``resources`` entries merge key by key the same way; they say where a run
fits, not what it computes, so they are not part of its id, and the local runner ignores them
(it divides the machine's cores by ``--jobs``).

Each run's config is built with :func:`zotune.config.build_config`, so a typo anywhere fails
before anything runs, naming the key. A run's id hashes its full resolved config (not where
its outputs or data live), so the same suite run again maps to the same rows.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import os
import re
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, RunConfig, build_config, parse_override, set_dotted

SUITE_KEYS = (
    "name", "description", "base", "grid", "overrides", "sweep", "seeds", "confirm_seeds",
    "resources",
)
VARIANT_AXIS = "variant"
RESOURCE_KEYS = ("cpus", "gpus")
# Grid axis → the config key it sets.
GRID_AXES = {
    "model": "model.name",
    "task": "task.name",
    "tuning": "tuning.scheme",
    "optimizer": "optimizer.name",
}
DEFAULT_SELECTOR = "default"
# A suite's name names its store (results/<name>): a plain name, never a path.
SUITE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}")
# Config keys a run writes to: in a suite file (data, perhaps someone else's) a relative path
# without "..", which the worker resolves inside the run's folder in the store; a path given
# on the command line (the user's own) is taken as it stands, from the working folder.
WRITTEN_PATH_KEYS = ("train.save_model",)
# Config keys that say where a run writes or reads, how it reports progress, or how its
# arithmetic is executed, not what it computes: they are left out of the run id. The runner
# sets the first kind; the others (EXECUTION_KEYS) stay as the suite or the command line
# gives them. A compiled forward or fp32 products of bf16 weights compute the same function
# with sums in another order, as another CPU does: `zotune bench S train.compile=true` runs
# the same runs faster and resumes a store made without it.
PLACEMENT_KEYS = (
    ("train", "output_dir", None),
    ("train", "resume", False),
    ("train", "overwrite", False),
    ("train", "progress", False),
    ("task", "data_dir", None),
    ("train", "compile", False),
    ("model", "matmul", "auto"),
)
EXECUTION_KEYS = {("task", "data_dir"), ("train", "compile"), ("model", "matmul")}


class SuiteError(ConfigError):
    """A suite file or one of its values is not valid."""


# Rows of the optimizer axis that evaluate the model without training it (MeZO's
# large_models/run.py --trainer none), each with the demonstrations it puts in context:
# zero-shot none, icl 32 (MeZO large_models/README.md: "For ICL, we use 32 demonstrations")
# unless the suite sets task.demos. The report puts them above the fine-tuned rows.
BASELINES = {"zero-shot": 0, "icl": 32}
# What a baseline row's config names as its optimizer: it is built, never stepped.
BASELINE_OPTIMIZER = "zo-sgd"

@dataclass(frozen=True)
class Cell:
    """One cell of the results: a model, a task, a tuning scheme, an optimizer and, in a study,
    the variant (a named setting; ``""`` in the main table)."""

    model: str
    task: str
    scheme: str
    optimizer: str
    variant: str = ""

    def axes(self) -> tuple[str, str, str, str]:
        """The values of the grid axes, in :data:`GRID_AXES` order."""
        return (self.model, self.task, self.scheme, self.optimizer)

    def values(self) -> tuple[str, ...]:
        """The values a selector can name (the variant only when there is one)."""
        return (*self.axes(), self.variant) if self.variant else self.axes()

    def label(self) -> str:
        variant = f" [{self.variant}]" if self.variant else ""
        return f"{self.optimizer}/{self.scheme}{variant} on {self.task} ({self.model})"


@dataclass(frozen=True)
class Resources:
    """What one run asks a Ray cluster for: CPUs (its torch threads) and GPUs (may be 0.5)."""

    cpus: float = 1
    gpus: float = 0

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))

    def label(self) -> str:
        return f"{self.cpus:g} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "")


@dataclass
class RunSpec:
    """One run of a suite: a cell, its swept hyperparameters, a seed, the full config."""

    id: str
    cell: Cell
    hparams: dict[str, Any]  # dotted config key → value, only the keys the sweep sets
    seed: int
    config: dict[str, Any]  # RunConfig.to_dict() with the placement keys at their neutral values
    resources: Resources = Resources()
    # A confirming run (``confirm_seeds``): it runs only if its setting is its cell's choice.
    confirm: bool = False

    def hparams_label(self) -> str:
        return hparams_label(self.hparams)

    def label(self) -> str:
        variant = f" [{self.cell.variant}]" if self.cell.variant else ""
        return (
            f"{self.cell.optimizer}/{self.cell.scheme}{variant} {self.hparams_label()} "
            f"seed {self.seed}"
        )


@dataclass
class Suite:
    name: str
    description: str
    source: str  # the built-in name or the path it was loaded from
    runs: list[RunSpec]
    overrides: list[str]  # ``section.key=value`` items from the command line, applied last

    @property
    def cells(self) -> list[Cell]:
        return list(dict.fromkeys(run.cell for run in self.runs))

    @property
    def distinct_runs(self) -> list[RunSpec]:
        """Each run once, as its first cell holds it (a run two cells share executes once)."""
        first: dict[str, RunSpec] = {}
        for run in self.runs:
            first.setdefault(run.id, run)
        return list(first.values())

    @property
    def run_ids(self) -> list[str]:
        return [run.id for run in self.distinct_runs]

    def select(self, selectors: list[str], flag: str = "--only") -> list[RunSpec]:
        """The runs whose cell matches any selector (``zo-sgd``, ``lora``, ``zo-sgd/lora``);
        ``flag`` names the option the selectors came from, in errors."""
        known = list(dict.fromkeys(value for cell in self.cells for value in cell.values()))
        chosen: set[str] = set()
        for selector in selectors:
            parts = _split_selector(selector, known)
            if parts is None:
                raise SuiteError(
                    f"{flag}: selector {selector!r} names nothing in suite {self.name} "
                    f"(grid values: {', '.join(known)})"
                )
            matched = [run for run in self.runs if _selects(parts, run.cell.values())]
            if not matched:
                raise SuiteError(f"{flag}: selector {selector!r} matches no cell of {self.name}")
            chosen.update(run.id for run in matched)
        return [run for run in self.runs if run.id in chosen]

    def run_at(self, selector: str, lr: float, flag: str = "--cell") -> RunSpec:
        """The first run, among those of the cells ``selector`` picks, at learning rate ``lr``
        (for scripts that measure one run of a suite)."""
        for run in self.select([selector], flag):
            if run.hparams.get("optimizer.lr") == lr:
                return run
        raise SuiteError(f"suite {self.name} has no {selector} run at lr {lr:g}")

    def command(self, results_dir: str | Path | None = None) -> str:
        """The ``zotune bench`` command that runs (or resumes) this suite."""
        words = ["zotune", "bench", self.source, *self.overrides]
        if results_dir is not None:
            words += ["--results", str(results_dir)]
        return shlex.join(words)


def hparam_name(key: str) -> str:
    """``"optimizer.lr"`` → ``"lr"``: a swept key as tables show it (the optimizer section
    goes unnamed)."""
    return key.removeprefix("optimizer.")


def hparams_label(hparams: dict[str, Any]) -> str:
    """``{"optimizer.lr": 1e-05}`` → ``"lr=1e-05"``."""
    if not hparams:
        return "(defaults)"
    parts = []
    for key, value in hparams.items():
        short = hparam_name(key)
        parts.append(f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}")
    return ", ".join(parts)


def run_id(config: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of what the config sets apart from
    zotune's defaults (placement removed).

    Leaving keys at their defaults out keeps an id stable when a release adds a config key
    (whose default must keep the behaviour from before it existed), so a store made by an
    older zotune resumes in a newer one. What would break that is changing a default's value:
    ``tests/data/config-defaults.json`` pins them (:func:`config_defaults`).
    """
    defaults = _defaults()  # read, never changed: no copy per run id
    data = {}
    for section, values in config.items():
        known = defaults.get(section, {})
        data[section] = {
            key: value for key, value in values.items()
            if key not in known or not _same_value(value, known[key])
        }
    for section, key, _ in PLACEMENT_KEYS:
        data.get(section, {}).pop(key, None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _defaults() -> dict[str, dict[str, Any]]:
    # A registered tuning scheme adds its options' keys, at their defaults, to every config.
    from ..tuning.registry import all_options

    return _defaults_with(tuple(all_options()))


@functools.cache
def _defaults_with(scheme_options: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return build_config({}).to_dict()


def config_defaults() -> dict[str, dict[str, Any]]:
    """Every config key's default, by section: what a run id leaves out."""
    return copy.deepcopy(_defaults())


def _same_value(value: Any, default: Any) -> bool:
    return type(value) is type(default) and value == default


def builtin_suites() -> dict[str, str]:
    """Built-in suite name → its YAML text (package data in ``zotune/bench/suites``)."""
    folder = resources.files("zotune.bench") / "suites"
    entries = {
        entry.name.removesuffix(".yaml"): entry
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }
    return {name: entries[name].read_text() for name in sorted(entries)}


def load_suite(name_or_path: str | Path, overrides: list[str] | None = None) -> Suite:
    """A built-in suite by name (``"cpu"``) or a suite YAML file, expanded and validated.

    ``overrides`` are ``section.key=value`` items applied to every run, after the suite's own
    values (``task.data_dir=...``, ``model.device=cuda``).
    """
    source = str(name_or_path)
    builtins = builtin_suites()
    path = Path(source)
    if path.is_file():
        text, default_name = path.read_text(), path.stem
    elif source in builtins:
        text, default_name = builtins[source], source
    elif path.suffix in (".yaml", ".yml"):
        raise SuiteError(f"suite file not found: {source}")
    else:
        raise SuiteError(
            f"unknown suite {source!r} (built-in: {', '.join(builtins)}; or a path to a .yaml file)"
        )
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise SuiteError(f"{source}: not valid YAML ({error})") from None
    return expand_suite(data, source=source, default_name=default_name, overrides=overrides)


def expand_suite(
    data: dict[str, Any],
    *,
    source: str = "<suite>",
    default_name: str = "suite",
    overrides: list[str] | None = None,
) -> Suite:
    """Validate a parsed suite and expand it into runs."""
    if not isinstance(data, dict):
        raise SuiteError(f"{source}: a suite must be a mapping, got {type(data).__name__}")
    unknown = [key for key in data if key not in SUITE_KEYS]
    if unknown:
        raise SuiteError(
            f"{source}: unknown suite key {unknown[0]!r} (keys: {', '.join(SUITE_KEYS)})"
        )
    name = _string(data.get("name", default_name), "name")
    if not SUITE_NAME.fullmatch(name):
        raise SuiteError(
            f"{source}: name {name!r} is not a plain name (letters, digits, '_', '.', '+', '-'; "
            f"not starting with '.'): it names the store, results/<name>"
        )
    description = _string(data.get("description", ""), "description")
    base = _mapping(data.get("base"), "base")
    _validated(base, "base")
    grids = _grids(data.get("grid"), base)
    cells = [
        (Cell(*values, variant=variant), partial)
        for axes, variants in grids
        for values in itertools.product(*axes.values())
        for variant, partial in (variants or {"": {}}).items()
    ]
    all_values = [cell.values() for cell, _ in cells]
    cell_overrides = _selector_table(data.get("overrides"), "overrides", all_values)
    for selector, partial in cell_overrides:
        _validated(_mapping(partial, f"overrides {selector!r}"), f"overrides {selector!r}")
    sweeps = _selector_table(data.get("sweep"), "sweep", all_values)
    for selector, grid in sweeps:
        _check_sweep(selector, grid)
    seed_table = _seed_table(data.get("seeds"), base, all_values)
    confirm_table = _confirm_seed_table(data.get("confirm_seeds"), all_values)
    resource_table = _selector_table(data.get("resources"), "resources", all_values)
    for selector, entry in resource_table:
        _check_resources(selector, entry)
    command_overrides = [parse_override(item) for item in overrides or []]

    runs: list[RunSpec] = []
    seen: dict[tuple[str, Cell], RunSpec] = {}  # a config may repeat across cells, not within
    for cell, variant_partial in cells:
        cell_base = copy.deepcopy(base)
        for axis, value in zip(GRID_AXES, cell.axes(), strict=True):
            set_dotted(cell_base, GRID_AXES[axis], value)
        for _, partial in _matching(cell_overrides, cell):
            _deep_merge(cell_base, partial)
        _deep_merge(cell_base, variant_partial)
        grid = _cell_sweep(sweeps, cell)
        if cell.optimizer in BASELINES:
            _as_baseline(cell_base, cell.optimizer)
            grid = {}  # nothing trains, so no hyperparameter has an effect
        seeds = _matching(seed_table, cell)[-1][1]
        confirming = _matching(confirm_table, cell)[-1][1] if confirm_table else []
        repeated = sorted(set(seeds) & set(confirming))
        if repeated:
            raise SuiteError(
                f"{cell.label()}: seed {repeated[0]} is both a sweep seed and a confirming "
                f"seed (confirm_seeds add seeds at the chosen setting)"
            )
        for combination in itertools.product(*grid.values()):
            hparams = dict(zip(grid, combination, strict=True))
            for seed, confirm in [*((s, False) for s in seeds), *((s, True) for s in confirming)]:
                run = _resolve(cell, cell_base, hparams, seed, command_overrides)
                run.confirm = confirm
                run.resources = _run_resources(resource_table, cell, run.config)
                twin = seen.setdefault((run.id, run.cell), run)
                if twin is not run:
                    raise SuiteError(
                        f"{run.cell.label()}: runs {twin.label()!r} and {run.label()!r} "
                        f"have the same config (a sweep value repeats, or an override masks "
                        f"the sweep)"
                    )
                runs.append(run)
    if command_overrides:  # an override may change a grid axis, e.g. model.name
        columns = zip(*(run.cell.axes() for run in runs), strict=True)
        resolved_axes = zip(GRID_AXES, columns, strict=True)
        _check_names({axis: list(dict.fromkeys(values)) for axis, values in resolved_axes})
    _check_options(runs)
    return Suite(name, description, source, runs, list(overrides or []))


def _as_baseline(cell_base: dict[str, Any], row: str) -> None:
    """A baseline row's config: evaluated without a step (the optimizer is never stepped);
    ``icl`` puts ``task.demos`` demonstrations in context, 32 unless the suite sets them."""
    set_dotted(cell_base, "optimizer.name", BASELINE_OPTIMIZER)
    set_dotted(cell_base, "train.steps", 0)
    demos = (cell_base.get("task") or {}).get("demos")
    set_dotted(cell_base, "task.demos", demos or BASELINES[row])


def _resolve(
    cell: Cell,
    cell_base: dict[str, Any],
    hparams: dict[str, Any],
    seed: int,
    command_overrides: list[tuple[str, Any]],
) -> RunSpec:
    data = copy.deepcopy(cell_base)
    for key, value in hparams.items():
        set_dotted(data, key, value)
    set_dotted(data, "train.seed", seed)
    _check_written_paths(data, cell)
    for key, value in command_overrides:
        if key in WRITTEN_PATH_KEYS and isinstance(value, str):
            value = os.path.abspath(os.path.expanduser(value))
        set_dotted(data, key, value)
    try:
        config = build_config(data).with_run_defaults()
    except ConfigError as error:
        raise SuiteError(f"{cell.label()}: {error}") from None
    resolved = config.to_dict()
    for section, key, neutral in PLACEMENT_KEYS:
        if (section, key) not in EXECUTION_KEYS:  # those stay in the config, out of the id
            resolved[section][key] = neutral
    # The cell comes from the resolved config, so a command-line override shows up in it.
    resolved_cell = Cell(
        model=resolved["model"]["name"],
        task=resolved["task"]["name"],
        scheme=resolved["tuning"]["scheme"],
        optimizer=cell.optimizer if cell.optimizer in BASELINES else resolved["optimizer"]["name"],
        variant=cell.variant,
    )
    # A sweep value given as text ("1e-5": YAML 1.1 reads it so) is shown as the number it is.
    typed = {
        key: getattr(getattr(config, key.split(".")[0]), key.split(".")[1])
        if isinstance(value, str) else value
        for key, value in hparams.items()
    }
    return RunSpec(run_id(resolved), resolved_cell, typed, seed, resolved)


def _check_written_paths(data: dict[str, Any], cell: Cell) -> None:
    """Refuse a path a suite file gives a run to write to that could leave the run folder."""
    for key in WRITTEN_PATH_KEYS:
        section, name = key.split(".")
        value = (data.get(section) or {}).get(name)
        if not isinstance(value, str):
            continue
        path = Path(value)
        if path.is_absolute() or value.startswith("~") or ".." in path.parts:
            raise SuiteError(
                f"{cell.label()}: {key} {value!r}: a suite's paths stay inside the run's "
                f"folder in the store (a relative path without '..'); give a path outside it "
                f"on the command line ({key}=...)"
            )


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise SuiteError(f"{key}: expected a string, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SuiteError(f"{where}: expected a mapping, got {value!r}")
    return value


def _validated(partial: dict[str, Any], where: str) -> RunConfig:
    try:
        return build_config(copy.deepcopy(partial))
    except ConfigError as error:
        raise SuiteError(f"{where}: {error}") from None


def _grids(
    value: Any, base: dict[str, Any]
) -> list[tuple[dict[str, list[str]], dict[str, dict[str, Any]]]]:
    """Each grid's axes and its variants (name → partial config; empty without a variant axis)."""
    if isinstance(value, list):
        if not value:
            raise SuiteError("grid: expected a mapping or a non-empty list of mappings, got []")
        items = [(_mapping(item, f"grid[{i}]"), f"grid[{i}]") for i, item in enumerate(value)]
    else:
        items = [(_mapping(value, "grid"), "grid")]
    grids = []
    for grid, where in items:
        axes = _grid_axes({k: v for k, v in grid.items() if k != VARIANT_AXIS}, base, where)
        _check_names(axes)
        grids.append((axes, _variants(grid.get(VARIANT_AXIS), where, axes)))
    return grids


def _variants(
    value: Any, where: str, axes: dict[str, list[str]]
) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    where = f"{where}.{VARIANT_AXIS}"
    if not isinstance(value, dict) or not value:
        raise SuiteError(f"{where}: expected a mapping of names to partial configs, got {value!r}")
    taken = {v for values in axes.values() for v in values}
    for name, partial in value.items():
        if not isinstance(name, str) or not name or name in taken or name == DEFAULT_SELECTOR:
            raise SuiteError(
                f"{where}: {name!r} cannot name a variant (a non-empty string that is not "
                f"{DEFAULT_SELECTOR!r} or another grid value)"
            )
        _validated(_mapping(partial, f"{where}.{name}"), f"{where}.{name}")
    return value


def _grid_axes(
    grid: dict[str, Any], base: dict[str, Any], where: str = "grid"
) -> dict[str, list[str]]:
    """Axis → its values; an axis the grid leaves out takes base's (or the default) value."""
    unknown = [key for key in grid if key not in GRID_AXES]
    if unknown:
        axes = ", ".join([*GRID_AXES, VARIANT_AXIS])
        raise SuiteError(f"{where}: unknown axis {unknown[0]!r} (axes: {axes})")
    defaults = build_config(copy.deepcopy(base)).to_dict()
    axes: dict[str, list[str]] = {}
    for axis, dotted in GRID_AXES.items():
        section, key = dotted.split(".")
        values = grid.get(axis, [defaults[section][key] or _default_value(axis)])
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not values:
            raise SuiteError(f"{where}.{axis}: expected a non-empty list of names, got {values!r}")
        for value in values:
            if not isinstance(value, str) or not value:
                raise SuiteError(f"{where}.{axis}: expected names, got {value!r}")
        repeated = [v for v in values if values.count(v) > 1]
        if repeated:
            raise SuiteError(f"{where}.{axis}: {repeated[0]!r} is listed twice")
        axes[axis] = values
    return axes


def _default_value(axis: str) -> str:
    """The value an unset axis takes: only model.name defaults to None (the embedded model)."""
    from ..models.embedded import EMBEDDED_MODEL

    if axis != "model":
        raise SuiteError(f"grid.{axis}: no value in the grid or in base")
    return EMBEDDED_MODEL


def _selector_table(
    table: Any, where: str, cells: list[tuple[str, ...]]
) -> list[tuple[str, dict[str, Any]]]:
    """``[(selector, entry)]`` in the order they apply: general to specific, then file order.

    ``cells`` are the values of every cell of the suite.
    """
    table = _mapping(table, where)
    known = list(dict.fromkeys(value for values in cells for value in values))
    parsed = []
    for position, (selector, entry) in enumerate(table.items()):
        if not isinstance(selector, str):
            raise SuiteError(f"{where}: selector {selector!r} must be a string")
        if selector == DEFAULT_SELECTOR:
            parts: list[str] = []
        else:
            found = _split_selector(selector, known)
            if found is None:
                raise SuiteError(
                    f"{where}: selector {selector!r} names nothing in the grid "
                    f"(grid values: {', '.join(known)}; or {DEFAULT_SELECTOR!r})"
                )
            parts = found
        entry = _mapping(entry, f"{where} {selector!r}")
        parsed.append((len(parts), position, selector, parts, entry))
    for _, _, selector, parts, _ in parsed:
        if not any(_selects(parts, values) for values in cells):
            raise SuiteError(f"{where}: selector {selector!r} matches no cell of the grid")
    return [(selector, entry) for *_, selector, parts, entry in sorted(parsed)]


def _split_selector(selector: str, known: list[str]) -> list[str] | None:
    """``"facebook/opt-1.3b/lora"`` → ``["facebook/opt-1.3b", "lora"]`` (names may hold ``/``)."""
    if selector in known:
        return [selector]
    for value in sorted(known, key=len, reverse=True):
        if selector.startswith(value + "/"):
            rest = _split_selector(selector[len(value) + 1 :], known)
            if rest is not None:
                return [value, *rest]
    return None


def _selects(parts: list[str], values: tuple) -> bool:
    return all(part in values for part in parts)


def _matching(table: list[tuple[str, dict[str, Any]]], cell: Cell) -> list[tuple[str, dict]]:
    values = cell.values()
    return [
        (selector, entry)
        for selector, entry in table
        if selector == DEFAULT_SELECTOR
        or _selects(_split_selector(selector, list(values)) or [selector], values)
    ]


def _deep_merge(target: dict[str, Any], partial: dict[str, Any]) -> None:
    for key, value in partial.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _sweep_key(key: str) -> str:
    """``lr`` → ``optimizer.lr``; dotted keys stay as they are."""
    return key if "." in key else f"optimizer.{key}"


def _sweep_values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _check_sweep(selector: str, grid: dict[str, Any]) -> None:
    where = f"sweep {selector!r}"
    for key, value in grid.items():
        dotted = _sweep_key(str(key))
        if dotted in ("train.seed", *GRID_AXES.values()):
            raise SuiteError(
                f"{where}: {dotted} is set by the suite's seeds/grid, not by a sweep"
            )
        values = _sweep_values(value)
        if not values:
            raise SuiteError(f"{where}: {key} has an empty list of values")
        for item in values:
            data: dict[str, Any] = {}
            try:
                set_dotted(data, dotted, item)
                build_config(data)
            except ConfigError as error:
                raise SuiteError(f"{where}: {error}") from None


def _cell_sweep(sweeps: list[tuple[str, dict[str, Any]]], cell: Cell) -> dict[str, list[Any]]:
    """The cell's hyperparameter grid: matching sweep entries merged key by key."""
    grid: dict[str, list[Any]] = {}
    for _, entry in _matching(sweeps, cell):
        for key, value in entry.items():
            grid[_sweep_key(str(key))] = _sweep_values(value)
    return grid


def _check_resources(selector: str, entry: dict[str, Any]) -> None:
    where = f"resources {selector!r}"
    for key, value in entry.items():
        if key not in RESOURCE_KEYS:
            raise SuiteError(f"{where}: unknown key {key!r} (keys: {', '.join(RESOURCE_KEYS)})")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value < 0 or (key == "cpus" and value == 0):
            least = "a positive number" if key == "cpus" else "a number >= 0"
            raise SuiteError(f"{where}: {key} must be {least}, got {value!r}")


def _run_resources(
    table: list[tuple[str, dict[str, Any]]], cell: Cell, config: dict[str, Any]
) -> Resources:
    """The matching ``resources`` entries merged over the default (a GPU for a CUDA run)."""
    device = str(config["model"].get("device") or "")
    merged: dict[str, Any] = {"cpus": 1, "gpus": 1 if device.startswith("cuda") else 0}
    for _, entry in _matching(table, cell):
        merged.update(entry)
    return Resources(**merged)


def _seed_table(
    value: Any, base: dict[str, Any], cells: list[tuple[str, ...]]
) -> list[tuple[str, list[int]]]:
    """``[(selector, seeds)]`` in the order they apply, ``default`` first."""
    default = [build_config(copy.deepcopy(base)).train.seed]
    if not isinstance(value, dict):
        return [(DEFAULT_SELECTOR, default if value is None else _seeds(value, "seeds"))]
    table = _selector_table({k: {"seeds": v} for k, v in value.items()}, "seeds", cells)
    entries = [(sel, _seeds(entry["seeds"], f"seeds {sel!r}")) for sel, entry in table]
    if not entries or entries[0][0] != DEFAULT_SELECTOR:
        entries.insert(0, (DEFAULT_SELECTOR, default))
    return entries


def _confirm_seed_table(
    value: Any, cells: list[tuple[str, ...]]
) -> list[tuple[str, list[int]]]:
    """Like :func:`_seed_table` for ``confirm_seeds``; no entry (or ``[]``) confirms nothing."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [(DEFAULT_SELECTOR, _seeds(value, "confirm_seeds", allow_empty=True))]
    table = _selector_table({k: {"seeds": v} for k, v in value.items()}, "confirm_seeds", cells)
    entries = [
        (sel, _seeds(entry["seeds"], f"confirm_seeds {sel!r}", allow_empty=True))
        for sel, entry in table
    ]
    if not entries or entries[0][0] != DEFAULT_SELECTOR:
        entries.insert(0, (DEFAULT_SELECTOR, []))
    return entries


def _seeds(value: Any, where: str, allow_empty: bool = False) -> list[int]:
    seeds = value if isinstance(value, list) else [value]
    if not seeds and not allow_empty:
        raise SuiteError(f"{where}: expected a non-empty list of integers, got []")
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise SuiteError(f"{where}: expected non-negative integers, got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise SuiteError(f"{where}: a seed is listed twice in {seeds}")
    return seeds


def _check_names(axes: dict[str, list[str]]) -> None:
    """Every optimizer, scheme, task and random-model shape in the grid exists."""
    from ..models.random_shapes import SHAPES
    from ..optim.registry import names
    from ..tasks import list_tasks
    from ..tasks.taskfile import is_task_file
    from ..tuning.registry import scheme_keys

    known = {
        "optimizer": [*BASELINES, *names()],
        "tuning": list(scheme_keys()),
        "task": [*list_tasks(), *(t for t in axes["task"] if is_task_file(t))],
    }
    what = {"optimizer": "optimizer", "tuning": "scheme", "task": "task"}
    for axis, choices in known.items():
        for value in axes[axis]:
            if value not in choices:
                raise SuiteError(
                    f"grid.{axis}: unknown {what[axis]} {value!r} "
                    f"(choose from {', '.join(choices)})"
                )
    for model in axes["model"]:
        shape = model.removeprefix("random:")
        if model.startswith("random:") and shape not in SHAPES:
            raise SuiteError(
                f"grid.model: unknown random model shape {shape!r} "
                f"(choose from {', '.join(SHAPES)})"
            )


def _check_options(runs: list[RunSpec]) -> None:
    """Every optimizer option a run sets is one its optimizer takes, with a valid value."""
    for run in runs:
        try:
            config = build_config(copy.deepcopy(run.config))
            config.optimizer.resolved(seed=0)
        except ConfigError as error:
            raise SuiteError(
                f"{run.cell.label()}: {error} (set it in a sweep or override for the "
                "optimizers that take it)"
            ) from None
