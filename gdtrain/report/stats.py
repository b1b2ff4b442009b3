"""How sure are we: confidence intervals, P(A beats B), claims at a stated error rate, tie groups
and the budget curve.

Everything a study or compare states about optimizers comes from here. scipy does the statistics
(`mannwhitneyu`, `bootstrap`, the t distribution); written by hand are the exact null distribution
of the rank sum when values tie (scipy's exact method refuses ties), Holm's adjustment, the
grouping and Dodge et al.'s expected-maximum formula. Values are oriented by `higher_is_better`,
so accuracy and loss read the same way: "A beats B" always means A is the better optimizer.

- P(A beats B) = U / (n·m): the chance that a random rerun of A scores better than a random rerun
  of B, ties counted half (Bouthillier et al. 2021; rliable's probability of improvement), with a
  95% bootstrap CI.
- A claim "A beats B" is a two-sided Mann-Whitney test, its p-value exact (every arrangement of the
  two samples' ranks counted, ties included) up to EXACT_LIMIT values, a permutation p beyond.
  The claims made together (every pair of a compare table or a study) hold at a family-wise error
  rate of ALPHA: Holm's step-down adjustment over the pairs, and A beats B when the adjusted p is
  below ALPHA and P(A beats B) > 0.5. So with 2 seeds a side no claim is possible (the smallest
  two-sided p is 1/3), with 3 none either (1/10), and seven optimizers need more seeds than five
  (the smallest p, 2/252, times 21 pairs is above 0.05): benchmarks/verdict_calibration.py measures
  the false-claim rate, the intervals' coverage and the power.
- The 95% interval of a mean is Student's t interval, clipped to the values the metric can take; it
  covers 95% on normal data at any n (a bootstrap of 5 values covers about 81%). Values piled against
  a bound (a loss near 0, an accuracy near 1: the mean within NEAR_BOUND sample sd of it) are skewed
  away from it, and there the t interval misses mostly on the far side: a sample that drew none of
  the long tail has a low mean and a small sd together (t alone: lognormal 83-86%, exponential 88-92%
  at 5-20 values). So the limit away from such a bound is set at t's FAR_SIDE quantile instead of its
  97.5%: covered, benchmarks/verdict_calibration.py table 2, lognormal (sigma 1) 95% and exponential
  97% at 5, 10 and 20 values, normal data and accuracies untouched (never that near a bound), for an
  interval 1.4-1.8 times as wide on the skewed data. Neither a flag on skewed-looking samples nor a
  bootstrap does this: the lognormal samples whose skewness is below 1 are the ones that miss (t
  covers 75% of them at 5 values), and a studentized bootstrap covers 90%. Heavier tails than
  lognormal sigma 1, or skewed data without a bound, are beyond it (lognormal sigma 1.5: 86-88%).
- An interval is printed as unreliable (`unreliable()` says why) below MIN_VALUES values, where its
  coverage was not measured to hold, and when the values do not spread (the interval is a point).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as st

CONFIDENCE = 0.95  # of every interval reported
ALPHA = 0.05  # the family-wise error rate of the "A beats B" claims made together
RESAMPLES = 9999  # bootstrap resamples (scipy's default), and permutations beyond EXACT_LIMIT
EXACT_LIMIT = 80  # values in two samples up to which the rank-sum distribution is counted exactly
MIN_VALUES = 5  # values from which the interval of a mean covers at least 93% (verdict_calibration, table 2)
NEAR_BOUND = 3.0  # sample sd: a mean this close to a bound of the metric is taken as skewed away from it
FAR_SIDE = 0.999  # t quantile of the limit away from such a bound (0.975 elsewhere): 0.1% left on that side


@dataclass(frozen=True)
class Summary:
    """One optimizer's reruns: the report metric's spread and where its mean lies."""

    n: int
    mean: float
    median: float
    std: float  # sample standard deviation (ddof 1)
    ci: tuple[float, float]  # 95% interval of the mean (mean_interval)
    unreliable: str | None = None  # why the CI's coverage does not hold ("4 values", "no spread"); None: it does

    @property
    def reliable(self) -> bool:
        """The CI is one whose coverage was measured to hold."""
        return self.unreliable is None


@dataclass(frozen=True)
class Pair:
    """How two optimizers' reruns compare."""

    a: str
    b: str
    p_a_beats_b: float  # U / (n·m), ties half
    ci: tuple[float, float]  # 95% bootstrap CI of p_a_beats_b
    p_value: float  # two-sided Mann-Whitney p of "A and B score alike"
    p_adjusted: float  # p_value after Holm's adjustment over the pairs compared together
    winner: str | None  # the detectably better of the two; None: no detectable difference

    @property
    def verdict(self) -> str:
        """`a beats b` or `no detectable difference`, as the report words it."""
        return "no detectable difference" if self.winner is None else f"{self.winner} beats {self.loser}"

    @property
    def a_beats_b(self) -> bool:
        """A is detectably better than B."""
        return self.winner == self.a

    @property
    def loser(self) -> str | None:
        """The detectably worse of the two; None when there is no detectable difference."""
        return None if self.winner is None else self.b if self.winner == self.a else self.a


