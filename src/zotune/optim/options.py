"""Option declarations: what an optimizer takes, its default, its help, what is valid.

Every option of every optimizer is declared once, as an :class:`Option`. The registry entry
of an optimizer lists the options it takes (:mod:`zotune.optim.registry`); the constructors
validate with them, and the config file fields, the CLI flags and the bench's suite checks
are generated from them, so none of those can fall out of step with the optimizers.

The options every zeroth-order method shares (the estimate, the directions, the step
strategy, the sparse mask) are one frozen, validated type, :class:`ZOOptions`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from ..enhance.blocks import BLOCK_LEVELS, BLOCK_MODES
from ..enhance.sparse import SPARSITY_MODES, THRESHOLD_MODES
from ..estimators.directions import DEFAULT_TABLE_NUMEL, DISTRIBUTIONS
from ..estimators.mezo_stream import NUMPY_SEED_LIMIT
from ..estimators.rge import PROBES

Check = Callable[[Any], bool]


@dataclass(frozen=True)
class Option:
    """One keyword option: ``name=default``, valid when ``check(value)`` holds.

    ``problem`` completes "Invalid <name>: <value> (...)" when the check fails; ``choices``
    replace check and problem for a fixed set of strings. ``hyperparameter`` options live in
    the param groups (rules read them at every step, so schedulers may change them); the
    others configure how the estimate and the step are made.
    """

    name: str
    default: Any
    help: str
    kind: type = float
    check: Check | None = None
    problem: str = ""
    choices: tuple[str, ...] | None = None
    optional: bool = False  # None is a valid value (e.g. block-wise ZO off)
    hyperparameter: bool = False
    label: str = ""  # how errors name it, after torch.optim ("learning rate"); default: name
    parse: Callable[[str], Any] | None = None  # command-line text → value; default: kind
    # False: the analytic memory model (zotune.profiling.memory_model) does not account for
    # what this option does to a step's memory, so the profiler shows measured memory only.
    modelled: bool = True

    def validate(self, value: Any) -> Any:
        """The value, converted where a user means it (an int for a float), or ValueError."""
        if value is None and self.optional:
            return None
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"Unknown {self.name}: {value!r} (choose from {self.choices})")
            return value
        if self.kind is float and _is_number(value):
            value = float(value)
        if self.check is not None and not _safely(self.check, value):
            label = self.label or self.name
            raise ValueError(f"Invalid {label}: {value!r} (must be {self.problem})")
        return value

    def from_text(self, text: str) -> Any:
        """The value a command-line flag means."""
        if self.parse is not None:
            return self.parse(text)
        if self.kind is bool:
            return _boolean(text)
        return self.kind(text)

    def describe(self) -> str:
        """The help line with its default, as ``--help`` prints it."""
        default = "off" if self.default is None else _plain(self.default)
        choices = f" ({', '.join(self.choices)})" if self.choices else ""
        return f"{self.help}{choices}; default {default}"


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def int_or_float(text: str) -> int | float:
    """``"2"`` → 2 (layers), ``"0.5"`` → 0.5 (a fraction): hybrid_layers reads both."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def floats(text: str) -> tuple[float, ...]:
    """``"0.9,0.99"`` → (0.9, 0.99)."""
    return tuple(float(part) for part in text.split(","))


def _safely(check: Check, value: Any) -> bool:
    try:
        return bool(check(value))
    except (TypeError, ValueError):
        return False


