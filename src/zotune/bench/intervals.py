"""How far a test accuracy could move on another test set of the same size.

A cell's test accuracy is a proportion k/n over n test examples, so its sampling error is
binomial. The Wilson score interval

    (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n),   z = Φ⁻¹(1 − α/2),

keeps its coverage near the nominal level at the extremes (p near 0 or 1, small n), where
the normal approximation p ± z·sqrt(p(1−p)/n) leaves [0, 1] or collapses to a point
(Brown, Cai & DasGupta, "Interval Estimation for a Binomial Proportion", 2001).

The seeds of a cell are evaluated on the same test examples, so the interval of their mean
uses n, not n × seeds: more seeds shrink the optimizer's spread (reported as ± std beside
it), not the test set's.
"""

from __future__ import annotations

import math
from statistics import NormalDist

CONFIDENCE = 0.95


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
    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    z2n = z * z / n
    centre = (proportion + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(proportion * (1.0 - proportion) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)
