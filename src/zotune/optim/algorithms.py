"""The eight optimizers of the ZO benchmark and the low-rank ZO methods after it: a public
class and a registry entry each.

=============== =========================== =============== ==============================
key             class                       estimator       rule (step)
=============== =========================== =============== ==============================
zo-sgd          :class:`ZOSGD`              RGE             SGD
zo-sgd-mmt      :class:`ZOSGDMomentum`      RGE             momentum
zo-sgd-cons     :class:`ZOSGDConservative`  RGE             SGD or AdamW (conservative)
zo-sgd-sign     :class:`ZOSGDSign`          RGE             sign, then SGD or AdamW
zo-adam         :class:`ZOAdam`             RGE             Adam
forward-grad    :class:`ForwardGrad`        forward-mode AD SGD
lozo            :class:`LOZO`               RGE, U Vᵀ       SGD
lozo-m          :class:`LOZOM`              RGE, U Vᵀ       momentum on the m×r factor
subzero         :class:`SubZero`            RGE, U Σ Vᵀ     SGD (momentum optional)
fo-sgd          :class:`FOSGD`              backprop        SGD (momentum optional)
fo-adam         :class:`FOAdam`             backprop        Adam
=============== =========================== =============== ==============================

Each class takes ``(params, lr, **options)``; the options, their defaults and their help
are the registry entry's (``inspect.signature`` shows them). The zeroth-order ones also take
the shared options of :class:`zotune.optim.options.ZOOptions`: the estimate (``eps``,
``q``, ``probe``), the directions (``distribution``, ``table_numel``, ``seed``) and the
enhancements of ZO-Bench §5 (``block_level``/``block_mode``, ``hybrid_layers``,
``sparsity``/``sparsity_mode``/``mask_every``; see :mod:`zotune.enhance`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from ..estimators.low_rank import LOZODirections, SubZeroDirections, square_shape
from . import hessian, rules, svrg  # noqa: F401  (register HiZOO's and MeZO-SVRG's steps)
from .base import FirstOrderOptimizer, Params, ZerothOrderOptimizer
from .options import (
    ANCHOR_BATCH_SIZE,
    ANCHOR_EVERY,
    ANCHOR_LR,
    BASE,
    CONTROL_AT,
    HESSIAN_SMOOTH,
    LOZO_BETA,
    LOZO_INTERVAL,
    LOZO_RANK,
    LOZO_UPDATE,
    MAX_GRAD_NORM,
    SIGN_OF,
    SPARSE_MEZO_MODE,
    SPARSE_MEZO_SPARSITY,
    SUBZERO_INTERVAL,
    SUBZERO_RANK,
    SUBZERO_SQUARE,
    check_base,
    check_momentum,
    check_sign,
    momentum,
)
from .registry import OptimizerEntry, register


def _entry_for(cls: type) -> OptimizerEntry:
    from .registry import entry_of

    for klass in cls.__mro__:
        try:
            return entry_of(klass)
        except LookupError:
            continue
    raise LookupError(f"{cls.__name__} has no registry entry")


class _Registered:
    """An optimizer class assembled from its registry entry: ``cls(params, lr, **options)``
    validates the options (:meth:`zotune.optim.registry.OptimizerEntry.resolve`) and builds
    the parts from them."""

    def __init__(self, params: Params, lr: float, **options: Any) -> None:
        entry = _entry_for(type(self))
        super().__init__(params, **entry.assemble(entry.resolve({"lr": lr, **options})))


class RegisteredZerothOrder(_Registered, ZerothOrderOptimizer):
    """A zeroth-order optimizer assembled from its registry entry."""


class RegisteredFirstOrder(_Registered, FirstOrderOptimizer):
    """A first-order optimizer assembled from its registry entry."""


def _publish(entry: OptimizerEntry) -> None:
    """Register the entry and give its class the signature its options describe."""
    register(entry)
    parameters = [
        inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("lr", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ]
    for name, option in entry.accepted().items():
        if name != "lr":
            parameters.append(
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option.default)
            )
    entry.cls.__signature__ = inspect.Signature(parameters)


class ZOSGD(RegisteredZerothOrder):
    """ZO-SGD (MeZO; Malladi et al., NeurIPS 2023)::

        θ_{t+1} = θ_t − η (ĝ_t + λ θ_t)

    with ĝ_t the RGE estimate (two-point by default, q queries, scale ε) and λ the decoupled
    weight decay on matrices. No per-parameter state, no stored gradient: the extra memory is
    the shared noise table (16 MiB in fp32 by default, one per device and dtype) or, with
    sampled directions, one chunk of scratch (4 MiB in fp32). A step is three in-place passes
    (+εz, −2εz, restore-and-update; two more in fp16/bf16, see
    :func:`zotune.estimators.base.rounds_coarsely`).
    """


class ZOSGDMomentum(RegisteredZerothOrder):
    """ZO-SGD-MMT (ZO-Bench, Zhang et al., ICML 2024)::

        b_t = μ b_{t−1} + (1 − τ) ĝ_t,   θ_{t+1} = θ_t − η (b_t + λ θ_t)

    The momentum buffer is a parameter-sized tensor per trainable tensor, in fp32 for
    fp16/bf16 weights (4 bytes per trainable value; the update b_t + λθ_t is computed in fp32
    and rounded once into the weight; see :mod:`zotune.optim.rules`).
    """


class ZOSGDConservative(RegisteredZerothOrder):
    """ZO-SGD-Cons (ZO-Bench; after Kim et al., 2021): a ZO-SGD step that never gets worse.

    With ĝ_t the RGE estimate, evaluate three candidates and keep the best::

        θ_{t+1} = argmin { f(θ_t), f(θ_t − η ĝ_t), f(θ_t + η ĝ_t) }

    That costs three forward passes on top of the estimate's (2q + 3 in all for two-point).
    ``base="sgd"`` (the default) is this rule, the paper's. ``base="adamw"`` is what ZO-LLM's
    released runs did (zo-bench/trainer.py:1251-1337; their sweep files pass no
    ``--optimizer``, so the Trainer's transformers AdamW ran, :class:`zotune.optim.rules.
    TransformersAdamW`): the candidates are AdamW steps fed ĝ, −2ĝ and then ĝ or 2ĝ, each
    advancing AdamW's state, so they are not θ_t ± ηĝ and "back to θ_t" lands near it::

        θ¹ = A(θ_t; ĝ),  θ² = A(θ¹; −2ĝ)
        θ_{t+1} = A(θ²; ĝ)    if f(θ¹) > f(θ_t) and f(θ_t) < f(θ²)
                = A(θ²; 2ĝ)   if f(θ¹) ≤ f(θ_t) and f(θ¹) < f(θ²)
                = θ²          otherwise

    with f(θ_t) evaluated before the probes, as the reference does. ``weight_decay`` is not
    offered (the sweeps set 0), and neither are block-wise and hybrid steps
    (:data:`zotune.optim.steps.CONFLICTS`).
    """


class ZOSGDSign(RegisteredZerothOrder):
    """ZO-SGD-Sign (ZO-signSGD; Liu et al., ICLR 2019; ZO-Bench). By default the paper's::

        θ_{t+1} = θ_t − η (sign(ĝ_t) + λ θ_t)

    with the sign taken elementwise of ĝ_t = Σ_k c_k z_k (for q = 1, sign(c_t)·sign(z_t)).
    The released code that produced the paper's numbers did something else (ZO-LLM
    zo-bench/trainer.py:1055-1073): it fed s_t = (1/q) Σ_k sign(c_k) z_k, which keeps z's
    magnitudes, to transformers' AdamW (its sweep files pass no ``--optimizer``; run.py:74's
    default ``adamw`` is the Trainer's ``adamw_hf``, :class:`zotune.optim.rules.TransformersAdamW`).
    Both halves are options: ``sign_of="coefficient"`` uses s_t in place of sign(ĝ_t), and
    ``base="adamw"`` steps with that AdamW (β = ``betas``, δ = ``adam_eps``, its decay λ
    applied after the Adam step) instead of SGD; ``sign_of="coefficient", base="adamw"`` is
    the released run.
    """


class ZOAdam(RegisteredZerothOrder):
    """ZO-Adam (ZO-AdaMM; Chen et al., NeurIPS 2019; ZO-Bench)::

        m_t = β₁ m_{t−1} + (1 − β₁) ĝ_t,   v_t = β₂ v_{t−1} + (1 − β₂) ĝ_t²
        θ_{t+1} = θ_t − η (m̂_t / (√v̂_t + δ) + λ θ_t)

    with bias-corrected m̂, v̂. Two parameter-sized state tensors per trainable tensor, in
    fp32 for fp16/bf16 weights: 2 × 4 bytes per trainable value against the weights' 2 (in
    fp16, v overflows or flushes to zero and δ = 1e-8 rounds to 0; see :mod:`zotune.optim.rules`).
    ``adam_eps`` is Adam's δ; ``eps`` is the perturbation scale ε of the estimate.
    """


class ForwardGrad(RegisteredZerothOrder):
    """Forward-Grad (Baydin et al., 2022): SGD on the forward-mode estimate::

        θ_{t+1} = θ_t − η ((∇f(θ_t)·v_t) v_t + λ θ_t),   v_t ~ N(0, I)

    ∇f·v comes from forward-mode AD: exact, no finite-difference bias, no backward graph, but
    the tangents are model-sized while the forward runs. Models must support forward-mode AD
    in every op: Hugging Face models need ``attn_implementation="eager"`` (the entry's
    ``attention``; ``zotune train`` and the profiler switch to it).
    """


class HiZOO(RegisteredZerothOrder):
    """HiZOO (Zhao et al., ICLR 2025): ZO-SGD along Hessian-scaled directions.

    With H a diagonal Hessian estimate (1 at the start), ℓ₀ = f(θ), ℓ± = f(θ ± ε z/√H) and
    α = ``hessian_smooth``::

        H ← (1 − α) H + α |ℓ₊ + ℓ₋ − 2ℓ₀| / (2ε²) · H ⊙ z²
        θ ← θ − η ((ℓ₊ − ℓ₋)/(2ε) · z/√H + λθ)

    Three forward passes per step and H as one parameter-sized state tensor (fp32 for
    fp16/bf16 weights); one query (``q`` and ``probe`` are not offered). See
    :mod:`zotune.optim.hessian` for the pass structure and docs/results/fidelity.md for
    where zotune departs from the authors' code (no fourth forward pass after the update,
    weight decay on matrices only).
    """


class SparseMeZO(RegisteredZerothOrder):
    """Sparse-MeZO (Liu et al., 2024): ZO-SGD that perturbs and updates only small weights.

    With m_t = [|θ_t| ≤ h_i] recomputed from the current weights at every step and h_i
    fixed at the start (the (1 − s)-quantile of |θ| of tensor i, s = ``sparsity``)::

        ĝ_t = [(f(θ_t + ε m_t⊙z) − f(θ_t − ε m_t⊙z)) / (2ε)] · m_t⊙z
        θ_{t+1} = θ_t − η (ĝ_t + λ θ_t)

    The authors published no code: this follows the paper's algorithm (see
    :mod:`zotune.enhance.sparse` and docs/results/fidelity.md). It is ZO-SGD with the
    shared sparsity options defaulting to Sparse-MeZO's mask; the step's mask is held
    bit-packed (1 bit per trainable value).
    """


class MeZOSVRG(RegisteredZerothOrder):
    """MeZO-SVRG (Gautam et al., ICML 2024): ZO-SGD with SVRG control variates.

    Every ``anchor_every`` (P) steps an anchor step estimates g on a large batch A
    (``anchor_batch_size`` examples, supplied by the training loop) and moves by η₁ =
    ``anchor_lr``; the steps between move by η₂ = ``lr`` along the control-variate estimate
    on the loop's batch B, with fresh directions z₁, z₂::

        θ_{t+1} = θ_t − η₂ (ĝ_B(θ_t; z₁) − ĝ_B(θ_c; z₂) + g)

    θ_c is the anchor θ̄ (the paper, ``control_at="anchor"``, one parameter-sized state
    tensor) or, as in the authors' code (the default), the current weights after the first
    estimate's move. Forward passes per period: 2 on A, 4 per control step on B. See
    :mod:`zotune.optim.svrg`.
    """


class FOSGD(RegisteredFirstOrder):
    """FO-SGD: θ_{t+1} = θ_t − η (∇f(θ_t) + λ θ_t), optionally with heavy-ball momentum.

    Without weight decay it matches ``torch.optim.SGD`` step for step. zotune's weight decay
    is decoupled and applied to matrices only (torch's SGD adds λθ to every gradient).

    As the paper's FO baseline (``zotune train``, the bench): steps in train mode (dropout
    on; ZO probes stay in eval mode, as MeZO's), gradients clipped at norm 1.0, constant LR.
    Remaining differences from ZO-LLM's FO-SGD runs (docs/results/fidelity.md): its full
    and prompt "SGD" sweeps ran HF's default AdamW (zo-bench/sweeps/SST2_opt-1.3b/sgd/
    sgd_cls_ft.yml passes no ``--optimizer``) under fp16 mixed precision; zotune runs SGD in
    the model's dtype, with the momentum buffer in fp32 for fp16/bf16 weights.
    """


class FOAdam(RegisteredFirstOrder):
    """FO-Adam: Adam on backprop gradients (Kingma & Ba, 2015), decoupled weight decay.

    Without weight decay it matches ``torch.optim.Adam``; with it, ``torch.optim.AdamW``
    restricted to matrices. ``adam_eps`` is Adam's δ (``eps`` in torch). As the paper's FO
    baseline it steps in train mode with gradients clipped at norm 1.0 (see :class:`FOSGD`);
    ZO-LLM built ``torch.optim.Adam(params, lr)``, so its swept weight decay never applied.
    For fp16/bf16 weights m and v are fp32 (2 × 4 bytes per trainable value) and the update
    is computed in fp32 from the widened gradient, then rounded to the weights' dtype.
    """


_publish(OptimizerEntry(
    key="zo-sgd", summary="ZO-SGD (MeZO)", estimator="rge", cls=ZOSGD,
    rule=lambda o: rules.sgd(),
))
_publish(OptimizerEntry(
    key="zo-sgd-mmt", summary="ZO-SGD with heavy-ball momentum", estimator="rge",
    cls=ZOSGDMomentum, rule=lambda o: rules.momentum(), options=(momentum(0.9),),
    check=check_momentum,
))
# The momentum rule's hyperparameters, for the optimizers whose default μ = 0 builds plain SGD.
_MOMENTUM = rules.Momentum.hyperparameters
def _on_base(base: str, *front: rules.Transform, coefficients=None) -> rules.Rule:
    """``front`` then SGD with decoupled decay, or then transformers' AdamW (decay inside)."""
    last = rules.TransformersAdamW() if base == "adamw" else rules.DecoupledWeightDecay()
    return rules.Rule(*front, last, coefficients=coefficients)


def _sign_rule(options) -> rules.Rule:
    if options["sign_of"] == "coefficient":
        return _on_base(options["base"], coefficients=rules.coefficient_signs)
    return _on_base(options["base"], rules.Sign())


_publish(OptimizerEntry(
    key="zo-sgd-cons", summary="conservative ZO-SGD (best of three candidates)",
    estimator="rge", cls=ZOSGDConservative, rule=lambda o: _on_base(o["base"]),
    step="conservative", options=(BASE,), unsupported=("weight_decay",), check=check_base,
))
_publish(OptimizerEntry(
    key="zo-sgd-sign", summary="ZO-signSGD", estimator="rge", cls=ZOSGDSign,
    rule=_sign_rule, options=(SIGN_OF, BASE), check=check_sign,
))
_publish(OptimizerEntry(
    key="zo-adam", summary="ZO-Adam (ZO-AdaMM)", estimator="rge", cls=ZOAdam,
    rule=lambda o: rules.adam(),
))
_publish(OptimizerEntry(
    key="forward-grad", summary="Forward-Grad (forward-mode AD)", estimator="forward-grad",
    cls=ForwardGrad, rule=lambda o: rules.sgd(), unsupported=("eps", "probe"),
    attention="eager",
))
_publish(OptimizerEntry(
    key="fo-sgd", summary="FO-SGD (backprop)", estimator="backprop", cls=FOSGD,
    rule=lambda o: rules.momentum() if o["momentum"] else rules.sgd(),
    options=(*_MOMENTUM, MAX_GRAD_NORM), check=check_momentum,
))
_publish(OptimizerEntry(
    key="fo-adam", summary="FO-Adam (backprop)", estimator="backprop", cls=FOAdam,
    rule=lambda o: rules.adam(), options=(MAX_GRAD_NORM,),
))


class LOZO(RegisteredZerothOrder):
    """LOZO (Chen et al., ICLR 2025; code optsuite/LOZO): ZO-SGD on low-rank directions::

        Z_t = U_t V_kᵀ          for each matrix W ∈ ℝ^{m×n}, U_t ∈ ℝ^{m×r} new every step,
                                V_k ∈ ℝ^{n×r} redrawn at steps t ≡ 0 (mod ν)
        c_t = (f(θ + εZ_t) − f(θ − εZ_t)) / (2ε)
        W_{t+1} = W_t − η (c_t Z_t + λ W_t)

    Non-matrix tensors get a dense Gaussian z, as in the authors' code. Directions are drawn
    as the authors' ``lowrank_zo_perturb_parameters`` draws them (one generator per step seed,
    tensor by tensor; :class:`zotune.estimators.low_rank.LOZODirections`), in float32 for
    fp16/bf16 weights. Z is not rescaled: E‖Z‖² = r·mn, so lr and ε act r-fold on matrices.
    ``lozo_update="reference"`` (the code) updates along U′V_kᵀ at a V redraw, U′ the stream's
    values after reseeding without the V draw (the update pass skips it: one step in ν is a
    step along a direction that was not probed); ``"probed"`` is the paper's Algorithm 1.
    State: V (n × r) per matrix; no parameter-sized state. Weight decay by tensor rank (the
    code excludes names containing "bias" or "layer_norm").
    """


class LOZOM(RegisteredZerothOrder):
    """LOZO-M (Chen et al., ICLR 2025): LOZO with momentum kept on the m×r factor::

        N_t = β N_{t−1} + (1 − β) c_t U_t                      within a period of V
        N_t = β N_{t−1} V_oldᵀ V_new / n + (1 − β) c_t U_t      when V is redrawn (ν > 1)
        W_{t+1} = W_t − η (N_t V_kᵀ + λ W_t)

    with N_1 = c_1 U_1 (and N = c U at every redraw when ν = 1, where the code keeps no
    V_old). Non-matrix tensors keep a dense buffer b_t = β b_{t−1} + (1 − β) c_t z_t
    (b_1 = c_1 z_1). As optsuite/LOZO medium_models/src/LOZOtrainer.py
    ``lowrank_zo_update_momentum`` (the only trainer of the repository with LOZO-M). The
    momentum lives in the direction sampler: N (m × r) and V_old (n × r) per matrix, a
    buffer per vector; the update is one fused pass along N Vᵀ.
    """


class SubZero(RegisteredZerothOrder):
    """SubZero (random-subspace ZO; arXiv 2410.08989; code PawnDragon/SubZero)::

        Z_t = √(ab / r²) · U_k Σ_t V_kᵀ     per matrix (a × b), Σ_t ∈ ℝ^{r×r} Gaussian each step,
                                          U_k = qr(G_{a×r}).Q, V_k = qr(G_{b×r}).Q every T steps
        c_t = (f(θ + εZ_t) − f(θ − εZ_t)) / (2ε),   θ_{t+1} = θ_t − η b_t,
        b_t = μ b_{t−1} + c_t Z_t  (torch SGD momentum; μ = 0 by default: b_t = c_t Z_t)

    As the authors' ``zo_subspace_step``/``zo_subspace_update`` (large_models/trainer.py at
    cf6effd, the paper's release): a tensor is a matrix when it has two dimensions after
    squeezing; with ``subzero_square`` (the authors' LoRA/prefix/prompt mode) it is viewed as
    its most nearly square a × b reshape. Other tensors get a dense Gaussian z. The update is
    torch SGD without weight decay (the code builds SGD(lr, momentum) only), so no
    ``weight_decay`` is offered. State: U (a × r) and V (b × r) per matrix.
    """


_FACTORED_UNSUPPORTED = ("distribution", "table_numel", "sparsity", "sparsity_mode", "mask_every")


def _lozo_values(shape: tuple[int, ...], o: Mapping[str, Any], momentum: bool) -> int:
    """V, plus U of each probed seed and update seed (q each), kept through the step; with
    momentum, N and V_old (or a vector's buffer)."""
    numel = math.prod(shape)
    if len(shape) != 2:
        return (2 * o["q"] + momentum) * numel
    rows, columns = shape
    rank = o["lozo_rank"]
    return (columns + 2 * o["q"] * rows + momentum * (rows + columns)) * rank


def _subzero_values(shape: tuple[int, ...], o: Mapping[str, Any]) -> int:
    """U, V, and U Σ of each seed (non-matrices: each seed's z)."""
    numel = math.prod(shape)
    squeezed = [size for size in shape if size != 1]
    if len(squeezed) != 2:
        return o["q"] * numel
    rows, columns = square_shape(numel) if o["subzero_square"] else squeezed
    rank = o["subzero_rank"]
    return (rows + columns + o["q"] * (rows + rank)) * rank


def _lozo_directions(o: Mapping[str, Any], momentum: bool):
    def build(base, params, seed):
        return LOZODirections(
            base, params, seed, rank=o["lozo_rank"], interval=o["lozo_interval"],
            update=o["lozo_update"], beta=o["lozo_beta"] if momentum else None,
        )
    return build


def _subzero_directions(o: Mapping[str, Any]):
    def build(base, params, seed):
        return SubZeroDirections(
            base, params, seed, rank=o["subzero_rank"], interval=o["subzero_interval"],
            square=o["subzero_square"],
        )
    return build


_publish(OptimizerEntry(
    key="lozo", summary="LOZO: ZO-SGD on low-rank U Vᵀ directions", estimator="rge",
    cls=LOZO, rule=lambda o: rules.sgd(),
    options=(LOZO_RANK, LOZO_INTERVAL, LOZO_UPDATE),
    unsupported=_FACTORED_UNSUPPORTED,
    directions=lambda o: _lozo_directions(o, momentum=False),
    factor_values=lambda shape, o: _lozo_values(shape, o, momentum=False),
))
_publish(OptimizerEntry(
    key="lozo-m", summary="LOZO-M: LOZO with momentum on the low-rank factor",
    estimator="rge", cls=LOZOM, rule=lambda o: rules.sgd(),
    options=(LOZO_RANK, LOZO_INTERVAL, LOZO_BETA, LOZO_UPDATE),
    unsupported=_FACTORED_UNSUPPORTED,
    directions=lambda o: _lozo_directions(o, momentum=True),
    factor_values=lambda shape, o: _lozo_values(shape, o, momentum=True),
))
def _is_adapter(scheme: str) -> bool:
    """Whether ``scheme`` trains adapters (SubZero's LoRA/prefix/prompt mode)."""
    from ..tuning.registry import scheme_keys

    return scheme in scheme_keys(adapter=True)


_publish(OptimizerEntry(
    key="subzero", summary="SubZero: ZO-SGD in random subspaces U Σ Vᵀ", estimator="rge",
    cls=SubZero, rule=lambda o: rules.momentum() if o["momentum"] else rules.sgd(),
    options=(SUBZERO_RANK, SUBZERO_INTERVAL, SUBZERO_SQUARE, *_MOMENTUM),
    check=check_momentum,
    unsupported=(*_FACTORED_UNSUPPORTED, "weight_decay"),
    directions=_subzero_directions,
    factor_values=_subzero_values,
    scheme_defaults=lambda scheme: {"subzero_square": _is_adapter(scheme)},
))
_publish(OptimizerEntry(
    key="hizoo", summary="HiZOO (Hessian-informed ZO-SGD)", estimator="rge", cls=HiZOO,
    rule=lambda o: rules.sgd(), options=(HESSIAN_SMOOTH,), step="hessian",
    unsupported=("q", "probe"),
))
_publish(OptimizerEntry(
    key="sparse-mezo", summary="Sparse-MeZO (ZO-SGD on the small weights)", estimator="rge",
    cls=SparseMeZO, rule=lambda o: rules.sgd(),
    options=(SPARSE_MEZO_SPARSITY, SPARSE_MEZO_MODE),
))
_publish(OptimizerEntry(
    key="mezo-svrg", summary="MeZO-SVRG (variance-reduced ZO-SGD)", estimator="rge",
    cls=MeZOSVRG, rule=lambda o: rules.sgd(), step="svrg",
    options=(ANCHOR_LR, ANCHOR_EVERY, ANCHOR_BATCH_SIZE, CONTROL_AT),
    unsupported=("weight_decay",),
))
