"""Run configuration: typed sections, YAML files and dotted overrides.

A run is described by five sections. A YAML file holds any subset of them; ``key=value``
overrides (``optimizer.lr=1e-5``) are applied on top, values parsed as YAML scalars. Every
key is checked against the dataclasses, so a typo fails before anything runs, naming the
key::

    model:     {name: smollm2-135m, dtype: float32, device: cpu}
    task:      {name: sst2, num_train: 1000, num_val: 500, num_test: 1000}
    tuning:    {scheme: lora, lora_r: 8}
    optimizer: {name: zo-sgd, lr: 1.0e-4, eps: 1.0e-3}
    train:     {steps: 1000, batch_size: 16, eval_every: 100}
"""

from __future__ import annotations

import copy
import shlex
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from .optim.registry import ResolvedOptions


class ConfigError(ValueError):
    """A configuration key or value is not valid."""


def key(default: Any, help: str, *, flag: str | None = None, factory=None) -> Any:
    """A config key: its default, the help its command-line flag shows, and the flag's name
    when it is not ``--`` + the key with dashes (``--model`` for ``model.name``)."""
    metadata = {"help": help, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    name: str | None = key(
        None, 'HF hub id, local folder, "smollm2-135m" (the embedded default) or random:<shape>',
        flag="--model",
    )
    dtype: str = key(
        "float32", "weights dtype: float32, bfloat16 or float16 (half-precision weights take "
        "stochastically rounded ZO updates; see zotune.optim.stochastic_rounding)"
    )
    autocast: str | None = key(
        None, "half-precision compute over fp32 weights: bfloat16 or float16 (see "
        "zotune.models.mixed_precision)"
    )
    matmul: str = key(
        "auto", "matrix products of bf16/fp16 weights (or under autocast) on a CPU: native, "
        "float32 (from upcast operands) or auto (float32 where this CPU's half-precision GEMM "
        "is slower; see zotune.models.matmul)"
    )
    device: str = key("cpu", "device: cpu, cuda, cuda:1, ...")
    attn_implementation: str | None = key(
        None, "attention implementation (eager, sdpa); default: the model's, or what the "
        "optimizer needs"
    )
    # Spread layers over devices with accelerate: "auto", "balanced", "sequential" or a
    # {module: device} map (then `device` is not used); see zotune.models.placement.
    device_map: str | dict[str, Any] | None = key(
        None, "spread layers over devices with accelerate: auto, balanced or sequential"
    )


@dataclass
class TaskConfig:
    name: str = key(
        "sst2", "task name (zotune tasks lists them) or a task file (.yaml)", flag="--task"
    )
    data_dir: str | None = key(None, "task data folder (default: $ZOTUNE_DATA_DIR, else the hub)")
    template: bool = key(
        True, "raw inputs without the task-aligned prompt (the paper's alignment ablation)"
    )
    template_version: str = key(
        "reference", "prompt strings: reference (ZO-Bench's templates.py) or zotune-0.1"
    )
    num_train: int = key(1000, "training examples sampled")
    num_val: int | None = key(
        None, "validation examples (model selection); unset: the task's own (COPA, "
        "WinoGrande, CB 100; else 500)"
    )
    num_test: int = key(1000, "test examples")
    data_seed: int = key(
        0, "samples the splits, apart from the run seed (ZO-Bench's train_set_seed, 0 in its "
        "sweeps)"
    )
    loss: str | None = key(
        None, "training loss: ce (cross-entropy over candidates) or lm (LM loss on the "
        "correct candidate); unset: the task's paper loss (lm for COPA and WinoGrande, else ce)"
    )
    reduction: str = key("mean", "candidate score: mean or sum of token log-probs")
    max_length: int | None = key(None, "truncate inputs to this many tokens")
    max_new_tokens: int | None = key(
        None, "generation tasks: most answer tokens decoded; unset: the task's (50, MeZO's)"
    )
    demos: int = key(
        0, "in-context demonstrations from the training split before every evaluated "
        "example (MeZO's ICL baseline; 32 in its paper)"
    )
    calibrate: bool = key(
        False, "surface-form calibration of the candidate scores at evaluation (MeZO's --sfc)"
    )


def scheme_help() -> str:
    """The ``--tuning`` help: the registered schemes and what each trains."""
    from .tuning.registry import REGISTRY, scheme_keys

    return "tuning scheme: " + "; ".join(f"{k}: {REGISTRY[k].summary}" for k in scheme_keys())


@dataclass
class TuningConfig:
    """The tuning scheme by registry key and the values of the schemes' options.

    The option keys are the scheme registry's (:func:`zotune.tuning.registry.all_options`):
    every option any scheme declares is a key here, with the type, default and help it is
    declared with, and no second list. A key reads as its value, or its default when unset
    (``settings`` holds the values that differ from the default); in files and in
    :meth:`RunConfig.to_dict` every key sits beside ``scheme``::

        tuning: {scheme: lora, lora_r: 4, lora_alpha: 16, ...}
    """

    scheme: str = key("full", scheme_help, flag="--tuning")
    settings: dict[str, Any] = key(None, "", factory=dict)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "settings":
            raise AttributeError(name)
        if name in self.settings:
            return self.settings[name]
        from .tuning.registry import all_options

        declared = all_options()
        if name in declared:
            return declared[name].default
        raise AttributeError(f"TuningConfig has no key {name!r}")

    def as_flat_dict(self) -> dict[str, Any]:
        from .tuning.registry import all_options

        return {"scheme": self.scheme, **{name: getattr(self, name) for name in all_options()}}


def tuning_option_types() -> dict[str, Any]:
    """Every tuning scheme option's config type, from the registry's declarations."""
    from .tuning.registry import all_options

    return {name: option.kind | None if option.optional else option.kind
            for name, option in all_options().items()}


@dataclass
class OptimizerConfig:
    """The optimizer by registry key, its learning rate and schedule, and the options set.

    The option keys are the registry's (:func:`zotune.optim.registry.all_options`): every
    option any optimizer declares is a key here, with the type and help it is declared with,
    and no second list. Options left unset take the optimizer's default; a set one must be
    an option of the chosen optimizer (checked when the optimizer is built). In files and in
    :meth:`RunConfig.to_dict` the options sit beside ``name`` and ``lr``::

        optimizer: {name: zo-adam, lr: 1.0e-4, eps: 1.0e-3, betas: [0.9, 0.99]}
    """

    name: str = key("zo-sgd", "optimizer (registry key)", flag="--optimizer")
    lr: float = key(1e-6, "learning rate")
    schedule: str = key(
        "constant", "learning-rate schedule after warmup: constant, linear (to 0) or cosine (to 0)"
    )
    warmup_steps: int = key(0, "steps of linear warmup from 0 to lr before the schedule")
    settings: dict[str, Any] = key(None, "", factory=dict)

    def __getattr__(self, name: str) -> Any:
        # An option nobody set reads as None, like the other unset optional keys.
        if name.startswith("__") or name == "settings":
            raise AttributeError(name)
        if name in self.settings:
            return self.settings[name]
        if name in optimizer_option_types():
            return None
        raise AttributeError(f"OptimizerConfig has no key {name!r}")

    def options(self) -> dict[str, Any]:
        """The keyword arguments for ``create_optimizer`` (lr and the set options)."""
        return {"lr": self.lr, **self.settings}

    def resolved(self, seed: int) -> ResolvedOptions:
        """The optimizer's options for a run, validated (the one check of each value,
        :meth:`zotune.optim.registry.OptimizerEntry.resolve`): lr, the set options (with the
        run defaults :meth:`RunConfig.with_run_defaults` wrote in) and the run's seed for the
        optimizers that draw directions. An option the optimizer does not take, or a bad
        value, is refused naming the key; :meth:`zotune.optim.registry.OptimizerEntry.build`
        takes the result."""
        from .optim.registry import entry

        try:
            spec = entry(self.name)
        except ValueError as error:
            raise ConfigError(f"optimizer.name: {error}") from None
        accepted = spec.accepted()
        for name in self.settings:
            if name not in accepted:
                raise ConfigError(f"optimizer.{name} does not apply to {self.name}")
        options = {**self.options(), **({"seed": seed} if "seed" in accepted else {})}
        try:
            return spec.resolve(options)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"optimizer: {error}") from None

    def as_flat_dict(self) -> dict[str, Any]:
        fixed = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}
        return {**fixed, **self.settings}


