"""Low-rank directions for matrices: LOZO's U Vᵀ and SubZero's U Σ Vᵀ, drawn as their authors draw.

For a trainable matrix W ∈ ℝ^{m×n} both methods perturb along a rank-r matrix instead of a
dense Gaussian one; every other trainable tensor (biases, norm gains) gets a dense Gaussian z,
as in the reference code.

* **LOZO** (Chen et al., ICLR 2025; optsuite/LOZO ``large_models/LOZOtrainer.py``
  ``lowrank_zo_perturb_parameters``)::

      Z_t = U_t V_kᵀ,   U_t ∈ ℝ^{m×r} drawn every step,   V_k ∈ ℝ^{n×r} drawn at steps t ≡ 0 (mod ν)

  with standard Gaussian entries and no rescaling (E‖Z‖² = r·mn, r times a dense z's).
* **LOZO-M**: momentum kept on the m×r factor, N_t = β N_{t−1} + (1 − β) ĉ_t U_t, update
  N_t V_kᵀ; when V is redrawn the factor is carried over as β N V_oldᵀ V_new / n
  (``medium_models/src/LOZOtrainer.py`` ``lowrank_zo_update_momentum``). See
  :meth:`LOZODirections.update_terms`.
* **SubZero** (arXiv 2410.08989; PawnDragon/SubZero ``large_models/trainer.py``
  ``zo_subspace_perturb_parameters``, ``fast_svd_method_v2``)::

      Z_t = √(mn / r²) · U_k Σ_t V_kᵀ,   U_k = qr(G_m×r).Q, V_k = qr(G_n×r).Q, every T steps

  with Σ_t ∈ ℝ^{r×r} standard Gaussian drawn every step (E‖Z‖² = mn). A tensor is a matrix
  when it has two dimensions after squeezing; ``square`` views every such tensor as the most
  nearly square a × b with ab = numel, as the reference does for LoRA, prefix and prompt
  tuning (``reshape_matrix``).

The stream is the authors': for each query seed s, one generator (per device) seeded with s
draws, tensor by tensor in parameter order, LOZO's [V at a refresh], U for a matrix and z for
any other tensor, or SubZero's Σ and z, in the tensor's rule dtype (float32 for fp16/bf16
weights). Drawing all factors of a seed at once is cheap, because no factor is larger than a
weight's row or column times r: the directions of a seed are kept until the next step and a
matrix chunk is computed as rows of the product when a pass needs it (one chunk of scratch,
plus the product's). The golden tests (tests/test_golden_frontier_lowrank.py) replay the
reference code on these draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..optim.rules import state_dtype
from .directions import DirectionSampler, IndexedParam, mix_seed

_UPDATE_SALT = 0x10A0_0001  # LOZO's update draws at a refresh, under a seed of their own
_MOMENTUM_SALT = 0x10A0_0002  # LOZO-M's N Vᵀ, under a seed of its own
_BASIS_SALT = 0x5AB_2E60  # SubZero's bases of a period

LOZO_UPDATES = ("reference", "probed")


@dataclass(frozen=True)
class Factored:
    """z = scale · left @ right, for a matrix of left.shape[0] × right.shape[1] values."""

    left: Tensor
    right: Tensor
    scale: float = 1.0


Draw = Factored | Tensor  # a tensor: the dense z of a non-matrix tensor, in its shape


class StepStreamSampler(DirectionSampler):
    """Directions of a seed drawn for every trainable tensor at once, from one generator.

    Subclasses say which tensors are matrices and what a seed draws (:meth:`draw_set`);
    this class turns the draws into chunks of z for the passes of a step.
    """

    def __init__(self, base: DirectionSampler, params: Sequence[IndexedParam], seed: int) -> None:
        super().__init__("gaussian", base.chunk_numel, base.table_numel)
        self.params = sorted(params, key=lambda item: item.index)
        self.seed = seed
        self.step = 0
        self._sets: dict[int, dict[int, Draw]] = {}
        self._origins: dict[int, tuple[int, int]] = {}  # derived seed → (salt, seed)

    def set_step(self, step: int) -> None:
        self.step = step
        self._sets.clear()
        self._origins.clear()

    def draw_set(self, seed: int) -> dict[int, Draw]:
        """Tensor index → its draw under ``seed``."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        # The optimizer's seed, which a resumed optimizer built with another one takes back.
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])

    def derive(self, seed: int, salt: int) -> int:
        """A seed of its own for draws that are a function of ``seed`` (update draws, momentum)."""
        derived = mix_seed(seed, salt)
        self._origins[derived] = (salt, seed)
        return derived

    def origin(self, seed: int) -> tuple[int, int] | None:
        return self._origins.get(seed)

    def drawn(self, seed: int) -> dict[int, Draw]:
        found = self._sets.get(seed)
        if found is None:
            found = self._sets[seed] = self.draw_set(seed)
        return found

    def generator(self, device: torch.device, seed: int) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        return generator.manual_seed(seed)

    def seeded(self, seed: int) -> dict[torch.device, torch.Generator]:
        """One generator per device, each seeded with ``seed`` (torch.manual_seed's effect)."""
        return {
            device: self.generator(device, seed)
            for device in dict.fromkeys(item.param.device for item in self.params)
        }

    def _fill(self, out: Tensor, seed: int, index: int, chunk: int) -> None:
        drawn = self.drawn(seed)[index]
        flat = out.view(-1)
        start = chunk * self.chunk_numel
        if not isinstance(drawn, Factored):
            flat.copy_(drawn.reshape(-1)[start : start + flat.numel()])
            return
        columns = drawn.right.shape[1]
        first, last = start // columns, (start + flat.numel() - 1) // columns + 1
        block = drawn.left[first:last] @ drawn.right
        if drawn.scale != 1.0:
            block.mul_(drawn.scale)
        offset = start - first * columns
        flat.copy_(block.view(-1)[offset : offset + flat.numel()])

    def low_rank_factors(self, seed: int, index: int) -> tuple[Tensor, Tensor, float] | None:
        if type(self)._fill is not StepStreamSampler._fill:  # a subclass draws its own way
            return None
        drawn = self.drawn(seed)[index]
        if not isinstance(drawn, Factored):
            return None
        return drawn.left, drawn.right, drawn.scale

    @torch.no_grad()
    def add_(self, params: Sequence[IndexedParam], seed: int, alpha: float) -> None:
        if alpha == 0.0:
            return
        for item in params:
            for chunk, view in self.views(item.param):
                view.add_(self.draw(view, seed, item.index, chunk), alpha=alpha)


