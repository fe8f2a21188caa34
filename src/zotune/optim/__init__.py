"""zotune's optimizers: ``torch.optim.Optimizer`` subclasses assembled from parts.

An optimizer is an estimator (:mod:`zotune.estimators`), an update rule
(:mod:`zotune.optim.rules`) and a step strategy (:mod:`zotune.optim.steps`), described once by
its registry entry (:mod:`zotune.optim.registry`); :mod:`zotune.optim.algorithms` holds the
eight of the benchmark and the low-rank methods after it (LOZO, LOZO-M, SubZero).
``create_optimizer(key, params, lr=..., **options)`` builds any of them, plugins included.

Closure contract: ``step(closure)`` where ``closure()`` returns the scalar loss of the current
batch and never calls ``backward``. Zeroth-order optimizers (and Forward-Grad) require it and
call it under ``torch.no_grad()``; first-order ones backpropagate its loss themselves, or,
without a closure, use ``param.grad`` as ``torch.optim`` does. ``step`` returns the loss.

Only tensors with ``requires_grad=True`` are perturbed and updated, so freezing a tensor is
the usual flag.
"""

from .algorithms import (
    FOSGD,
    LOZO,
    LOZOM,
    ZOSGD,
    FOAdam,
    ForwardGrad,
    SubZero,
    ZOAdam,
    ZOSGDConservative,
    ZOSGDMomentum,
    ZOSGDSign,
)
from .base import FirstOrderOptimizer, RuleOptimizer, ZerothOrderOptimizer
from .options import Option, ZOOptions
from .registry import (
    REGISTRY,
    OptimizerEntry,
    create_optimizer,
    entry,
    names,
    register,
    unregister,
)
from .steps import BlockwiseStep, ConservativeStep, HybridStep, PlainStep, StepStrategy


class _Keys:
    """A live view of registry keys that reads like the 0.1 constants (``in``, iteration)."""

    def __init__(self, zeroth_order: bool | None) -> None:
        self._zeroth_order = zeroth_order

    def _keys(self) -> tuple[str, ...]:
        return names(zeroth_order=self._zeroth_order)

    def __iter__(self):
        return iter(self._keys())

    def __contains__(self, key: object) -> bool:
        return key in self._keys()

    def __len__(self) -> int:
        return len(self._keys())

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self._keys()[key]
        return entry(key).cls

    def __repr__(self) -> str:
        return repr(self._keys())


# 0.1's names: OPTIMIZERS[key] is the class, ZEROTH_ORDER the backprop-free keys.
OPTIMIZERS = _Keys(None)
ZEROTH_ORDER = _Keys(True)

__all__ = [
    "FOSGD",
    "LOZO",
    "LOZOM",
    "OPTIMIZERS",
    "REGISTRY",
    "ZEROTH_ORDER",
    "ZOSGD",
    "BlockwiseStep",
    "ConservativeStep",
    "FOAdam",
    "FirstOrderOptimizer",
    "ForwardGrad",
    "HybridStep",
    "OptimizerEntry",
    "Option",
    "PlainStep",
    "RuleOptimizer",
    "StepStrategy",
    "SubZero",
    "ZOAdam",
    "ZOOptions",
    "ZOSGDConservative",
    "ZOSGDMomentum",
    "ZOSGDSign",
    "ZerothOrderOptimizer",
    "create_optimizer",
    "entry",
    "names",
    "register",
    "unregister",
]