# Optimizer options a run sets from its own keys: lr is optimizer.lr, seed is train.seed.
RUN_LEVEL_OPTIONS = ("lr", "seed")


def optimizer_option_types() -> dict[str, Any]:
    """Every optimizer option's config type, from the registry's declarations."""
    from .optim.registry import all_options

    types_ = {}
    for name, option in all_options().items():
        if name in RUN_LEVEL_OPTIONS:
            continue
        kind = {tuple: list[float], object: int | float}.get(option.kind, option.kind)
        types_[name] = kind | None
    return types_


@dataclass
class TrainConfig:
    steps: int = key(1000, "optimizer steps")
    batch_size: int = key(16, "examples per step")
    micro_batch_size: int | None = key(
        None, "evaluate each step's loss in parts of this many examples: ZO gets the same "
        "estimate with one part's activations, FO accumulates gradients"
    )
    eval_every: int = key(100, "validate every N steps (best checkpoint by validation)")
    eval_batch_size: int = key(32, "examples per evaluation forward")
    seed: int = key(0, "run seed: data sample, batch order, adapter init and ZO directions")
    output_dir: str | None = key(None, "run folder: config, metrics, checkpoints, result")
    resume: bool = key(False, "continue the run in --output-dir from its last checkpoint")
    overwrite: bool = key(False, "replace the run already in --output-dir")
    eval_test_before: bool = key(False, "also measure zero-shot test accuracy before training")
    eval_test_every: bool = key(
        False, "also measure test accuracy at every evaluation, into the curve (never used to "
        "choose the checkpoint: it shows how far selection on validation is from the best)"
    )
    progress: bool = key(True, "progress bars (shown only when stderr is a terminal)")
    report_to: str = key(
        "none", "also send the metrics to: none, tensorboard or wandb (metrics.jsonl stays)"
    )
    save_model: str | None = key(
        None, "at the end, export the fine-tuned model into this new folder (zotune export)",
        flag="--save-model",
    )
    parallel: str = key(
        "data", "under torchrun: data (shard the batch) or query (deal the q queries)"
    )
    compile: bool = key(
        False, "compile the model's forward with torch.compile (zotune.compile_model): pays "
        "off after its compile time is won back; eager with one warning without a compiler"
    )
    objective: str = key(
        "loss", "what a ZO step climbs: loss (the task loss), or the metric itself on the "
        "batch, accuracy or f1 (−metric is the objective; ZO optimizers only)"
    )


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def with_run_defaults(self) -> RunConfig:
        """The config with the optimizer's run defaults for its tuning scheme written in
        (:meth:`zotune.optim.registry.OptimizerEntry.run_defaults`: ε by scheme, FO gradient
        clipping), so that config.yaml and a run's id say what the run used."""
        from dataclasses import replace as replaced

        from .optim.registry import entry

        try:
            spec = entry(self.optimizer.name)
        except ValueError:
            return self  # an unknown optimizer is reported by the checks, naming it
        settings = {**spec.run_defaults(self.tuning.scheme), **self.optimizer.settings}
        return replaced(self, optimizer=replaced(self.optimizer, settings=settings))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["optimizer"] = self.optimizer.as_flat_dict()
        data["tuning"] = self.tuning.as_flat_dict()
        return data


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's annotation, converting ints to floats where needed."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{path}: null is not allowed")
    if isinstance(value, str) and float in options and str not in options:
        value = _number_or_text(value)  # YAML 1.1 reads 1e-4 as text; a float field means 1e-4
    for option in options:
        if option is type(None):
            continue
        origin = typing.get_origin(option) or option
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is str and isinstance(value, str):
            return value
        if origin is list and isinstance(value, (list, tuple)):
            return list(value)
        if origin is dict and isinstance(value, dict):
            return dict(value)
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
    raise ConfigError(f"{path}: expected {expected}, got {value!r}")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in fields(RunConfig)}