def _randn(generator: torch.Generator, shape, like: Tensor) -> Tensor:
    return torch.randn(
        shape, generator=generator, device=like.device, dtype=state_dtype(like.dtype)
    )


class LOZODirections(StepStreamSampler):
    """LOZO's Z = U Vᵀ (and LOZO-M's factor momentum): see the module docstring.

    ``interval`` is ν; a step t with t mod ν = 0 draws a new V for every matrix, first in each
    matrix's share of the stream. ``update``: at such a step the authors' update pass reseeds
    the stream and draws U without drawing V first, so it updates along U′Vᵀ, U′ the values
    the probes drew as V (``"reference"``; ``lowrank_zo_update`` in both trainers); the
    paper's Algorithm 1 updates along the probed U Vᵀ (``"probed"``). ``beta`` turns on LOZO-M.
    """

    def __init__(
        self,
        base: DirectionSampler,
        params: Sequence[IndexedParam],
        seed: int,
        *,
        rank: int,
        interval: int,
        update: str = "reference",
        beta: float | None = None,
    ) -> None:
        super().__init__(base, params, seed)
        self.rank, self.interval, self.update, self.beta = rank, interval, update, beta
        self.v: dict[int, Tensor] = {}
        self.v_old: dict[int, Tensor] = {}
        self.momentum: dict[int, Tensor] = {}
        self._v_step: dict[int, int] = {}

    @staticmethod
    def is_matrix(param: Tensor) -> bool:
        return param.ndim == 2

    @property
    def refresh(self) -> bool:
        return self.step % self.interval == 0

    def draw_set(self, seed: int) -> dict[int, Draw]:
        origin = self.origin(seed)
        if origin is not None and origin[0] == _MOMENTUM_SALT:
            raise KeyError(f"LOZO-M momentum directions of seed {origin[1]} were not formed")
        updating = origin is not None
        generators = self.seeded(origin[1] if updating else seed)
        drawn: dict[int, Draw] = {}
        for item in self.params:
            param, index = item.param, item.index
            generator = generators[param.device]
            if not self.is_matrix(param):
                drawn[index] = _randn(generator, param.shape, param)
                continue
            rows, columns = param.shape
            if self.refresh and not updating:
                v = _randn(generator, (columns, self.rank), param)
                if self._v_step.get(index) != self.step:  # the step's first seed sets V
                    if index in self.v:
                        self.v_old[index] = self.v[index]
                    self.v[index], self._v_step[index] = v, self.step
            if index not in self.v:
                raise RuntimeError(
                    f"LOZO: tensor {index} has no V: resume from a checkpoint of this "
                    "optimizer's state_dict, or at a step that is a multiple of the interval"
                )
            u = _randn(generator, (rows, self.rank), param)
            drawn[index] = Factored(u, self.v[index].T)
        return drawn

    def update_terms(self, terms, params):
        terms = tuple(terms)
        if self.update == "reference" and self.refresh:
            terms = tuple((self.derive(seed, _UPDATE_SALT), coeff) for seed, coeff in terms)
        if self.beta is None:
            return terms
        return self._momentum_terms(terms, params)

    def _momentum_terms(self, terms, params) -> tuple[tuple[int, float], ...]:
        """LOZO-M (``lowrank_zo_update_momentum``), for G = Σ_k c_k U_k (z_k for vectors)::

            N ← G                                   first step, or a refresh with ν = 1
            N ← β N V_oldᵀ V / n + (1 − β) G          a refresh (V_old: the last period's V)
            N ← β N + (1 − β) G                      otherwise

        and the update direction is N Vᵀ with coefficient 1 (non-matrices: their momentum
        buffer b, formed alike without the projection).
        """
        beta = self.beta
        sets = [(self.drawn(seed), coeff) for seed, coeff in terms]
        key = self.derive(terms[0][0], _MOMENTUM_SALT)
        formed = self._sets.setdefault(key, {})
        for item in params:
            index = item.index
            first = sets[0][0][index]
            matrix = isinstance(first, Factored)
            parts = [(drawn[index].left if matrix else drawn[index], c) for drawn, c in sets]
            g = parts[0][0] * parts[0][1]
            for part, coeff in parts[1:]:
                g = g + part * coeff
            buffer = self.momentum.get(index)
            old = self.v_old.get(index) if matrix and self.interval > 1 else None
            if buffer is None or (matrix and self.refresh and old is None):
                buffer = g
            elif matrix and self.refresh:
                v = self.v[index]
                buffer = beta * buffer @ old.T @ v / old.shape[0] + (1 - beta) * g
            else:
                buffer = beta * buffer + (1 - beta) * g
            self.momentum[index] = buffer
            formed[index] = Factored(buffer, self.v[index].T) if matrix else buffer
        return ((key, 1.0),)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "v": dict(self.v), "v_old": dict(self.v_old), "momentum": dict(self.momentum),
            "v_step": dict(self._v_step),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.v, self.v_old = dict(state["v"]), dict(state["v_old"])
        self.momentum, self._v_step = dict(state["momentum"]), dict(state["v_step"])


