"""How sure are we: confidence intervals, P(A beats B), tie groups and the budget curve.

Everything a study or compare states about optimizers comes from here, and scipy does the
statistics (`scipy.stats.bootstrap`, `mannwhitneyu`); only Dodge et al.'s expected-maximum formula
and the grouping are written by hand. Values are oriented by `higher_is_better`, so accuracy and
loss read the same way: "A beats B" always means A is the better optimizer.

- P(A beats B) = U / (n·m): the chance that a random rerun of A scores better than a random rerun
  of B, ties counted half (Bouthillier et al. 2021; rliable's probability of improvement).
- A beats B only when the 95% bootstrap CI of that probability lies above 0.5 *and* a one-sided
  Mann-Whitney test rejects "no difference" at 5%. The second condition matters with few seeds: two
  fully separated samples of 2 give a bootstrap CI of [1, 1] (every resample is separated too),
  although 1 arrangement in 6 is separated by chance alone; the exact test says p = 0.17.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as st

CONFIDENCE = 0.95  # of every interval reported
ALPHA = 0.05  # of the Mann-Whitney test behind "beats"
RESAMPLES = 9999  # bootstrap resamples; scipy's default


@dataclass(frozen=True)
class Summary:
    """One optimizer's reruns: the report metric's spread and where its mean lies."""

    n: int
    mean: float
    median: float
    std: float  # sample standard deviation (ddof 1)
    ci: tuple[float, float]  # 95% bootstrap CI of the mean


@dataclass(frozen=True)
class Pair:
    """How two optimizers' reruns compare."""

    a: str
    b: str
    p_a_beats_b: float  # U / (n·m), ties half
    ci: tuple[float, float]  # 95% bootstrap CI of p_a_beats_b
    p_value: float  # one-sided Mann-Whitney: is A better than B?
    verdict: str  # "a beats b" | "b beats a" | "no detectable difference"

    @property
    def a_beats_b(self) -> bool:
        """A is detectably better than B."""
        return self.verdict == f"{self.a} beats {self.b}"

    @property
    def winner(self) -> str | None:
        """The detectably better of the two; None when there is no detectable difference."""
        return self.a if self.a_beats_b else self.b if self.verdict == f"{self.b} beats {self.a}" else None

    @property
    def loser(self) -> str | None:
        """The detectably worse of the two; None when there is no detectable difference."""
        return None if self.winner is None else self.b if self.winner == self.a else self.a


def _interval(result: Any, fallback: float) -> tuple[float, float]:
    """A bootstrap result's interval; `fallback` twice when there is none or it is NaN (no spread)."""
    lo, hi = (math.nan, math.nan) if result is None else map(float, result.confidence_interval)
    return (fallback, fallback) if math.isnan(lo) or math.isnan(hi) else (lo, hi)