def build_config(data: dict[str, Any] | None = None) -> RunConfig:
    """A validated RunConfig from a nested dict (unknown keys raise ConfigError)."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    sections = _section_types()
    unknown = set(data) - set(sections)
    if unknown:
        raise ConfigError(
            f"unknown config section: {sorted(unknown)[0]!r} (sections: {', '.join(sections)})"
        )
    built = {}
    for name, cls in sections.items():
        values = data.get(name)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: expected a mapping, got {values!r}")
        hints = typing.get_type_hints(cls)
        if cls is OptimizerConfig:
            del hints["settings"]
            hints.update(optimizer_option_types())
        if cls is TuningConfig:
            del hints["settings"]
            hints.update(tuning_option_types())
        known = set(hints)
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"unknown config key: {name}.{key} (keys of {name}: {', '.join(sorted(known))})"
                )
        kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()}
        if cls is OptimizerConfig:
            fixed = {f.name for f in fields(cls)}
            settings = {k: v for k, v in kwargs.items() if k not in fixed and v is not None}
            kwargs = {k: v for k, v in kwargs.items() if k in fixed}
            kwargs["settings"] = settings
        if cls is TuningConfig:
            kwargs = _tuning_keys(kwargs)
        built[name] = cls(**kwargs)
    return RunConfig(**built)


def _tuning_keys(values: dict[str, Any]) -> dict[str, Any]:
    """The tuning section's keywords: ``scheme``, and in ``settings`` the option values that
    differ from their defaults, each checked against its declaration."""
    from .tuning.registry import all_options, check_values

    try:
        check_values(values)
    except ValueError as error:
        raise ConfigError(f"tuning: {error}") from None
    declared = all_options()
    settings = {k: v for k, v in values.items()
                if k in declared and not _same_value(v, declared[k].default)}
    return {**({"scheme": values["scheme"]} if "scheme" in values else {}), "settings": settings}


def _same_value(value: Any, default: Any) -> bool:
    return type(value) is type(default) and value == default


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """data["a"]["b"] = value for ``dotted == "a.b"``."""
    parts = dotted.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key must look like section.key, got {dotted!r}")
    section, key = parts
    target = data.setdefault(section, {})
    if not isinstance(target, dict):
        raise ConfigError(f"{section}: expected a mapping, got {target!r}")
    target[key] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"optimizer.lr=1e-5"`` → ``("optimizer.lr", 1e-05)``; values are YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"override must look like section.key=value, got {text!r}")
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):
        value = _number_or_text(value)
    return key.strip(), value


def _number_or_text(value: str) -> Any:
    # YAML 1.1 reads "1e-5" as a string; users mean the number.
    try:
        return float(value) if any(c in value for c in ".eE") else int(value)
    except ValueError:
        return value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> RunConfig:
    """Read a YAML config (optional), apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return config_from(data, overrides)