def square_shape(numel: int) -> tuple[int, int]:
    """The a × b with a·b = numel, a ≤ b and b − a smallest (SubZero's ``reshape_matrix``)."""
    for a in range(math.isqrt(numel), 0, -1):
        if numel % a == 0:
            return a, numel // a
    return 1, numel


class SubZeroDirections(StepStreamSampler):
    """SubZero's Z = √(ab/(k_U k_V)) U Σ Vᵀ: see the module docstring.

    At every step t with t mod ``interval`` = 0 (and when first needed, e.g. on resume), the
    bases of the period are drawn from one generator seeded with :meth:`basis_seed`, matrix by
    matrix in parameter order: U = qr(randn(a, r)).Q, then V = qr(randn(b, r)).Q (reduced QR:
    k_U = min(a, r) columns). The authors draw them from the global generator wherever the
    previous step left it; a seed of their own makes them reproducible on resume.
    """

    def __init__(
        self,
        base: DirectionSampler,
        params: Sequence[IndexedParam],
        seed: int,
        *,
        rank: int,
        interval: int,
        square: bool = False,
    ) -> None:
        super().__init__(base, params, seed)
        self.rank, self.interval, self.square = rank, interval, square
        self.bases: dict[int, tuple[Tensor, Tensor]] = {}
        self._period: int | None = None

    def matrix_shape(self, param: Tensor) -> tuple[int, int] | None:
        squeezed = [size for size in param.shape if size != 1]
        if len(squeezed) != 2:
            return None
        return square_shape(param.numel()) if self.square else (squeezed[0], squeezed[1])

    def basis_seed(self, period: int) -> int:
        """The seed of the bases of period ⌊t / interval⌋."""
        return mix_seed(self.seed, period, _BASIS_SALT)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._period = None  # the bases of another seed: draw them again

    def set_step(self, step: int) -> None:
        super().set_step(step)
        period = step // self.interval
        if period != self._period:
            self._draw_bases(period)

    def _draw_bases(self, period: int) -> None:
        generators = self.seeded(self.basis_seed(period))
        self.bases = {}
        for item in self.params:
            shape = self.matrix_shape(item.param)
            if shape is None:
                continue
            generator = generators[item.param.device]
            u = torch.linalg.qr(_randn(generator, (shape[0], self.rank), item.param)).Q
            v = torch.linalg.qr(_randn(generator, (shape[1], self.rank), item.param)).Q
            self.bases[item.index] = (u, v.T)
        self._period = period

    def draw_set(self, seed: int) -> dict[int, Draw]:
        generators = self.seeded(seed)
        drawn: dict[int, Draw] = {}
        for item in self.params:
            param, index = item.param, item.index
            generator = generators[param.device]
            basis = self.bases.get(index)
            if basis is None:
                drawn[index] = _randn(generator, param.shape, param)
                continue
            u, vt = basis
            sigma = _randn(generator, (u.shape[1], vt.shape[0]), param)
            scale = math.sqrt(param.numel() / sigma.numel())
            drawn[index] = Factored(u @ sigma, vt, scale)
        return drawn
