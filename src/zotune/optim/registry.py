"""The optimizer registry: one entry per optimizer, and everything else reads it.

An :class:`OptimizerEntry` answers every question the rest of zotune asks about an
optimizer: how to assemble it (estimator, rule, step strategy), which options it takes with
their defaults and help (:mod:`zotune.optim.options`), whether it needs backprop, how many
parameter-sized state tensors it keeps, whether its update is linear in the estimate, which
attention implementation it needs and how many forward passes a step makes. The CLI flags,
the config fields, the profiler's memory model and the bench's suite checks are generated
from the entries, so adding an optimizer is a rule plus one :func:`register` call (README,
"Adding an optimizer").

Optimizers defined outside the package are found through the ``zotune.optimizers`` entry
point group or the ``ZOTUNE_PLUGINS`` environment variable (comma-separated module names),
which :func:`load_plugins` imports; their modules call :func:`register`.
"""

from __future__ import annotations

import importlib
import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

import torch

from ..estimators import ForwardGradientEstimator, RandomGradientEstimator
from .options import LR, ZO_OPTIONS, Option, ZOOptions
from .rules import Rule
from .steps import make_step, strategy_for

ESTIMATORS = ("rge", "forward-grad", "backprop")


@dataclass(frozen=True)
class OptimizerEntry:
    """One optimizer, whole.

    ``rule`` builds the update rule from the validated options (FO-SGD picks momentum or plain
    SGD by ``momentum``). The options an entry takes are ``lr``, its own ``options`` (those
    that choose a rule, a stream or a partition, and shared ones it redeclares with a default
    of its own), the hyperparameters its rule's transforms declare
    (:attr:`zotune.optim.rules.Transform.hyperparameters`, for every rule it can build) and,
    for zeroth-order entries, the shared :data:`ZO_OPTIONS`; ``unsupported`` names those of
    the shared or rule options it does not take. ``cls`` is the public class, if the
    optimizer has one (a plugin needs none). ``check`` validates combinations of options
    (after each option is valid on its own).

    Methods whose directions are not the shared sampler's (LOZO's and SubZero's low-rank
    ones) give ``directions``: from the validated options, a factory ``(sampler, trainable
    tensors, seed) → sampler`` (:data:`zotune.optim.base.DirectionsFactory`), and
    ``factor_values``: from a trainable tensor's shape and the options, the values of the
    state its sampler keeps for it (bases, factors, momentum), which the memory model counts
    beside the rule's parameter-sized state. ``scheme_defaults`` gives option values
    ``zotune train`` and the bench use for a tuning scheme (see :meth:`run_defaults`).
    """

    key: str
    summary: str
    estimator: str
    rule: Callable[[Mapping[str, Any]], Rule]
    options: tuple[Option, ...] = ()
    step: str = "plain"  # "conservative", or a strategy registered in optim.steps.STRATEGIES
    unsupported: tuple[str, ...] = ()
    attention: str | None = None  # the attention implementation the model must use
    cls: type | None = None
    check: Callable[[Mapping[str, Any]], None] | None = None
    directions: Callable[[Mapping[str, Any]], Callable[..., Any]] | None = None
    factor_values: Callable[[tuple[int, ...], Mapping[str, Any]], int] | None = None
    scheme_defaults: Callable[[str], Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"{self.key}: unknown estimator {self.estimator!r} ({ESTIMATORS})")
        offered = {o.name for o in (*ZO_OPTIONS, *self.rule_hyperparameters)}
        for name in self.unsupported:
            if name not in offered:
                raise ValueError(
                    f"{self.key}: unsupported {name!r} is neither a shared ZO option nor a "
                    "hyperparameter of its rule"
                )

    @property
    def zeroth_order(self) -> bool:
        """Backprop-free (RGE or forward-mode): takes the shared ZO options."""
        return self.estimator != "backprop"

    @property
    def first_order(self) -> bool:
        """Trains by backpropagation (keeps activations and gradients)."""
        return self.estimator == "backprop"

    @property
    def forward_mode(self) -> bool:
        """Estimates by forward-mode AD: the model runs with tangents (more memory than a
        plain forward; every op must support forward-mode AD)."""
        return self.estimator == "forward-grad"

    @property
    def finite_difference(self) -> bool:
        """Estimates from loss values alone (RGE): any objective, even a non-differentiable
        metric, and weights moved in place where they are stored (offloaded ones too)."""
        return self.estimator == "rge"

    @cached_property
    def rule_hyperparameters(self) -> tuple[Option, ...]:
        """The hyperparameters the transforms of the entry's rules read from the param groups,
        over the rules it builds at its own options' defaults and at every combination of
        their choices (ZO-SGD-Sign's ``sign_of`` and ``base``)."""
        defaults = {o.name: o.default for o in self.options}
        choosers = [o for o in self.options if o.choices]
        found: dict[str, Option] = {}
        for combination in itertools.product(*(o.choices for o in choosers)):
            chosen = {o.name: value for o, value in zip(choosers, combination, strict=True)}
            for option in self.rule({**defaults, **chosen}).hyperparameters:
                found.setdefault(option.name, option)
        return tuple(found.values())

    def attention_implementation(self, requested: str | None) -> str | None:
        """The attention to load the model with: the entry's need wins over the default
        (None) and over fused SDPA, which has no forward-mode AD; an explicit other choice
        is the user's."""
        if self.attention is not None and requested in (None, "sdpa"):
            return self.attention
        return requested

    def accepted(self) -> dict[str, Option]:
        """Every keyword option (``lr`` first), by name."""
        # An entry may redeclare a shared or rule option with its own default (Sparse-MeZO's
        # sparsity, ZO-SGD-MMT's momentum): its declaration wins.
        shared = ZO_OPTIONS if self.zeroth_order else ()
        taken: dict[str, Option] = {}
        for option in (LR, *self.options, *self.rule_hyperparameters, *shared):
            if option.name not in self.unsupported:
                taken.setdefault(option.name, option)
        return taken

    def resolve(self, options: Mapping[str, Any]) -> ResolvedOptions:
        """The validated options: each value checked once, against the declaration this entry
        accepts, defaults filled in, the entry's combination check passed; unknown names
        refused. What :meth:`build` takes."""
        accepted = self.accepted()
        for name in options:
            if name not in accepted:
                raise TypeError(
                    f"{self.key}: got an unexpected keyword argument {name!r} "
                    f"(options: {', '.join(accepted)})"
                )
        if "lr" not in options:
            raise TypeError(f"{self.key}: missing the learning rate lr")
        values = {
            name: option.validate(options.get(name, option.default))
            for name, option in accepted.items()
        }
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        if self.check is not None:
            self.check(values)
        shared = None
        if self.zeroth_order:
            shared = ZOOptions(**{o.name: values[o.name] for o in ZO_OPTIONS if o.name in values})
        return ResolvedOptions(self.key, MappingProxyType(values), shared)

    def run_defaults(self, scheme: str) -> dict[str, Any]:
        """Defaults ``zotune train`` and the bench use where they differ from the library's
        (``create_optimizer`` keeps torch.optim's habits: one ε, no gradient clipping).

        * ε by tuning scheme (:attr:`zotune.tuning.registry.SchemeEntry.eps`, with its
          sources), as ZO-Bench's sweeps and MeZO recommend;
        * gradient clipping at norm 1.0 for first-order steps: HF Trainer's default
          ``max_grad_norm``, which ZO-LLM's FO runs kept (zo-bench/trainer.py).
        """
        accepted = self.accepted()
        defaults: dict[str, Any] = {}
        if "eps" in accepted:
            from ..tuning.registry import run_eps

            defaults["eps"] = run_eps(scheme, accepted["eps"].default)
        if "max_grad_norm" in accepted:
            defaults["max_grad_norm"] = 1.0
        if self.scheme_defaults is not None:
            defaults.update(self.scheme_defaults(scheme))
        return defaults

    def state_tensors(self, **options: Any) -> int:
        """Parameter-sized state tensors per trainable tensor (momentum 1, Adam 2): the
        rule's and those the step strategy keeps (HiZOO's Hessian estimate 1)."""
        strategy = strategy_for(self.step, self._defaults(options))
        return len(self._rule_for(options).state_names) + len(strategy.state_init)

    def side_state_values(self, shape: tuple[int, ...], **options: Any) -> int:
        """Values of the state the entry's direction sampler keeps for a tensor of ``shape``
        (0 for the shared sampler, whose directions are regenerated from seeds)."""
        if self.factor_values is None:
            return 0
        accepted = self.accepted()
        values = {name: options.get(name, option.default) for name, option in accepted.items()}
        return self.factor_values(tuple(shape), values)

    def is_linear(self, **options: Any) -> bool:
        """Whether the update is linear in the estimate (u = g + λθ: the fused ZO path) and
        the step draws no z chunk into scratch of its own (HiZOO's does)."""
        strategy = strategy_for(self.step, self._defaults(options))
        return self._rule_for(options).is_linear and not strategy.draws_chunks

    def _rule_for(self, options: Mapping[str, Any]) -> Rule:
        values = {o.name: options.get(o.name, o.default) for o in self.options}
        return self.rule(values)

    def strategy(self, **options: Any):
        """The step strategy the entry's ``step`` names, built from ``options`` (defaults
        filled in), before enhancements."""
        return strategy_for(self.step, self._defaults(options))

    def _defaults(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {n: options.get(n, o.default) for n, o in self.accepted().items()}

    def forward_passes(self, **options: Any) -> float:
        """Forward passes of one step of a one-block model (q and probe from options),
        amortised over a period where the step has one (MeZO-SVRG's anchor)."""
        if self.first_order:
            return 1
        q = options.get("q", 1)
        if self.forward_mode:
            return q
        passes = 2 * q if options.get("probe", "two-point") == "two-point" else q + 1
        return strategy_for(self.step, self._defaults(options)).planned_forward_passes(passes)

    def build(self, params: Any, options: ResolvedOptions) -> torch.optim.Optimizer:
        """The optimizer from validated options (:meth:`resolve`), an instance of its public
        class if it has one, made from the assembled parts."""
        from .base import FirstOrderOptimizer, ZerothOrderOptimizer

        kind = FirstOrderOptimizer if self.first_order else ZerothOrderOptimizer
        optimizer = (self.cls or kind).__new__(self.cls or kind)
        # The public class's own __init__ takes raw keywords and validates them: these are
        # validated, so the kind's constructor takes the parts directly.
        kind.__init__(optimizer, params, **self.assemble(options))
        return optimizer

    def assemble(self, options: ResolvedOptions) -> dict[str, Any]:
        """Keyword arguments for :class:`ZerothOrderOptimizer` or :class:`FirstOrderOptimizer`
        from validated options (:meth:`resolve`): the param groups' hyperparameters, the rule,
        and for zeroth-order entries the shared options, the estimator, the step strategy and
        the direction factory."""
        if options.key != self.key:
            raise ValueError(f"{self.key}: got the options of {options.key}")
        values = options.values
        shared = {o.name for o in ZO_OPTIONS}
        parts: dict[str, Any] = {
            name: values[name]
            for name, option in self.accepted().items()
            if name == "lr" or (option.hyperparameter and name not in shared)
        }
        parts["rule"] = self.rule(values)
        if self.first_order:
            return {**parts, "max_grad_norm": values.get("max_grad_norm")}
        zo = options.shared
        try:
            step = make_step(
                self.step, zo.block_level, zo.block_mode, zo.hybrid_layers, zo.fo_lr, values
            )
        except ValueError as error:
            raise ValueError(f"{self.key}: {error}") from None
        if self.finite_difference:
            estimator = RandomGradientEstimator(
                eps=zo.eps, q=zo.q, probe=zo.probe, distribution=zo.distribution,
                table_numel=zo.table_numel,
            )
        else:
            estimator = ForwardGradientEstimator(
                q=zo.q, distribution=zo.distribution, table_numel=zo.table_numel
            )
        return {
            **parts,
            "options": zo,
            "estimator": estimator,
            "step": step,
            "directions": None if self.directions is None else self.directions(values),
        }


@dataclass(frozen=True)
class ResolvedOptions:
    """One optimizer's options after :meth:`OptimizerEntry.resolve`: every value it takes,
    validated (``values``), and the shared ZO ones as one :class:`ZOOptions` (``shared``;
    None for first-order entries). A run's config resolves them once, before anything is
    loaded, and hands them to :meth:`OptimizerEntry.build`."""

    key: str
    values: Mapping[str, Any]
    shared: ZOOptions | None = None


REGISTRY: dict[str, OptimizerEntry] = {}


def register(entry: OptimizerEntry) -> OptimizerEntry:
    """Add an optimizer; its key must be new (``unregister`` first to replace one)."""
    if entry.key in REGISTRY:
        raise ValueError(f"optimizer {entry.key!r} is already registered")
    REGISTRY[entry.key] = entry
    return entry


def unregister(key: str) -> None:
    REGISTRY.pop(key, None)


def entry(key: str) -> OptimizerEntry:
    """The entry for ``key``, or ValueError listing the keys."""
    load_plugins()
    try:
        return REGISTRY[key]
    except KeyError:
        raise ValueError(
            f"Unknown optimizer: {key!r} (choose from {', '.join(REGISTRY)})"
        ) from None


def entry_of(optimizer_class: type) -> OptimizerEntry:
    """The entry whose public class is ``optimizer_class``."""
    for candidate in REGISTRY.values():
        if candidate.cls is optimizer_class:
            return candidate
    raise LookupError(f"{optimizer_class.__name__} is not a registered optimizer class")


def names(*, zeroth_order: bool | None = None) -> tuple[str, ...]:
    """Registry keys in registration order, optionally only the (non-)backprop-free ones."""
    load_plugins()
    return tuple(
        k for k, e in REGISTRY.items() if zeroth_order is None or e.zeroth_order == zeroth_order
    )


def all_options() -> dict[str, Option]:
    """Every option any optimizer takes, by name (the first declaration of each name)."""
    load_plugins()
    found: dict[str, Option] = {}
    for candidate in REGISTRY.values():
        for name, option in candidate.accepted().items():
            found.setdefault(name, option)
    return found


def create_optimizer(name: str, params: Any, **options: Any) -> torch.optim.Optimizer:
    """Build an optimizer by registry key, e.g. ``create_optimizer("zo-adam", model, lr=1e-4)``.

    ``params`` may be an iterable of tensors, param-group dicts, or a module (its trainable
    parameters; block-wise and hybrid ZO need the module). Options are the entry's
    (:meth:`OptimizerEntry.accepted`); an unknown one raises TypeError naming it, an invalid
    value ValueError.
    """
    spec = entry(name)
    return spec.build(params, spec.resolve(options))


_PLUGINS_LOADED: set[str] = set()


def load_plugins() -> None:
    """Import optimizer plugins: ``zotune.optimizers`` entry points and ``$ZOTUNE_PLUGINS``."""
    wanted = [m.strip() for m in os.environ.get("ZOTUNE_PLUGINS", "").split(",") if m.strip()]
    for module in wanted:
        if module not in _PLUGINS_LOADED:
            _PLUGINS_LOADED.add(module)
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ValueError(f"ZOTUNE_PLUGINS: cannot import {module!r} ({error})") from None
    if "entry-points" not in _PLUGINS_LOADED:
        _PLUGINS_LOADED.add("entry-points")
        from importlib.metadata import entry_points

        for point in entry_points(group="zotune.optimizers"):
            point.load()
