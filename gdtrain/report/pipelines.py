"""Claims over repeated studies: each optimizer tuned, chosen and rerun R times (`repeats: R`), so the
verdict and intervals include the variance of tuning itself, not only that of the seeds.

An optimizer's results are a matrix (R pipelines, S reruns). Reruns of one pipeline share its chosen
setting, so they are not independent of each other; the pipelines are. Every claim is therefore made
on the pipelines (a cluster-level analysis, as with few clusters in a cluster-randomised trial):
- "A beats B": Welch's two-sample t test (two-sided) of A's R pipeline means against B's: it does not
  assume that tuning varies as much for A as for B (Student's t made 7% false claims at 5% when one
  optimizer's tuning spread was 3 times the other's). Near exact when the pipeline means are normal,
  and it holds its size on skewed ones (table 4). When a side's means do not spread at all (coarse
  values), the exact permutation p over the splits of the pipelines replaces it. A
  diverged run has no value to average: when one of the pair's reruns diverged, the pair is tested
  on ranks instead (the reruns of A and B pooled and ranked, a diverged run, -inf or +inf for a loss,
  below every finished one; each pipeline's mean rank; every split of the pipelines between A and B
  counted, an exact permutation p that needs no assumption but needs pipelines: with 3 a side its
  smallest p is 0.1). Holm over the pairs keeps the claims made together at a family-wise error rate
  of stats.ALPHA: benchmarks/verdict_calibration.py measures it.
- P(A beats B) is U / (n·m) over all reruns, its 95% interval a hierarchical bootstrap: pipelines
  resampled, then reruns within each.
- The interval of an optimizer's mean is stats.mean_interval over its pipelines' means (of the
  finished reruns): it describes the optimizer tuned this way, not one tuning's choice.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as st

from gdtrain.report import stats

BOOTSTRAP = 4999  # hierarchical resamples for the interval of P(A beats B)
SPLITS = 100_000  # splits of the pipelines counted for a permutation p; random ones beyond


def pipeline_p(x: np.ndarray, y: np.ndarray) -> float:
    """The two-sided p of "A and B score alike" from (R_a, S) and (R_b, S') oriented values, R >= 2 a side:
    Welch's t on the pipelines' means; the exact permutation p of the pipelines' means when a side's do not
    spread, and of their mean ranks with a diverged (infinite) value. 1.0 when every value is equal."""
    pooled = np.concatenate([x.ravel(), y.ravel()])
    if np.all(pooled == pooled[0]):
        return 1.0
    if np.all(np.isfinite(pooled)):
        a, b = x.mean(axis=1), y.mean(axis=1)  # (R_a,), (R_b,)
        if np.ptp(a) == 0 or np.ptp(b) == 0:  # no spread to estimate on a side: count the splits instead
            return _split_p(np.concatenate([a, b]), len(a))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns when one side barely varies; its p is still right
            return float(st.ttest_ind(a, b, equal_var=False).pvalue)  # Welch: tuning may vary more for one
    ranks = st.rankdata(pooled)
    means = np.concatenate(
        [ranks[: x.size].reshape(x.shape).mean(axis=1), ranks[x.size :].reshape(y.shape).mean(axis=1)]
    )
    return _split_p(means, len(x))


def _split_p(scores: np.ndarray, n: int) -> float:
    """The two-sided permutation p of the first n scores' mean against the rest's: every split counted
    (at most SPLITS, else SPLITS random ones)."""
    import itertools

    total, size = scores.sum(), len(scores)
    observed = abs(scores[:n].mean() - (total - scores[:n].sum()) / (size - n))
    if math.comb(size, n) <= SPLITS:
        splits = np.array(list(itertools.combinations(range(size), n)))  # (splits, n)
    else:
        rng = np.random.default_rng(0)
        splits = np.argsort(rng.random((SPLITS, size)), axis=1)[:, :n]
    sums = scores[splits].sum(axis=1)
    gaps = np.abs(sums / n - (total - sums) / (size - n))
    return float(np.mean(gaps >= observed - 1e-9))


def compare_pipelines(samples: dict[str, np.ndarray], higher_is_better: bool = True, seed: int = 0) -> list[stats.Pair]:
    """Every pair of `samples` ({name: (R, S) values}, R >= 2 each) in their order, the claims holding together
    at a family-wise error rate of stats.ALPHA (Holm over the pairs)."""
    sign = 1.0 if higher_is_better else -1.0
    oriented = {name: sign * np.asarray(values, dtype=float) for name, values in samples.items()}
    names, found = list(oriented), []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            x, y = oriented[a], oriented[b]
            u = float(stats.u_fraction(x.ravel(), y.ravel()))
            found.append((a, b, u, _u_interval(x, y, u, seed), pipeline_p(x, y)))
    return stats.claims(found)


def _u_interval(x: np.ndarray, y: np.ndarray, u: float, seed: int) -> tuple[float, float]:
    """The 95% percentile interval of U / (n·m) over BOOTSTRAP hierarchical resamples: pipelines, then reruns."""
    if len(set(np.concatenate([x.ravel(), y.ravel()]).tolist())) <= 1:
        return (u, u)
    rng = np.random.default_rng(seed)
    draws = [_resample(rng, values) for values in (x, y)]  # (BOOTSTRAP, R·S) each
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inf - inf in a comparison of two diverged runs is a tie, as wanted
        fractions = np.concatenate(
            [stats.u_fraction(a, b) for a, b in zip(np.array_split(draws[0], 10), np.array_split(draws[1], 10))]
        )
    lo, hi = np.quantile(fractions, [(1 - stats.CONFIDENCE) / 2, (1 + stats.CONFIDENCE) / 2])
    return (float(lo), float(hi))


def _resample(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """BOOTSTRAP resamples of (R, S) values: R pipelines drawn with replacement, then S reruns within each."""
    r, s = values.shape
    pipelines = rng.integers(0, r, (BOOTSTRAP, r, 1))
    reruns = rng.integers(0, s, (BOOTSTRAP, r, s))
    return values[pipelines, reruns].reshape(BOOTSTRAP, r * s)


def pipeline_means(values: np.ndarray) -> list[float]:
    """Each pipeline's mean over its finished reruns (finite values); a pipeline with none is left out."""
    rows = [row[np.isfinite(row)] for row in np.asarray(values, dtype=float)]
    return [float(row.mean()) for row in rows if row.size]


def summarise(values: np.ndarray, bounds: tuple[float, float] = (-math.inf, math.inf)) -> stats.Summary | None:
    """An optimizer's repeated reruns (R, S), diverged ones infinite: the mean, median and std of the finished
    reruns, and the 95% interval of the mean over the pipelines' means. None when no pipeline finished a rerun."""
    means = pipeline_means(values)
    finished = np.asarray(values, dtype=float)
    finished = finished[np.isfinite(finished)]
    if not means:
        return None
    std = float(finished.std(ddof=1)) if finished.size >= 2 else 0.0
    return stats.Summary(
        int(finished.size),
        float(np.mean(means)),
        float(np.median(finished)),
        std,
        stats.mean_interval(means, bounds),
        stats.unreliable(means, "pipelines"),
    )
