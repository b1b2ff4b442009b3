"""Calibration of the verdict: how often `stats.compare_all` claims "A beats B" when nothing differs,
how often the 95% interval of a mean covers the true mean, and how often a real difference is found.

    python benchmarks/verdict_calibration.py [--studies N] [--draws N] [--seed S] [--processes P] [--quick]

Simulated studies, no training: each optimizer's reruns are drawn from a known distribution.
1. Family-wise false-claim rate: k = 2, 4, 7 optimizers, all drawn from ONE distribution, n = 2, 3, 5,
   10, 20 seeds each; the fraction of studies with at least one claim. Two kinds of data: normal
   (mean 0.9, sd 0.01), and accuracies on 10,000 test images (binomial(10000, 0.97) / 10000: on a 1e-4
   grid, so values tie often). `--studies` studies a setting.
2. Coverage of `stats.mean_interval` (95% Student t, its limit away from a nearby bound widened): of the
   intervals of n = 2 ... 20 values that gdtrain prints as reliable (`stats.unreliable`: none below 5
   values), the fraction that contain the true mean; the fraction printed as unreliable; and the median
   width against the plain t interval's (both clipped to the bounds). Normal data and accuracies get an
   accuracy's bounds [0, 1], lognormal (sigma 1) and exponential data a loss's [0, inf), as gdtrain
   gives each metric (core.metrics.bounds). `--draws` intervals a setting; lognormal (sigma 1.5), past
   what the interval covers, is measured below the table.
3. Power: k optimizers on normal data, one of them shifted up by 1, 2 or 3 sd; the fraction of studies
   in which the shifted one is claimed to beat every other optimizer (all), and at least one (any).
4. Repeated studies (`repeats: R`, gdtrain/report/pipelines.py): k optimizers, R pipelines of S = 5
   reruns each; a pipeline's chosen setting shifts all its reruns by a tuning effect drawn per pipeline,
   normal with std tau = 0, 1 or 3 rerun sd, or skewed (minus an exponential draw of mean 2 sd: now and
   then a bad choice), or unequal (optimizer i's tau is 3 i / (k - 1): from 0 to 3; for the coverage
   column, the same as tau 3). The family-wise false-claim rate with no difference between the optimizers, the
   coverage of the interval of an optimizer's mean (over its pipelines), and the power when one
   optimizer's reruns are shifted up by 1, 2 or 3 rerun sd (tau = 0 and 1).
Every setting has its own random stream from `--seed`, so a table does not depend on `--processes`.
The claims are compare_all's own, run under `fast_verdicts`, which leaves every p-value and verdict
as it is (tests/test_verdict_calibration.py checks this) and makes a study ~20x faster.

Measured (AMD EPYC, `nproc` 2, shared with other work: `uptime` load 5.8 at the start, 2.1 at the end;
Python 3.11.7, numpy 2.4.6, scipy 1.17.1; defaults: 2,000 studies and 10,000 intervals a setting, seed 0,
2 processes): 1,121 s, 109 MB (128 s at load ~1.1 before table 4 and the interval's rule; tables 1 and 3
came out as before, figure for figure).
1. False claims 0.0% at n = 2 and 3 (no design there can reach 0.05), and with 7 optimizers at n = 5
   (2/252 x 21 pairs > 0.05); elsewhere 3.2% to 4.7% on normal data, 2.8% to 5.1% on accuracies. The
   5.1% (2 optimizers, 20 seeds, accuracies; 95% interval 4.2% to 6.2%) is one exact test, whose size
   is at most 5% by construction; 20,000 studies of it (seed 1) gave 4.78% (4.49% to 5.08%).
2. Coverage of the intervals printed as reliable (every one from n = 5 up; none below, all flagged):
   normal 94.7% to 94.9%, accuracies 94.9% to 95.3%, both with the plain t interval (width ratio 1.00);
   lognormal 95.7% / 94.8% / 95.1% at n = 5 / 10 / 20 and exponential 97.4% / 97.5% / 97.8%, for a median
   width 1.8 / 1.45 / 1.36 times the t interval's (the plain t covered them 82.8% / 83.8% / 86.2% and
   88.3% / 90.2% / 92.0%). Lognormal sigma 1.5 stays short: 87.3% / 85.6% / 87.8%.
3. Power (beats every other / at least one), 2 sd: k = 2: 70% at n = 5, 98% at n = 10; k = 4: 14% / 62%
   at n = 5, 83% / 98% at n = 10; k = 7: 0% at n = 5, 45% / 97% at n = 10, 99% / 100% at n = 20.
4. Repeated studies (Welch's t; 740 s for all four tables, 2 processes, quiet machine): false claims 2.0%
   to 5.2% with equal tuning spreads (normal 0/1/3 sd, skewed); 3.5% to 5.7% with unequal ones, the 5.7%
   and 5.1% (2 optimizers, spreads 0 and 3 sd) 5.8% / 5.4% / 5.5% at R = 3 / 4 / 5 in 8,000 studies (seed
   2): Welch's small-sample excess, left open (Student's t gave 7.3%). Coverage over the pipelines 94.7% to
   95.4% with normal tuning effects, 89.1% to 90.9% with skewed ones. Power at 2 sd, tau 0, 7 optimizers:
   0.4% / 49% with R = 3, 81% / 99% with R = 5.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import multiprocessing
import os
import platform
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import scipy
from scipy.stats import binomtest

from gdtrain.report import pipelines, stats

KS = (2, 4, 7)  # optimizers in a study
NS = (2, 3, 5, 10, 20)  # seeds (reruns) per optimizer
POWER_NS = (3, 5, 10, 20)
COVERAGE_GOAL = 0.93  # issue 20: the 95% interval must cover at least this often from 5 values up
CONFIDENCE = 0.95  # of the interval around the highest false-claim rate
SHIFTS = (1, 2, 3)  # the better optimizer's lead, in standard deviations of the normal data
MEAN, SD = 0.9, 0.01  # normal data: a validation accuracy and its spread over seeds
TEST_IMAGES, ACCURACY = 10_000, 0.97  # accuracy data: correct answers out of TEST_IMAGES, each right with ACCURACY
TRUE_MEAN = {"normal": MEAN, "lognormal": math.exp(0.5), "exponential": 1.0, "accuracy": ACCURACY}
HEAVY = "lognormal-1.5"  # beyond table 2: a heavier tail than the interval is meant for
BOUNDS = {"normal": (0.0, 1.0), "accuracy": (0.0, 1.0), "lognormal": (0.0, math.inf), HEAVY: (0.0, math.inf)}
BOUNDS["exponential"] = (0.0, math.inf)  # an accuracy's bounds, then a loss's (core.metrics.bounds)
LABEL = {
    "normal": "normal (0.9, sd 0.01)",
    "lognormal": "lognormal (sigma 1)",
    "exponential": "exponential",
    "accuracy": "accuracy, 10,000 images",
}


def draw(rng: np.random.Generator, kind: str, size: tuple[int, ...]) -> np.ndarray:
    """Values of one kind of data: (*size,)."""
    if kind == "normal":
        return rng.normal(MEAN, SD, size)
    if kind == "accuracy":
        return rng.binomial(TEST_IMAGES, ACCURACY, size) / TEST_IMAGES
    if kind == "lognormal":
        return rng.lognormal(0.0, 1.0, size)
    if kind == "exponential":
        return rng.exponential(1.0, size)
    if kind == HEAVY:
        return rng.lognormal(0.0, 1.5, size)
    raise ValueError(f"Unknown kind of data: {kind}")


def stream(seed: int, *setting: object) -> np.random.Generator:
    """The random stream of one setting: the same whichever process runs it, and in whatever order."""
    return np.random.default_rng([seed, zlib.crc32(repr(setting).encode())])


_rank_sum_counts = stats._rank_sum_counts  # the original, memoized below


@functools.lru_cache(maxsize=2048)  # at most ~30 MB: an entry is (sum of ranks + 1,) floats
def _counts_of(ranks: bytes, n: int) -> np.ndarray:
    # a copy: the original returns a row of its (n + 1, sum + 1) table, which would keep the whole table
    return _rank_sum_counts(np.frombuffer(ranks, dtype=np.int64), n).copy()


def _memoized_counts(ranks: np.ndarray, n: int) -> np.ndarray:
    # the subset-sum counts depend on the multiset of ranks only: without ties, on n and m alone
    return _counts_of(np.sort(ranks).astype(np.int64).tobytes(), n)


@contextlib.contextmanager
def fast_verdicts() -> Iterator[None]:
    """compare_all with the same p-values and verdicts, ~20x faster: no bootstrap CI of P(A beats B)
    (9,999 resamples a pair, no part of the verdict: its CI comes out NaN), and the exact rank-sum
    distribution memoized."""
    with (
        mock.patch.object(stats, "_u_interval", lambda x, y, u, seed: (math.nan, math.nan)),
        mock.patch.object(stats, "_rank_sum_counts", _memoized_counts),
    ):
        yield


def winners(values: np.ndarray) -> list[tuple[str, str, str | None]]:
    """compare_all on a study, values (k, n): (a, b, winner) for every pair, optimizers named o0, o1, ..."""
    return [(p.a, p.b, p.winner) for p in stats.compare_all({f"o{i}": row for i, row in enumerate(values)})]


def false_claim_rate(kind: str, k: int, n: int, studies: int, seed: int) -> float:
    """The fraction of `studies` null studies (k optimizers, n seeds, one distribution) with at least one claim."""
    rng = stream(seed, "null", kind, k, n)
    with fast_verdicts():
        claimed = sum(any(w is not None for *_, w in winners(draw(rng, kind, (k, n)))) for _ in range(studies))
    return claimed / studies


def power(k: int, n: int, shift: float, studies: int, seed: int) -> tuple[float, float]:
    """The fractions of `studies` normal studies in which o0, shifted up by `shift` sd, is claimed to beat
    every other optimizer, and at least one."""
    rng = stream(seed, "power", k, n, shift)
    every = some = 0
    with fast_verdicts():
        for _ in range(studies):
            values = draw(rng, "normal", (k, n))
            values[0] += shift * SD
            won = [w == "o0" for a, _, w in winners(values) if a == "o0"]
            every, some = every + all(won), some + any(won)
    return every / studies, some / studies


def interval_figures(kind: str, n: int, draws: int, seed: int) -> tuple[float, float, float, float]:
    """Of `draws` 95% intervals of n values' mean (stats.mean_interval, the kind's BOUNDS): the fraction of those
    printed as reliable that hold the true mean (NaN: none is), the fraction of all that do, the fraction printed
    as unreliable, and the median width over the plain t interval's (of those with a width)."""
    rng = stream(seed, "coverage", kind, n)
    truth = TRUE_MEAN[kind] if kind in TRUE_MEAN else math.exp(1.5**2 / 2)
    samples = draw(rng, kind, (draws, n))
    intervals = np.array([stats.mean_interval(x, BOUNDS[kind]) for x in samples])  # (draws, 2)
    with mock.patch.object(stats, "NEAR_BOUND", 0.0):  # no bound is near: the t interval, clipped
        plain = np.array([stats.mean_interval(x, BOUNDS[kind]) for x in samples])
    reliable = np.array([stats.unreliable(x) is None for x in samples])
    held = (intervals[:, 0] <= truth) & (truth <= intervals[:, 1])
    wide, t_wide = np.diff(intervals, axis=1)[:, 0], np.diff(plain, axis=1)[:, 0]
    ratio = float(np.median(wide[t_wide > 0] / t_wide[t_wide > 0])) if (t_wide > 0).any() else 1.0
    covered = float(held[reliable].mean()) if reliable.any() else math.nan
    return (covered, float(held.mean()), 1 - float(reliable.mean()), ratio)