def summarise(values: Sequence[float], seed: int = 0) -> Summary:
    """Mean, median, std and a 95% BCa bootstrap CI of the mean of one optimizer's reruns."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    result = None
    if len(x) >= 2 and np.ptp(x) > 0:  # identical values: the mean is all there is, CI [mean, mean]
        with warnings.catch_warnings():  # BCa warns and gives NaN on degenerate resamples; see _interval
            warnings.simplefilter("ignore")
            result = st.bootstrap(
                (x,),
                np.mean,
                confidence_level=CONFIDENCE,
                n_resamples=RESAMPLES,
                method="BCa",
                rng=np.random.default_rng(seed),
            )
            if any(math.isnan(v) for v in result.confidence_interval):
                result = st.bootstrap(
                    (x,),
                    np.mean,
                    confidence_level=CONFIDENCE,
                    n_resamples=RESAMPLES,
                    method="percentile",
                    rng=np.random.default_rng(seed),
                )
    std = float(x.std(ddof=1)) if len(x) >= 2 else 0.0
    return Summary(len(x), mean, float(np.median(x)), std, _interval(result, mean))


def p_beats(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True) -> float:
    """P(a random value of `a` is better than one of `b`), ties half: U / (n·m)."""
    x, y = _oriented(a, b, higher_is_better)
    return float(st.mannwhitneyu(x, y).statistic) / (len(x) * len(y))


def compare_pair(
    name_a: str, a: Sequence[float], name_b: str, b: Sequence[float], higher_is_better: bool = True, seed: int = 0
) -> Pair:
    """P(A beats B) with its bootstrap CI, the one-sided test, and the verdict."""
    x, y = _oriented(a, b, higher_is_better)
    p = p_beats(x, y)

    result = None
    if len(set(x.tolist()) | set(y.tolist())) > 1:  # all values equal: every resample gives 0.5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = st.bootstrap(
                (x, y),
                u_fraction,
                confidence_level=CONFIDENCE,
                n_resamples=RESAMPLES,
                method="percentile",
                vectorized=True,
                rng=np.random.default_rng(seed),
            )
    ci = _interval(result, p)
    better = st.mannwhitneyu(x, y, alternative="greater").pvalue
    worse = st.mannwhitneyu(x, y, alternative="less").pvalue
    if ci[0] > 0.5 and better < ALPHA:
        verdict = f"{name_a} beats {name_b}"
    elif ci[1] < 0.5 and worse < ALPHA:
        verdict = f"{name_b} beats {name_a}"
    else:
        verdict = "no detectable difference"
    return Pair(name_a, name_b, p, ci, float(better), verdict)


def u_fraction(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """U / (n·m) of x against y along `axis`, ties half: mannwhitneyu's statistic, counted directly
    over all pairs, because the bootstrap evaluates it for every resample and scipy's ranks per
    resample are ~20x slower (tests/test_stats.py checks that the two agree)."""
    xs, ys = np.moveaxis(x, axis, -1)[..., :, None], np.moveaxis(y, axis, -1)[..., None, :]  # (..., n, 1), (..., 1, m)
    return ((xs > ys).sum(axis=(-2, -1)) + 0.5 * (xs == ys).sum(axis=(-2, -1))) / (xs.shape[-2] * ys.shape[-1])


def _oriented(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    sign = 1.0 if higher_is_better else -1.0
    return sign * np.asarray(a, dtype=float), sign * np.asarray(b, dtype=float)


def tie_groups(names: Sequence[str], pairs: Sequence[Pair]) -> list[list[str]]:
    """Rank in groups: the first holds every optimizer that no other beats; remove it and repeat.
    Within a group nothing is detectably better, so the report never ranks noise."""
    beaten_by = {name: set() for name in names}
    for pair in pairs:
        if pair.winner is not None:
            beaten_by[pair.loser].add(pair.winner)
    left, groups = list(names), []
    while left:
        top = [name for name in left if not beaten_by[name] & set(left)]
        if not top:  # a cycle (A > B > C > A): what is left ties
            top = list(left)
        groups.append(top)
        left = [name for name in left if name not in top]
    return groups


def expected_best(values: Sequence[float], k: int, higher_is_better: bool = True) -> float:
    """Expected best of k trials drawn with replacement from `values` (Dodge et al. 2019):
    E[max | k] = Σᵢ v₍ᵢ₎ [(i/N)ᵏ − ((i−1)/N)ᵏ], the values sorted from worst to best."""
    sign = 1.0 if higher_is_better else -1.0
    v = np.sort(sign * np.asarray(values, dtype=float))  # (N,) worst first
    i = np.arange(1, len(v) + 1) / len(v)
    weights = i**k - (i - 1 / len(v)) ** k  # P(the best of k draws is v₍ᵢ₎)
    return float(sign * np.sum(v * weights))


def budget_curve(values: Sequence[float], higher_is_better: bool = True) -> list[float]:
    """Expected best validation score after k = 1..N trials."""
    return [expected_best(values, k, higher_is_better) for k in range(1, len(values) + 1)]
