"""Randomized gradient estimation (RGE) from loss values alone."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import (
    NO_SHARING,
    Closure,
    DirectionalEstimate,
    ProbeSharing,
    check_finite,
    evaluate,
    probe_table,
    shift,
)
from .directions import DEFAULT_CHUNK_NUMEL, DEFAULT_TABLE_NUMEL, DirectionSampler, IndexedParam

PROBES = ("two-point", "one-sided")


class RandomGradientEstimator:
    """Estimate ∇f(θ) from q random directions, with only forward passes.

    Two-point (MeZO, ZO-Bench)::

        ĝ = (1/q) Σ_k [(f(θ + εz_k) − f(θ − εz_k)) / (2ε)] · z_k         (2q forward passes)

    One-sided, sharing one base loss across the q queries::

        ĝ = (1/q) Σ_k [(f(θ + εz_k) − f(θ)) / ε] · z_k                   (q + 1 forward passes)

    With E[z zᵀ] = I both are unbiased for the gradient of the Gaussian-smoothed loss, which
    approaches ∇f as ε → 0 (Nesterov & Spokoiny, 2017).

    The parameters are moved in place; consecutive moves share one pass (undo query k and
    apply query k+1 together), and the last displacement is left for the optimizer to remove
    in the pass that applies the update (:class:`DirectionalEstimate.offset`). The move
    from θ + εz to θ − εz is written as two legs of −εz: one axpy in fp32, two roundings in
    fp16/bf16, the first landing back on θ (see :func:`zotune.estimators.base.shift`).
    Directions come from :class:`DirectionSampler` (``distribution``: ``auto``, ``table``,
    ``gaussian``, ``rademacher``, ``mezo``), and so do the q query seeds of a step.

    The probe values go into a ``[q, 2]`` table that ``sharing`` (:class:`ProbeSharing`)
    combines across processes before the coefficients are taken: one collective per step for
    data-parallel or query-parallel ZO (:mod:`zotune.training.distributed`).

    ``eps``, ``q`` and ``probe`` are taken as given: the optimizers build the estimator from
    options their registry entry validated (:data:`zotune.optim.options.ZO_OPTIONS`).
    """

    def __init__(
        self,
        eps: float = 1e-3,
        q: int = 1,
        probe: str = "two-point",
        distribution: str = "auto",
        chunk_numel: int = DEFAULT_CHUNK_NUMEL,
        table_numel: int = DEFAULT_TABLE_NUMEL,
    ) -> None:
        self.eps = float(eps)
        self.q = q
        self.probe = probe
        self.sampler = DirectionSampler(distribution, chunk_numel, table_numel)
        self.sharing: ProbeSharing = NO_SHARING

    @property
    def forward_passes(self) -> int:
        return 2 * self.q if self.probe == "two-point" else self.q + 1

    @torch.no_grad()
    def estimate(
        self, params: Sequence[IndexedParam], closure: Closure, seed: int
    ) -> DirectionalEstimate:
        seeds = self.sampler.query_seeds(seed, self.q)
        self.sampler.cover(params, seeds)
        if self.probe == "two-point":
            return self._two_point(params, closure, seeds)
        return self._one_sided(params, closure, seeds)

    def _two_point(self, params, closure, seeds) -> DirectionalEstimate:
        eps, q = self.eps, self.q
        mine = self.sharing.queries(q)
        table = probe_table(q, 2)  # row k: f(θ + εz_k), f(θ − εz_k)
        previous: list[tuple[int, float]] = []  # the move that undoes the last probe
        undo: list[tuple[int, float]] = []  # the move back to θ from where θ is now
        try:
            for k in mine:
                shift(params, self.sampler, [*previous, (seeds[k], eps)])
                undo = [(seeds[k], -eps)]
                table[k, 0] = evaluate(closure)
                shift(params, self.sampler, [(seeds[k], -eps), (seeds[k], -eps)])
                undo = previous = [(seeds[k], eps)]
                table[k, 1] = evaluate(closure)
        except BaseException:
            shift(params, self.sampler, undo)  # a failing closure must not leave θ moved
            raise
        table = self.sharing.combine(table)
        check_finite(table, lambda: shift(params, self.sampler, previous))
        coeffs = (table[:, 0] - table[:, 1]) / (2 * eps * q)
        return DirectionalEstimate(
            seeds=seeds,
            coeffs=tuple(coeffs.tolist()),
            offset=-eps if previous else 0.0,
            loss=table.mean(),
            forward_passes=self.forward_passes,
            displaced=previous[0][0] if previous else None,
        )

    def _one_sided(self, params, closure, seeds) -> DirectionalEstimate:
        eps, q = self.eps, self.q
        mine = self.sharing.queries(q)
        # Row k: f(θ), f(θ + εz_k). Each row carries its own base loss, so rows probed by
        # different processes of a query-parallel group stay self-contained.
        table = probe_table(q, 2)
        previous: list[tuple[int, float]] = []
        if len(mine):
            table[list(mine), 0] = float(evaluate(closure))
        try:
            for k in mine:
                shift(params, self.sampler, [*previous, (seeds[k], eps)])
                previous = [(seeds[k], -eps)]
                table[k, 1] = evaluate(closure)
        except BaseException:
            shift(params, self.sampler, previous)  # a failing closure must not leave θ moved
            raise
        table = self.sharing.combine(table)
        check_finite(table, lambda: shift(params, self.sampler, previous))
        coeffs = (table[:, 1] - table[:, 0]) / (eps * q)
        return DirectionalEstimate(
            seeds=seeds,
            coeffs=tuple(coeffs.tolist()),
            offset=eps if previous else 0.0,
            loss=table[:, 0].mean(),
            forward_passes=self.forward_passes,
            displaced=previous[0][0] if previous else None,
        )