def coverage(kind: str, n: int, draws: int, seed: int) -> float:
    """The fraction of `draws` 95% intervals of n values' mean printed as reliable that hold the true mean."""
    return interval_figures(kind, n, draws, seed)[0]


def _call(task: tuple[Callable, tuple]) -> object:
    function, args = task
    return function(*args)


def run(tasks: list[tuple[Callable, tuple]], processes: int) -> list:
    """Each task's result, in order; the costliest first across `processes` worker processes."""
    if processes <= 1:
        return [_call(task) for task in tasks]
    order = sorted(range(len(tasks)), key=lambda i: -_cost(tasks[i]))
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.map(_call, [tasks[i] for i in order], chunksize=1)
    return [result for _, result in sorted(zip(order, results))]


def _cost(task: tuple[Callable, tuple]) -> float:
    # pairs times values per pair, roughly what a study costs; coverage is cheap
    function, args = task
    if function in (interval_figures, pipeline_coverage):
        return 0.0
    if function in (pipeline_false_claims, pipeline_power):
        return args[1] * (args[1] - 1) / 2 * 5
    k, n = (args[1], args[2]) if function is false_claim_rate else (args[0], args[1])
    return k * (k - 1) / 2 * (10 + n)


def cpu() -> str:
    """CPU model, cores, Python, numpy and scipy versions."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    model = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor()
    )
    versions = f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}"
    return f"{model}, {os.cpu_count()} cores, {versions}"


def percent(x: float) -> str:
    """0.0432 as '4.3%'."""
    return f"{100 * x:.1f}%"


def _interval_cell(covered: float, every: float, flagged: float, width: float) -> str:
    shown = f"({percent(every)})" if math.isnan(covered) else percent(covered)  # none printed as reliable
    return f"{shown} / {percent(flagged)} / {width:.2f}"


def print_tables(args: argparse.Namespace) -> None:
    """Run the three simulations and print their markdown tables."""
    null = [(kind, k) for kind in ("normal", "accuracy") for k in KS]
    kinds = list(TRUE_MEAN)
    lifts = [(k, n) for k in KS for n in POWER_NS]
    tasks = (
        [(false_claim_rate, (kind, k, n, args.studies, args.seed)) for kind, k in null for n in NS]
        + [(interval_figures, (kind, n, args.draws, args.seed)) for kind in (*kinds, HEAVY) for n in NS]
        + [(power, (k, n, shift, args.studies, args.seed)) for k, n in lifts for shift in SHIFTS]
    )
    results = iter(run(tasks, args.processes))

    print(f"\n## 1. Family-wise false-claim rate, no difference ({args.studies} studies a setting)\n")
    print("| data | optimizers | " + " | ".join(f"n = {n}" for n in NS) + " |")
    print("|---|---:|" + "---:|" * len(NS))
    rates = {(kind, k, n): next(results) for kind, k in null for n in NS}
    for kind, k in null:
        print(f"| {LABEL[kind]} | {k} | " + " | ".join(percent(rates[kind, k, n]) for n in NS) + " |")
    se = math.sqrt(0.05 * 0.95 / args.studies)
    print(f"\nAt a true rate of 5%, {args.studies} studies measure it within ±{percent(2 * se)} (2 standard errors).")
    (kind, k, n), worst = max(rates.items(), key=lambda item: item[1])
    lo, hi = binomtest(round(worst * args.studies), args.studies).proportion_ci(CONFIDENCE)
    print(
        f"Highest: {percent(worst)} ({LABEL[kind]}, {k} optimizers, {n} seeds), "
        f"95% Clopper-Pearson interval {percent(lo)} to {percent(hi)}."
    )

    print(f"\n## 2. Coverage of the 95% interval of the mean ({args.draws} intervals a setting)\n")
    print("Each cell: coverage of the intervals printed as reliable (in brackets where every one is printed as")
    print("unreliable: theirs) / fraction printed as unreliable / median width over the t interval's.\n")
    print("| data | " + " | ".join(f"n = {n}" for n in NS) + " |")
    print("|---|" + "---:|" * len(NS))
    figures = {(kind, n): next(results) for kind in (*kinds, HEAVY) for n in NS}
    for kind in kinds:
        print(f"| {LABEL[kind]} | " + " | ".join(_interval_cell(*figures[kind, n]) for n in NS) + " |")
    short = [
        f"{LABEL[kind]} at n = {n}"
        for kind in kinds
        for n in NS
        if n >= stats.MIN_VALUES and not figures[kind, n][0] >= COVERAGE_GOAL  # NaN: none printed as reliable
    ]
    print(f"\nPrinted as reliable and below {percent(COVERAGE_GOAL)}: {'; '.join(short) or 'none'}.")
    heavy = ", ".join(f"{_interval_cell(*figures[HEAVY, n])} at n = {n}" for n in NS if n >= stats.MIN_VALUES)
    print(f"Beyond the interval's reach, lognormal (sigma 1.5): {heavy}.")

    print(f"\n## 3. Power, normal data, one optimizer shifted up ({args.studies} studies a setting)\n")
    print("Each cell: the shifted optimizer claimed to beat every other / at least one other.\n")
    print("| optimizers | seeds | " + " | ".join(f"{s} sd" for s in SHIFTS) + " |")
    print("|---:|---:|" + "---:|" * len(SHIFTS))
    for k, n in lifts:
        cells = [next(results) for _ in SHIFTS]
        print(f"| {k} | {n} | " + " | ".join(f"{percent(every)} / {percent(some)}" for every, some in cells) + " |")


REPEATS = (3, 5)  # pipelines per optimizer in table 4
PIPELINE_SEEDS = 5  # reruns per pipeline in table 4
TUNING = ("0", "1", "3", "skewed", "unequal")  # the tuning effect's spread, in rerun sd


def pipeline_draw(rng: np.random.Generator, tuning: str, size: tuple[int, ...]) -> np.ndarray:
    """Reruns of repeated pipelines (*size, R, S), rerun sd 1: each pipeline shifted by its own tuning effect."""
    *lead, r, s = size
    if tuning == "skewed":
        effect = -2.0 * rng.exponential(1.0, (*lead, r, 1))
    elif tuning == "unequal":  # optimizer i's tuning spread: 3 * i / (k - 1) sd, from 0 to 3
        k = lead[-1]
        scale = 3.0 * np.arange(k) / max(k - 1, 1)
        effect = scale[:, None, None] * rng.standard_normal((*lead, r, 1))
    else:
        effect = float(tuning) * rng.standard_normal((*lead, r, 1))
    return rng.standard_normal(size) + effect


def pipeline_false_claims(tuning: str, k: int, r: int, studies: int, seed: int) -> float:
    """The fraction of null repeated studies (k optimizers alike, r pipelines of PIPELINE_SEEDS) with a claim."""
    rng = stream(seed, "pipeline-null", tuning, k, r)
    claimed = 0
    with mock.patch.object(pipelines, "_u_interval", lambda x, y, u, seed: (math.nan, math.nan)):
        for _ in range(studies):
            values = pipeline_draw(rng, tuning, (k, r, PIPELINE_SEEDS))
            pairs = pipelines.compare_pipelines({f"o{i}": v for i, v in enumerate(values)})
            claimed += any(p.winner is not None for p in pairs)
    return claimed / studies


def pipeline_coverage(tuning: str, r: int, draws: int, seed: int) -> float:
    """The fraction of intervals of an optimizer's mean over r pipelines (pipelines.summarise) holding the true mean."""
    rng = stream(seed, "pipeline-coverage", tuning, r)
    truth = -2.0 if tuning == "skewed" else 0.0
    hits = 0
    for values in pipeline_draw(rng, "3" if tuning == "unequal" else tuning, (draws, r, PIPELINE_SEEDS)):
        lo, hi = pipelines.summarise(values).ci
        hits += lo <= truth <= hi
    return hits / draws