def _interval(result: Any, fallback: float) -> tuple[float, float]:
    """A bootstrap result's interval; `fallback` twice when there is none or it is NaN (no spread)."""
    lo, hi = (math.nan, math.nan) if result is None else map(float, result.confidence_interval)
    return (fallback, fallback) if math.isnan(lo) or math.isnan(hi) else (lo, hi)


def summarise(values: Sequence[float], bounds: tuple[float, float] = (-math.inf, math.inf)) -> Summary:
    """Mean, median, std and the 95% interval of the mean (mean_interval) of one optimizer's reruns,
    clipped to the `bounds` the metric can take (core.metrics.bounds), and why it is unreliable if it is."""
    x = np.asarray(values, dtype=float)
    std = float(x.std(ddof=1)) if len(x) >= 2 else 0.0
    return Summary(len(x), float(x.mean()), float(np.median(x)), std, mean_interval(x, bounds), unreliable(x))


def mean_interval(values: Sequence[float], bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """The 95% Student t interval of the mean, its limit away from a bound the mean lies within NEAR_BOUND
    sd of at t's FAR_SIDE quantile (from MIN_VALUES values up), clipped to `bounds`; the mean twice for
    one value or no spread."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2 or np.ptp(x) == 0:
        return (mean, mean)
    sd = float(x.std(ddof=1))
    usual, far = (q * sd / math.sqrt(len(x)) for q in _t_quantiles(len(x) - 1))
    if len(x) < MIN_VALUES:  # marked unreliable anyway: the plain t interval, not a 99.9% one on 2-4 values
        far = usual
    below = far if bounds[1] - mean < NEAR_BOUND * sd else usual  # piled under an upper bound: a long tail down
    above = far if mean - bounds[0] < NEAR_BOUND * sd else usual
    return (max(mean - below, bounds[0]), min(mean + above, bounds[1]))


@functools.lru_cache(maxsize=256)
def _t_quantiles(df: int) -> tuple[float, float]:
    # scipy's ppf takes ~0.1 ms a call: the calibration benchmark asks for a few quantiles 500,000 times
    return tuple(float(q) for q in st.t.ppf([0.5 + CONFIDENCE / 2, FAR_SIDE], df))


def unreliable(values: Sequence[float], unit: str = "values") -> str | None:
    """Why the interval of the mean of `values` is not to be trusted: fewer than MIN_VALUES of them
    (`"4 values"`, `unit` naming them) or no spread; None when its coverage was measured to hold."""
    x = np.asarray(values, dtype=float)
    if len(x) < MIN_VALUES:
        return f"{len(x)} {unit}"
    return "no spread" if np.ptp(x) == 0 else None


def p_beats(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True) -> float:
    """P(a random value of `a` is better than one of `b`), ties half: U / (n·m)."""
    x, y = _oriented(a, b, higher_is_better)
    return float(st.mannwhitneyu(x, y).statistic) / (len(x) * len(y))


def compare_pair(
    name_a: str, a: Sequence[float], name_b: str, b: Sequence[float], higher_is_better: bool = True, seed: int = 0
) -> Pair:
    """A against B alone (a family of one pair): P(A beats B) with its CI, the two-sided p, the verdict."""
    return compare_all({name_a: a, name_b: b}, higher_is_better, seed)[0]


def compare_all(samples: dict[str, Sequence[float]], higher_is_better: bool = True, seed: int = 0) -> list[Pair]:
    """Every pair of `samples` (in their order: a before b), the claims holding together at a
    family-wise error rate of ALPHA (Holm over the pairs). A diverged run may be given as -inf
    (or +inf for a loss): it ranks below every finished one and ties with the others that diverged."""
    sign = 1.0 if higher_is_better else -1.0
    oriented = {name: sign * np.asarray(values, dtype=float) for name, values in samples.items()}
    names = list(oriented)
    found = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            x, y = oriented[a], oriented[b]
            u = float(u_fraction(x, y))  # P(A beats B)
            found.append((a, b, u, _u_interval(x, y, u, seed), two_sided_p(x, y, seed)))
    return claims(found)


def claims(found: Sequence[tuple[str, str, float, tuple[float, float], float]]) -> list[Pair]:
    """The pairs (a, b, P(A beats B), its CI, two-sided p) compared together, as claims: Holm over all
    of them, and A beats B when its adjusted p is below ALPHA and P(A beats B) > 0.5."""
    adjusted = holm([p for *_, p in found])
    return [
        Pair(a, b, u, ci, p, q, (a if u > 0.5 else b) if q < ALPHA and u != 0.5 else None)
        for (a, b, u, ci, p), q in zip(found, adjusted)
    ]


def _u_interval(x: np.ndarray, y: np.ndarray, u: float, seed: int) -> tuple[float, float]:
    """The 95% percentile bootstrap CI of U / (n·m) (`u` itself); a point when every value is equal."""
    if len(set(np.concatenate([x, y]).tolist())) <= 1:  # all values equal: every resample gives 0.5
        return (u, u)
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
    return _interval(result, u)


def two_sided_p(x: Sequence[float], y: Sequence[float], seed: int = 0) -> float:
    """The two-sided Mann-Whitney p-value of x against y: exact (the rank sum's distribution over
    every split of the pooled values, ties at their mid-ranks) up to EXACT_LIMIT values, else from
    RESAMPLES random permutations. 1.0 when every value is equal."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    pooled = np.concatenate([x, y])
    if np.all(pooled == pooled[0]):
        return 1.0
    if len(pooled) > EXACT_LIMIT:
        method = st.PermutationMethod(n_resamples=RESAMPLES, rng=np.random.default_rng(seed))
        return float(st.mannwhitneyu(x, y, alternative="two-sided", method=method).pvalue)
    ranks = np.rint(2 * st.rankdata(pooled)).astype(int)  # mid-ranks doubled: whole numbers
    counts = _rank_sum_counts(ranks, len(x))  # counts[s]: splits whose x side sums to s
    sums = np.arange(len(counts))
    centre = len(x) * ranks.sum() / len(pooled)
    observed = abs(int(ranks[: len(x)].sum()) - centre)
    return float(min(1.0, counts[np.abs(sums - centre) >= observed - 1e-9].sum() / counts.sum()))


def _rank_sum_counts(ranks: np.ndarray, n: int) -> np.ndarray:
    """How many n-element subsets of `ranks` (whole numbers) have each sum: (sum(ranks) + 1,)."""
    table = np.zeros((n + 1, int(ranks.sum()) + 1))  # table[k, s]: k-subsets of the ranks so far summing to s
    table[0, 0] = 1.0
    for r in ranks:
        table[1:, r:] = table[1:, r:] + table[:-1, : table.shape[1] - r]  # the right side is read before it is written
    return table[n]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: rejecting those below ALPHA keeps the family-wise error at ALPHA."""
    order = np.argsort(p_values, kind="stable")
    m, adjusted, running = len(p_values), [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def u_fraction(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """U / (n·m) of x against y along `axis`, ties half: mannwhitneyu's statistic, counted directly
    over all pairs, because the bootstrap evaluates it for every resample and scipy's ranks per
    resample are ~20x slower (tests/test_stats.py checks that the two agree)."""
    xs, ys = np.moveaxis(x, axis, -1)[..., :, None], np.moveaxis(y, axis, -1)[..., None, :]  # (..., n, 1), (..., 1, m)
    return ((xs > ys).sum(axis=(-2, -1)) + 0.5 * (xs == ys).sum(axis=(-2, -1))) / (xs.shape[-2] * ys.shape[-1])


def _oriented(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    sign = 1.0 if higher_is_better else -1.0
    return sign * np.asarray(a, dtype=float), sign * np.asarray(b, dtype=float)


def letters(order: Sequence[str], pairs: Sequence[Pair]) -> dict[str, str]:
    """A compact letter display: rows that share a letter show no detectable difference, rows that
    share none differ detectably. `order`: best first; its first row gets `a`. Built by inserting each
    detected difference and absorbing the sets it leaves inside others (Piepho 2004's insert-absorb)."""
    columns: list[set[str]] = [set(order)]
    for x, y in [(p.a, p.b) for p in pairs if p.winner is not None]:
        split = []
        for column in columns:
            split += [column - {x}, column - {y}] if x in column and y in column else [column]
        columns = [
            c for i, c in enumerate(split) if c and not any(c < d or (c == d and j < i) for j, d in enumerate(split))
        ]
    position = {name: i for i, name in enumerate(order)}
    columns.sort(key=lambda c: sorted(position[name] for name in c))
    marks = "abcdefghijklmnopqrstuvwxyz"
    return {name: "".join(marks[i % 26] for i, c in enumerate(columns) if name in c) for name in order}


def best_set(order: Sequence[str], pairs: Sequence[Pair]) -> list[str]:
    """The first of `order` (the best by mean) and every one it cannot be told from, in `order`."""
    if not order:
        return []
    beaten = {p.loser for p in pairs if p.winner == order[0]}
    return [name for name in order if name not in beaten]


def beats(name: str, pairs: Sequence[Pair]) -> list[str]:
    """The names `name` is detectably better than."""
    return [p.loser for p in pairs if p.winner == name]


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


def mean_ranks(samples: dict[str, Sequence[float]], higher_is_better: bool = True) -> dict[str, float]:
    """Each sample's mean mid-rank among all the values pooled (1 = the worst value), best highest;
    a diverged run (-inf, or +inf for a loss) ranks below every finished one."""
    sign = 1.0 if higher_is_better else -1.0
    pooled = np.concatenate([sign * np.asarray(v, dtype=float).ravel() for v in samples.values()])
    ranks, out, start = st.rankdata(pooled), {}, 0
    for name, values in samples.items():
        size = np.asarray(values).size
        out[name] = float(ranks[start : start + size].mean())
        start += size
    return out


def ranking(samples: dict[str, Sequence[float]], pairs: Sequence[Pair], higher_is_better: bool = True) -> list[str]:
    """The names best first: by mean rank of their values pooled (mean_ranks: a diverged run below every
    finished one, so an optimizer whose runs all diverged is last), and never a name above one that
    detectably beats it."""
    score = mean_ranks(samples, higher_is_better)
    order = sorted(samples, key=lambda name: -score[name])
    wins = [(p.winner, p.loser) for p in pairs if p.winner is not None]
    for _ in range(len(order) ** 2):  # a detected win placed the wrong way round moves the winner up
        wrong = next(((w, lost) for w, lost in wins if order.index(w) > order.index(lost)), None)
        if wrong is None:
            break
        order.remove(wrong[0])
        order.insert(order.index(wrong[1]), wrong[0])
    return order