def config_from(
    data: dict[str, Any], overrides: list[str] | dict[str, Any] | None = None
) -> RunConfig:
    """A validated RunConfig from a mapping of sections (a YAML file's, or the ``config`` a
    run's record.json keeps) with dotted overrides; ``data`` is not changed."""
    data = copy.deepcopy(data)
    items = (
        overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    )
    for key, value in items:
        set_dotted(data, key, value)
    return build_config(data)


def config_flag(dotted: str) -> str:
    """The ``zotune train`` flag of a config key: its own (``--model`` for ``model.name``) or
    ``--`` and the key with dashes; a switch sets the non-default value, so ``--no-`` + that
    where the default is on (``--no-stochastic-rounding``)."""
    section, _, name = dotted.partition(".")
    cls = _section_types().get(section)
    own = next((f for f in fields(cls) if f.name == name), None) if cls is not None else None
    return (own.metadata.get("flag") if own is not None else None) or (
        "--" + name.replace("_", "-"))


def command_line(config: RunConfig, omit: tuple[str, ...] = ()) -> str:
    """The ``zotune train`` command that builds ``config``: a flag for every key whose value
    differs from the default config, in section order (``omit``: dotted keys left out, such
    as the output folder). A key the command line cannot give as a flag value (null over a
    default, a mapping) is a ``section.key=value`` override. ``zotune train`` given the
    result builds ``config`` again (the tests check)."""
    default = build_config().to_dict()
    words = ["zotune", "train"]
    for section, values in config.to_dict().items():
        for name, value in values.items():
            dotted = f"{section}.{name}"
            if dotted in omit or value == default[section].get(name):
                continue
            flag = config_flag(dotted)
            if isinstance(value, bool):
                words.append(flag if value else "--no-" + flag[2:])
            elif value is None or isinstance(value, dict):
                text = yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n")
                words.append(shlex.quote(f"{dotted}={text.strip()}"))
            else:
                text = (",".join(map(str, value)) if isinstance(value, (list, tuple))
                        else repr(value) if isinstance(value, float) else str(value))
                words += [flag, shlex.quote(text)]
    return " ".join(words)


def replace(config: RunConfig, **dotted: Any) -> RunConfig:
    """A copy of ``config`` with ``section__key=value`` (or {"section.key": value}) changes."""
    return config_from(config.to_dict(), {k.replace("__", "."): v for k, v in dotted.items()})


__all__ = [
    "ConfigError",
    "ModelConfig",
    "OptimizerConfig",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "TuningConfig",
    "build_config",
    "command_line",
    "config_flag",
    "config_from",
    "load_config",
    "parse_override",
    "replace",
]