def pipeline_power(tuning: str, k: int, r: int, shift: float, studies: int, seed: int) -> tuple[float, float]:
    """The fractions of repeated studies in which o0, its reruns shifted up by `shift` rerun sd, is claimed to
    beat every other optimizer, and at least one."""
    rng = stream(seed, "pipeline-power", tuning, k, r, shift)
    every = some = 0
    with mock.patch.object(pipelines, "_u_interval", lambda x, y, u, seed: (math.nan, math.nan)):
        for _ in range(studies):
            values = pipeline_draw(rng, tuning, (k, r, PIPELINE_SEEDS))
            values[0] += shift
            pairs = pipelines.compare_pipelines({f"o{i}": v for i, v in enumerate(values)})
            won = [p.winner == "o0" for p in pairs if p.a == "o0"]
            every, some = every + all(won), some + any(won)
    return every / studies, some / studies


def print_pipeline_tables(args: argparse.Namespace) -> None:
    """Table 4: the repeated studies' false claims, coverage and power."""
    tasks = (
        [(pipeline_false_claims, (t, k, r, args.studies, args.seed)) for t in TUNING for k in KS for r in REPEATS]
        + [(pipeline_coverage, (t, r, args.draws, args.seed)) for t in TUNING for r in (*REPEATS, 10)]
        + [
            (pipeline_power, (t, k, r, shift, args.studies, args.seed))
            for t in ("0", "1")
            for k in KS
            for r in REPEATS
            for shift in SHIFTS
        ]
    )
    results = iter(run(tasks, args.processes))
    print(f"\n## 4. Repeated studies: {PIPELINE_SEEDS} reruns a pipeline ({args.studies} studies a setting)\n")
    print("False-claim rate with no difference; the tuning effect's std in rerun sd (skewed: minus an exponential")
    print("of mean 2).\n")
    print("| tuning | " + " | ".join(f"k = {k}, R = {r}" for k in KS for r in REPEATS) + " |")
    print("|---|" + "---:|" * (len(KS) * len(REPEATS)))
    for t in TUNING:
        print(f"| {t} | " + " | ".join(percent(next(results)) for _ in KS for _ in REPEATS) + " |")
    print(f"\nCoverage of the 95% interval of an optimizer's mean over its pipelines ({args.draws} a setting):\n")
    print("| tuning | " + " | ".join(f"R = {r}" for r in (*REPEATS, 10)) + " |")
    print("|---|" + "---:|" * (len(REPEATS) + 1))
    for t in TUNING:
        print(f"| {t} | " + " | ".join(percent(next(results)) for _ in (*REPEATS, 10)) + " |")
    print("\nPower: one optimizer shifted up; each cell: claimed to beat every other / at least one.\n")
    print("| tuning | optimizers | repeats | " + " | ".join(f"{s} sd" for s in SHIFTS) + " |")
    print("|---|---:|---:|" + "---:|" * len(SHIFTS))
    for t in ("0", "1"):
        for k in KS:
            for r in REPEATS:
                cells = [next(results) for _ in SHIFTS]
                row = " | ".join(f"{percent(every)} / {percent(some)}" for every, some in cells)
                print(f"| {t} | {k} | {r} | {row} |")


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options, print the machine and settings, the tables and the time taken."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2000, help="simulated studies a setting (tables 1 and 3)")
    parser.add_argument("--draws", type=int, default=10_000, help="intervals a setting (table 2)")
    parser.add_argument("--seed", type=int, default=0, help="the root of every setting's random stream")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--quick", action="store_true", help="200 studies and 1,000 intervals a setting")
    args = parser.parse_args(argv)
    if args.quick:
        args.studies, args.draws = 200, 1000
    started = time.perf_counter()
    print(f"{cpu()}; {args.processes} processes")
    print(f"seed {args.seed}, {args.studies} studies and {args.draws} intervals a setting, alpha {stats.ALPHA}")
    print_tables(args)
    print_pipeline_tables(args)
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