def _plain(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_plain(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def finite_at_least(low: float) -> Check:
    return lambda v: _is_number(v) and math.isfinite(v) and v >= low


def finite_above(low: float) -> Check:
    return lambda v: _is_number(v) and math.isfinite(v) and v > low


def in_unit(upper_open: bool = True) -> Check:
    return lambda v: _is_number(v) and (0 <= v < 1 if upper_open else 0 <= v <= 1)


def _is_layers(value: Any) -> bool:
    # An int number of layers, or a fraction; the model decides which ints are valid.
    return (is_int(value) and value >= 0) or (isinstance(value, float) and 0 <= value <= 1)


# Hyperparameters (param-group values) -------------------------------------------------------

LR = Option(
    "lr", None, "learning rate η", check=finite_at_least(0), problem="a finite number >= 0",
    hyperparameter=True, label="learning rate",
)
WEIGHT_DECAY = Option(
    "weight_decay",
    0.0,
    "decoupled weight decay λ on matrices (ndim >= 2)",
    check=finite_at_least(0),
    problem="a finite number >= 0",
    hyperparameter=True,
    label="weight_decay value",
)
DAMPENING = Option(
    "dampening", 0.0, "momentum dampening τ", check=in_unit(False), problem="in [0, 1]",
    hyperparameter=True, label="dampening value",
)
NESTEROV = Option(
    "nesterov", False, "Nesterov momentum", kind=bool, check=lambda v: isinstance(v, bool),
    problem="true or false", hyperparameter=True,
)
BETAS = Option(
    "betas",
    (0.9, 0.999),
    "Adam's (β₁, β₂)",
    kind=tuple,
    check=lambda v: len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
    problem="two values, each in [0, 1)",
    hyperparameter=True,
    parse=floats,
)
ADAM_EPS = Option(
    "adam_eps", 1e-8, "Adam's δ in the denominator", check=finite_at_least(0),
    problem="a finite number >= 0", hyperparameter=True, label="adam_eps value",
)


HESSIAN_SMOOTH = Option(
    "hessian_smooth", 1e-8,
    "HiZOO's Hessian smoothing α: H ← (1 − α) H + α · (the step's curvature estimate) "
    "(the authors' README runs constant1e-8; their HiZOO.sh default constant0 leaves H = 1, "
    "i.e. MeZO)",
    check=lambda v: _is_number(v) and 0 <= v <= 1, problem="in [0, 1]", hyperparameter=True,
)


# Sparse-MeZO redeclares two shared options with its own defaults (no public code of the
# authors: the fraction is the paper's, the mode its rule; docs/results/fidelity.md).
SPARSE_MEZO_SPARSITY = Option(
    "sparsity", 0.8,
    "fraction of each tensor's weights, the largest |θ|, that Sparse-MeZO leaves unperturbed",
    check=in_unit(), problem="in [0, 1)", modelled=False,
)
SPARSE_MEZO_MODE = Option(
    "sparsity_mode", "small-magnitude",
    "Sparse-MeZO's threshold on |θ|: per tensor or over all trainable tensors, fixed at the "
    "start (the paper), or per tensor recomputed with each mask (step)",
    kind=str, choices=THRESHOLD_MODES, modelled=False,
)


# MeZO-SVRG (amazon-science/mezo_svrg finetune_llm.py's defaults: --q 2, --lr 2e-3, and its
# full batch is the training sample, --samplesize 512 in finetune_llm.sh).
ANCHOR_EVERY = Option(
    "anchor_every", 2,
    "MeZO-SVRG: an anchor step on a large batch every N steps, control-variate steps between "
    "(the authors' --q)",
    kind=int, check=lambda v: is_int(v) and v >= 1, problem="an int >= 1",
)
ANCHOR_LR = Option(
    "anchor_lr", 2e-3, "MeZO-SVRG: learning rate η₁ of the anchor steps (lr is η₂, the "
    "control-variate steps')", check=finite_at_least(0), problem="a finite number >= 0",
    hyperparameter=True,
)
ANCHOR_BATCH_SIZE = Option(
    "anchor_batch_size", 512,
    "MeZO-SVRG: examples in an anchor step's batch (at most the training split: the authors' "
    "full batch)", kind=int, check=lambda v: is_int(v) and v >= 1, problem="an int >= 1",
)
CONTROL_AT = Option(
    "control_at", "current",
    "MeZO-SVRG: where the control variate's estimate is taken: current weights (the authors' "
    "code) or the stored anchor weights (the paper; one more parameter-sized tensor)",
    kind=str, choices=("current", "anchor"),
)


MAX_GRAD_NORM = Option(
    "max_grad_norm", None,
    "clip the gradient's global L2 norm to this before the update (HF Trainer's "
    "max_grad_norm; zotune train sets 1.0, the Trainer default the paper's FO runs used)",
    check=finite_above(0), problem="a finite number > 0", optional=True,
)


BASE = Option(
    "base", "sgd",
    "what steps along the estimate: sgd, the paper's rule; adamw, transformers' AdamW "
    "(4.28.1, betas and adam_eps below), which ZO-LLM's released runs used (their sweep "
    "files pass no --optimizer)",
    kind=str, choices=("sgd", "adamw"),
)
SIGN_OF = Option(
    "sign_of", "estimate",
    "estimate: sign(ĝ) elementwise (ZO-signSGD, the paper); coefficient: sign(c)·z, the "
    "released code's (ZO-LLM trainer.py:1058)",
    kind=str, choices=("estimate", "coefficient"),
)


def check_base(values: Mapping[str, Any]) -> None:
    """Adam's betas and δ only mean something under base='adamw'."""
    if values.get("base") == "sgd" and (
        values.get("betas", BETAS.default) != BETAS.default
        or values.get("adam_eps", ADAM_EPS.default) != ADAM_EPS.default
    ):
        raise ValueError("betas and adam_eps apply to base='adamw' only (base is 'sgd')")


def check_sign(values: Mapping[str, Any]) -> None:
    """ZO-SGD-Sign's combinations: :func:`check_base`, and sign(c)·z needs every tensor's
    update to be a ZO estimate (a hybrid step's first-order part has no coefficients)."""
    check_base(values)
    if values.get("sign_of") == "coefficient" and values.get("hybrid_layers") is not None:
        raise ValueError(
            "sign_of='coefficient' signs a ZO estimate's coefficients; the hybrid step's "
            "first-order part has none (use sign_of='estimate')"
        )


def momentum(default: float) -> Option:
    """Heavy-ball μ; ZO-SGD-MMT and FO-SGD differ only in its default."""
    return Option(
        "momentum", default, "heavy-ball momentum μ", check=in_unit(), problem="in [0, 1)",
        hyperparameter=True, label="momentum value",
    )


def check_momentum(values: Mapping[str, Any]) -> None:
    """The cross-option rule torch.optim.SGD enforces."""
    if values.get("nesterov") and (values["momentum"] == 0 or values.get("dampening", 0) != 0):
        raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")


# Low-rank directions (LOZO, LOZO-M, SubZero; zotune.estimators.low_rank) ------------------

def _positive_int(name: str, default: int, help_: str) -> Option:
    return Option(name, default, help_, kind=int, check=lambda v: is_int(v) and v >= 1,
                  problem="an int >= 1")


# optsuite/LOZO large_models/run_lozo.py:64-66 (rank_r 2, step_interval 50, zo_eps 1e-3)
LOZO_RANK = _positive_int("lozo_rank", 2, "LOZO: rank r of each matrix's perturbation U Vᵀ")
LOZO_INTERVAL = _positive_int(
    "lozo_interval", 50, "LOZO: ν, the steps each V is kept before it is redrawn"
)
LOZO_UPDATE = Option(
    "lozo_update", "reference",
    "LOZO: at a V redraw, update along the U the authors' update pass redraws (reference) "
    "or along the probed U (probed, the paper's Algorithm 1)",
    kind=str, choices=("reference", "probed"),
)
# medium_models/lozo.sh:15 (BETA1 0.9; run_lozo.py's field default is 0.7)
LOZO_BETA = Option(
    "lozo_beta", 0.9, "LOZO-M: momentum β of the m×r factor", check=in_unit(),
    problem="in [0, 1)",
)
# PawnDragon/SubZero large_models/run.py:94-95 at cf6effd (update_interval 2000, gauss_rank 8)
SUBZERO_RANK = _positive_int("subzero_rank", 8, "SubZero: rank r of the subspace U Σ Vᵀ")
SUBZERO_INTERVAL = _positive_int(
    "subzero_interval", 2000, "SubZero: T, the steps the bases U, V are kept"
)
SUBZERO_SQUARE = Option(
    "subzero_square", False,
    "SubZero: view each matrix as its most nearly square reshape (the authors' LoRA, prefix "
    "and prompt mode; zotune train turns it on for those schemes)",
    kind=bool, check=lambda v: isinstance(v, bool), problem="true or false",
)


# The options every zeroth-order method shares ------------------------------------------------

ZO_OPTIONS: tuple[Option, ...] = (
    Option(
        "eps", 1e-3, "perturbation scale ε of the estimate", check=finite_above(0),
        problem="a finite number > 0", label="perturbation scale eps",
    ),
    Option(
        "q", 1, "random directions (queries) per step", kind=int,
        check=lambda v: is_int(v) and v >= 1, problem="an int >= 1",
        label="number of queries q",
    ),
    Option("probe", "two-point", "finite-difference probe", kind=str, choices=PROBES),
    Option(
        "distribution", "auto",
        "directions: auto is the noise table on CPU and Gaussian sampling on CUDA; mezo is "
        "MeZO's own stream (numpy step seeds, torch.normal per tensor in order)",
        kind=str, choices=DISTRIBUTIONS,
    ),
    Option(
        "table_numel", DEFAULT_TABLE_NUMEL, "values in the shared noise table", kind=int,
        check=lambda v: is_int(v) and v >= 2 and v & (v - 1) == 0,
        problem="a power of two >= 2", modelled=False,
    ),
    Option(
        "seed", 0, "seed of the direction stream", kind=int, check=is_int,
        problem="an int",
    ),
    Option(
        "block_level", None, "block-wise ZO: one estimate per block", kind=str,
        choices=BLOCK_LEVELS, optional=True, modelled=False,
    ),
    Option(
        "block_mode", "coordinate",
        "block-wise ZO: update each block as it is estimated, or all at the end",
        kind=str, choices=BLOCK_MODES, modelled=False,
    ),
    Option(
        "hybrid_layers", None,
        "hybrid ZO/FO: layers from the input trained by ZO (an int, or a fraction)",
        kind=object, check=_is_layers, problem="an int number of layers or a fraction in [0, 1]",
        optional=True, parse=int_or_float, modelled=False,
    ),
    Option(
        "fo_lr", None, "hybrid ZO/FO: learning rate of the FO part (default: lr)",
        check=finite_at_least(0), problem="a finite number >= 0", optional=True,
    ),
    Option(
        "sparsity", 0.0, "fraction of each tensor's perturbation masked out",
        check=in_unit(), problem="in [0, 1)", modelled=False,
    ),
    Option("sparsity_mode", "uniform", "which entries the sparse mask keeps", kind=str,
           choices=SPARSITY_MODES, modelled=False),
    Option(
        "mask_every", 1, "resample the sparse mask every N steps", kind=int,
        check=lambda v: is_int(v) and v >= 1, problem="an int >= 1", modelled=False,
    ),
    Option(
        "stochastic_rounding", True,
        "fp16/bf16 weights: stochastically rounded updates (off: to nearest)", kind=bool,
        check=lambda v: isinstance(v, bool), problem="true or false", modelled=False,
    ),
)


def _annotation(option: Option) -> Any:
    kind = int | float if option.kind is object else option.kind
    return kind | None if option.optional else kind


def _check_shared(self: Any) -> None:
    # Each value was validated with its declaration (OptimizerEntry.resolve); what is left is
    # the one rule across shared options.
    if self.distribution == "mezo" and not 0 <= self.seed < NUMPY_SEED_LIMIT:
        raise ValueError(
            f"Invalid seed: {self.seed} (distribution 'mezo' seeds numpy's RandomState, "
            "which takes 0 <= seed < 2**32)"
        )


# The shared options as one frozen record, its fields generated from ZO_OPTIONS (names,
# types, defaults): ZerothOrderOptimizer takes one, built by OptimizerEntry.resolve from
# values it validated.
ZOOptions = make_dataclass(
    "ZOOptions",
    [(o.name, _annotation(o), field(default=o.default)) for o in ZO_OPTIONS],
    frozen=True,
    namespace={
        "__doc__": "What every zeroth-order method shares, one field per :data:`ZO_OPTIONS` "
        "declaration (Forward-Grad ignores ``eps`` and ``probe``: its estimate has no finite "
        "difference). Built by :meth:`zotune.optim.registry.OptimizerEntry.resolve`, which "
        "validates each value with its declaration.",
        "__post_init__": _check_shared,
        "__module__": __name__,
    },
)
