"""How far a test score could move on another test set of the same size.

A cell's test accuracy is a proportion k/n over n test examples, so its sampling error is
binomial. The Wilson score interval

    (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n),   z = Φ⁻¹(1 − α/2),

keeps its coverage near the nominal level at the extremes (p near 0 or 1, small n), where
the normal approximation p ± z·sqrt(p(1−p)/n) leaves [0, 1] or collapses to a point
(Brown, Cai & DasGupta, "Interval Estimation for a Binomial Proportion", 2001).

The seeds of a cell are evaluated on the same test examples, so the interval of their mean
uses n, not n × seeds: more seeds shrink the optimizer's spread (reported as ± std beside
it), not the test set's.

F1 is not a proportion, so an F1 score gets the percentile bootstrap instead: resample the
n per-example scores with replacement B times, and take the α/2 and 1 − α/2 quantiles of
the B means (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13).

Two runs scored on the same test examples are compared pair by pair: the difference of
their means is the mean of the per-example differences d_i = a_i − b_i, and resampling the
pairs (not each run alone) keeps what the runs share — most examples are easy or hard for
both — out of the interval, which is then far narrower than two separate intervals
suggest. A paired interval that excludes 0 separates the runs on this test set.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from statistics import NormalDist

CONFIDENCE = 0.95
# Resamples of a bootstrap interval: its endpoints then move by about 0.1 of a standard error
# from one seed of the resampling to another.
RESAMPLES = 2000


def z_score(confidence: float = CONFIDENCE) -> float:
    """Φ⁻¹(1 − α/2): how many standard errors a two-sided interval at ``confidence`` spans."""
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def wilson_interval(
    proportion: float, n: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """The Wilson score interval of a proportion observed on ``n`` trials."""
    if n < 1:
        raise ValueError(f"an interval needs at least one test example, got n={n}")
    if not 0.0 <= proportion <= 1.0:
        raise ValueError(f"a proportion lies in [0, 1], got {proportion}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence lies in (0, 1), got {confidence}")
    z = z_score(confidence)
    z2n = z * z / n
    centre = (proportion + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(proportion * (1.0 - proportion) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    scores: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """The percentile-bootstrap interval of the mean of per-example ``scores``.

    Seeded, so a report regenerated from the same records shows the same interval.
    """
    values = list(scores)
    if not values:
        raise ValueError("an interval needs at least one test example, got none")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence lies in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"a bootstrap needs at least one resample, got {resamples}")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(statistics.fmean(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1.0 - confidence) / 2.0
    return _quantile(means, tail), _quantile(means, 1.0 - tail)


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) − mean(b) of two runs scored on the same examples, in the same order, and the
    bootstrap interval of that difference over the pairs: ``(difference, low, high)``."""
    return contrast_interval([a, b], [1.0, -1.0], confidence, seed)


def contrast_interval(
    columns: Sequence[Sequence[float]],
    coefficients: Sequence[float],
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Σ_k c_k · mean(s_k) of runs scored on the same examples, and its bootstrap interval
    over the examples, each resampled example carrying all its runs' scores:
    ``(value, low, high)``. A difference is (1, −1); a difference of differences ("does the
    template help ZO more than FO?") is (1, −1, −1, 1)."""
    if len(columns) != len(coefficients):
        raise ValueError(f"{len(columns)} score lists for {len(coefficients)} coefficients")
    lengths = {len(column) for column in columns}
    if len(lengths) > 1:
        counts = " against ".join(str(len(column)) for column in columns)
        raise ValueError(f"a paired comparison needs the same test examples: {counts} scores")
    per_example = [
        sum(c * s for c, s in zip(coefficients, row, strict=True))
        for row in zip(*columns, strict=True)
    ]
    low, high = bootstrap_interval(per_example, confidence, seed=seed)
    return statistics.fmean(per_example), low, high


def unpaired_contrast_interval(
    proportions: Sequence[float],
    counts: Sequence[int],
    coefficients: Sequence[float],
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """Σ_k c_k p_k of accuracies known only as proportions over n_k examples, with the
    normal interval of independent binomials, Var = Σ_k c_k² p_k(1 − p_k)/n_k.

    For runs that records did not keep per example. Scored on the same examples, runs share
    their easy and hard ones, so for a difference of two this interval is wider than the
    paired one; for longer contrasts it is only an approximation."""
    if not len(proportions) == len(counts) == len(coefficients):
        raise ValueError("a contrast needs one proportion, one count and one coefficient each")
    if any(n < 1 for n in counts):
        raise ValueError(f"an interval needs at least one test example, got counts {counts}")
    value = sum(c * p for c, p in zip(coefficients, proportions, strict=True))
    variance = sum(c * c * p * (1.0 - p) / n
                   for c, p, n in zip(coefficients, proportions, counts, strict=True))
    z = z_score(confidence)
    half = z * math.sqrt(variance)
    return value, value - half, value + half


def _quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, interpolating between neighbours."""
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)
