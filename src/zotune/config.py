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

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key or value is not valid."""


@dataclass
class ModelConfig:
    name: str | None = None  # HF hub id, local folder, "smollm2-135m" (default) or "random:<shape>"
    dtype: str = "float32"
    # Half-precision compute over fp32 weights: "bfloat16" or "float16" (see
    # zotune.mixed_precision); None computes in the weights' dtype.
    autocast: str | None = None
    device: str = "cpu"
    attn_implementation: str | None = None
    # Spread layers over devices with accelerate: "auto", "balanced", "sequential" or a
    # {module: device} map (then `device` is not used); see zotune.models.place_on_devices.
    device_map: str | dict[str, Any] | None = None


@dataclass
class TaskConfig:
    name: str = "sst2"
    data_dir: str | None = None
    template: bool = True
    num_train: int = 1000
    num_val: int = 500
    num_test: int = 1000
    loss: str = "ce"  # ce: cross-entropy over candidates; lm: LM loss on the correct one
    reduction: str = "mean"  # candidate score: mean or sum of token log-probs
    max_length: int | None = None


@dataclass
class TuningConfig:
    scheme: str = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    prefix_tokens: int = 5
    prompt_tokens: int = 10
    prompt_init_text: str | None = None


@dataclass
class OptimizerConfig:
    """Unset (None) options take the optimizer class's default; set ones must apply to it."""

    name: str = "zo-sgd"
    lr: float = 1e-6
    eps: float | None = None
    q: int | None = None
    probe: str | None = None
    distribution: str | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    betas: list[float] | None = None
    adam_eps: float | None = None
    # Enhancements (zeroth-order optimizers; see zotune.enhance)
    block_level: str | None = None  # layer, sublayer or linear: block-wise ZO
    block_mode: str | None = None  # coordinate (default) or all
    hybrid_layers: int | float | None = None  # ZO layers from the input: an int, or a fraction
    sparsity: float | None = None  # fraction of each tensor's perturbation masked out, [0, 1)
    sparsity_mode: str | None = None  # uniform (default) or magnitude
    mask_every: int | None = None  # resample the sparse mask every N steps (default 1)
    # fp16/bf16 weights: stochastically rounded ZO updates (default on; false: to nearest)
    stochastic_rounding: bool | None = None
    schedule: str = "constant"  # constant or linear (decay to 0 over the run)

    def options(self) -> dict[str, Any]:
        """The keyword arguments for ``create_optimizer`` (set options only)."""
        skip = {"name", "schedule"}
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in skip and getattr(self, f.name) is not None
        }


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    eval_every: int = 100
    eval_batch_size: int = 32
    seed: int = 0
    output_dir: str | None = None
    resume: bool = False
    eval_test_before: bool = False  # zero-shot test accuracy, for the before/after comparison
    progress: bool = True
    parallel: str = "data"  # under torchrun: data (shard the batch) or query (deal the q queries)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's annotation, converting ints to floats where needed."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{path}: null is not allowed")
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
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"unknown config key: {name}.{key} (keys of {name}: {', '.join(sorted(known))})"
                )
        kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()}
        built[name] = cls(**kwargs)
    return RunConfig(**built)


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
    items = (
        overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    )
    for key, value in items:
        set_dotted(data, key, value)
    return build_config(data)


def replace(config: RunConfig, **dotted: Any) -> RunConfig:
    """A copy of ``config`` with ``section__key=value`` (or {"section.key": value}) changes."""
    data = config.to_dict()
    for key, value in dotted.items():
        set_dotted(data, key.replace("__", "."), value)
    return build_config(data)


__all__ = [
    "ConfigError",
    "ModelConfig",
    "OptimizerConfig",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "TuningConfig",
    "build_config",
    "load_config",
    "parse_override",
    "replace",
]
