"""The tuning-scheme registry: one entry per scheme, and everything else reads it.

A :class:`SchemeEntry` answers every question the rest of zotune asks about a tuning scheme:
its options (the ``tuning`` section's keys, declared as :class:`zotune.optim.options.Option`
with defaults, help and checks), how it is applied to a model, the ε ``zotune train`` uses with
it, whether ``zotune export`` writes it as a peft adapter and how that adapter is merged and
loaded. The config keys and their checks, the CLI flags and choices, the optimizer's run
defaults, export, the untrained-run hints, the bench's grid checks and the profiler's memory
estimate (which applies the scheme to a meta model) read the entries, so adding a scheme is a
function plus one :func:`register` call (README, "Adding a tuning scheme").

Schemes defined outside the package register from a module that ``$ZOTUNE_PLUGINS`` names
(comma-separated module names, imported by :func:`zotune.optim.registry.load_plugins`), as
optimizers do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..optim.options import Option, is_int

# (model, the scheme's option values, tokenizer or None) → the model ready to train.
Apply = Callable[[torch.nn.Module, Mapping[str, Any], Any], torch.nn.Module]


@dataclass(frozen=True)
class SchemeEntry:
    """One tuning scheme, whole.

    ``apply`` makes exactly the scheme's tensors trainable (``requires_grad``) and returns the
    model to train: ``model`` itself, or a wrapper (peft's) holding it; it gets the values of
    the scheme's ``options`` and the tokenizer. ``label`` is how prose names the scheme
    ("LoRA"; default: the key). ``eps`` is the perturbation scale ``zotune train`` and the bench
    give optimizers that take one (None: the optimizer's own default). ``adapter`` schemes
    return a peft model from ``apply`` and are exported as a peft adapter folder (the others
    as a whole model, ``save_pretrained``); ``merge``, where given, folds the adapter into the
    base weights (``zotune export --merge``); ``after_loading`` are code lines an exported
    adapter's model card adds after ``PeftModel.from_pretrained`` (``model`` in scope), with
    ``loading_note`` saying why.
    """

    key: str
    summary: str
    apply: Apply
    options: tuple[Option, ...] = ()
    label: str = ""
    eps: float | None = None
    adapter: bool = False
    merge: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    after_loading: tuple[str, ...] = ()
    loading_note: str = ""

    def __post_init__(self) -> None:
        if self.merge is not None and not self.adapter:
            raise ValueError(f"{self.key}: only an adapter scheme can be merged")
        if (self.after_loading or self.loading_note) and not self.adapter:
            raise ValueError(f"{self.key}: loading notes are for adapters (peft loads them)")

    @property
    def name(self) -> str:
        """How prose names the scheme: its label, else its key."""
        return self.label or self.key

    def option(self, name: str) -> Option:
        """The scheme's option ``name``."""
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(f"tuning scheme {self.key!r} has no option {name!r}")


def positive_int(name: str, default: int, help: str) -> Option:
    """A scheme option holding a count (rank, virtual tokens): an int >= 1."""
    return Option(name, default, help, kind=int, check=lambda v: is_int(v) and v >= 1,
                  problem="an int >= 1")


REGISTRY: dict[str, SchemeEntry] = {}


def register(entry: SchemeEntry) -> SchemeEntry:
    """Add a scheme; its key must be new (``unregister`` first to replace one), and an option
    it shares with a registered scheme must be the same declaration (one default, one help)."""
    if entry.key in REGISTRY:
        raise ValueError(f"tuning scheme {entry.key!r} is already registered")
    declared = all_options(load=False)
    for option in entry.options:
        if option.name == "scheme":
            raise ValueError(f"{entry.key}: 'scheme' is the tuning section's own key")
        known = declared.get(option.name)
        if known is not None and known != option:
            raise ValueError(
                f"{entry.key}: option {option.name!r} is declared differently by "
                f"{', '.join(owners(option.name))}; reuse its declaration"
            )
    REGISTRY[entry.key] = entry
    return entry


def unregister(key: str) -> None:
    REGISTRY.pop(key, None)


def get_scheme(key: str) -> SchemeEntry:
    """The entry for ``key``, or ValueError listing the keys."""
    _load_plugins()
    try:
        return REGISTRY[key]
    except KeyError:
        raise ValueError(
            f"unknown tuning scheme {key!r} (choose from {', '.join(REGISTRY)})"
        ) from None


def scheme_keys(*, adapter: bool | None = None) -> tuple[str, ...]:
    """Registry keys in registration order, optionally only the (non-)adapter ones."""
    _load_plugins()
    return tuple(k for k, e in REGISTRY.items() if adapter is None or e.adapter == adapter)


def mergeable() -> tuple[str, ...]:
    """How prose names the schemes whose adapters merge into the weights (``--merge``)."""
    _load_plugins()
    return tuple(e.name for e in REGISTRY.values() if e.merge is not None)


def all_options(*, load: bool = True) -> dict[str, Option]:
    """Every scheme option by name, in registration order: the ``tuning`` section's keys
    besides ``scheme``."""
    if load:
        _load_plugins()
    found: dict[str, Option] = {}
    for entry in REGISTRY.values():
        for option in entry.options:
            found.setdefault(option.name, option)
    return found


def owners(name: str) -> tuple[str, ...]:
    """The schemes that take option ``name``."""
    return tuple(k for k, e in REGISTRY.items() if any(o.name == name for o in e.options))


def option_problem(option: Option, value: Any) -> str | None:
    """What is wrong with ``value`` for ``option`` (one line), or None if it is valid."""
    if value is None:
        return None if option.optional else f"invalid {option.name}: None"
    if option.choices is not None:
        if value not in option.choices:
            return (f"unknown {option.name} {value!r} "
                    f"(choose from {', '.join(option.choices)})")
        return None
    try:
        valid = option.check is None or bool(option.check(value))
    except (TypeError, ValueError):
        valid = False
    return None if valid else f"invalid {option.name}: {value!r} (must be {option.problem})"


def check_values(values: Mapping[str, Any]) -> None:
    """ValueError naming the first invalid option value (unknown names are the config's to
    refuse)."""
    declared = all_options()
    for name, value in values.items():
        if name in declared:
            problem = option_problem(declared[name], value)
            if problem is not None:
                raise ValueError(problem)


def foreign_option(scheme: str, values: Mapping[str, Any]) -> str | None:
    """One line naming an option set away from its default for another scheme than ``scheme``
    (it would be ignored), or None."""
    for name, option in all_options().items():
        takers = owners(name)
        value = values.get(name, option.default)
        if scheme not in takers and value != option.default:
            return (f"tuning.{name}={value!r} applies to {', '.join(takers)} tuning, not to "
                    f"tuning.scheme={scheme!r}")
    return None


def run_eps(scheme: str, default: float) -> float:
    """The ε a run uses with ``scheme`` (:attr:`SchemeEntry.eps`), ``default`` where the
    scheme leaves it to the optimizer or is unknown (the config checks report that)."""
    _load_plugins()
    entry = REGISTRY.get(scheme)
    return default if entry is None or entry.eps is None else entry.eps


def _load_plugins() -> None:
    from ..optim.registry import load_plugins

    load_plugins()
