"""What a study's design can detect: the smallest difference between two optimizers that its verdict
claims with 80% power, and whether it can claim anything at all.

The verdict's tests (gdtrain/report/stats.py without repeats, gdtrain/report/pipelines.py with them)
are Holm-adjusted over the k(k-1)/2 pairs, so a claim needs a p below ALPHA / pairs at least once:
that first threshold is the one used here (a lower bound on what the study needs). Seeds' values
are taken as normal with the standard deviation `seed_sd`, and each repeat's chosen setting shifts
its reruns by a normal amount with standard deviation `repeat_sd` (the variance of tuning).
- Without repeats: the exact two-sided Mann-Whitney test of S seeds against S. Its smallest p is
  2 / C(2S, S), so below some S no difference can be claimed at all (7 optimizers: S = 5 gives
  2/252 > 0.05/21); above it the power is simulated (POWER_DRAWS studies of a pair).
- With R repeats: Welch's t on the R pipeline means a side; its power is the noncentral t
  distribution's at df = 2R - 2 (Welch's degrees of freedom when both sides spread alike; fewer
  otherwise, so then a little optimistic), no simulation needed.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy import stats as st

from gdtrain.report.stats import ALPHA

POWER = 0.8
POWER_DRAWS = 2000  # simulated pairs per difference tried, without repeats


def pairs(optimizers: int) -> int:
    """The pairs a study of `optimizers` compares."""
    return optimizers * (optimizers - 1) // 2


def smallest_p(seeds: int) -> float:
    """The smallest two-sided exact Mann-Whitney p of `seeds` values against `seeds` (no ties)."""
    return 2 / math.comb(2 * seeds, seeds)


def can_claim(optimizers: int, repeats: int, seeds: int) -> bool:
    """Whether any difference, however large, can be claimed: some p can fall below ALPHA / pairs."""
    if optimizers < 2:
        return False
    return repeats >= 2 or smallest_p(seeds) < ALPHA / pairs(optimizers)


def detectable(optimizers: int, repeats: int, seeds: int, seed_sd: float, repeat_sd: float = 0.0) -> float | None:
    """The smallest difference in means (in the metric's units) that one pair's test claims with 80% power
    at the first Holm threshold ALPHA / pairs; None when no difference can be claimed."""
    if not can_claim(optimizers, repeats, seeds):
        return None
    if seed_sd == 0 and repeat_sd == 0:
        return 0.0
    level = ALPHA / pairs(optimizers)
    if repeats >= 2:
        df = 2 * repeats - 2
        se = math.sqrt(
            2 * (repeat_sd**2 + seed_sd**2 / seeds) / repeats
        )  # of the difference of two means of R pipelines
        critical = st.t.ppf(1 - level / 2, df)

        def short(d: float) -> float:
            nc = d / se
            wrong_way = np.nan_to_num(st.nct.cdf(-critical, df, nc))  # a vanishing tail that scipy can give as NaN
            return float(st.nct.sf(critical, df, nc) + wrong_way - POWER)

        hi = se
        while short(hi) < 0:  # the noncentral t is NaN far out: widen the bracket only as far as needed
            hi *= 2
        return float(optimize.brentq(short, 0.0, hi))
    return _simulated(seeds, level) * seed_sd  # one tuning: the claim is about its chosen settings


def _simulated(seeds: int, level: float) -> float:
    """The shift in standard deviations at which the exact two-sided Mann-Whitney test of seeds against seeds
    rejects at `level` with 80% power, normal data (bisection on simulated power, a fixed stream)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, POWER_DRAWS, seeds))
    lo, hi = 0.0, 20.0
    for _ in range(14):  # to 20 / 2**14 of a standard deviation
        mid = (lo + hi) / 2
        p = st.mannwhitneyu(x + mid, y, alternative="two-sided", method="exact", axis=1).pvalue
        lo, hi = (lo, mid) if np.mean(p < level) >= POWER else (mid, hi)
    return hi
