"""The statistics behind every verdict, on cases whose answer is known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from gdtrain.report import stats


def test_identical_samples_tie() -> None:
    values = [0.9, 0.91, 0.92, 0.93, 0.94]
    pair = stats.compare_pair("adam", values, "sgd", list(values))
    assert pair.p_a_beats_b == 0.5
    assert pair.ci[0] < 0.5 < pair.ci[1]
    assert pair.verdict == "no detectable difference"
    assert stats.letters(["adam", "sgd"], [pair]) == {"adam": "a", "sgd": "a"}


def test_constant_samples_tie_with_a_point_interval() -> None:
    pair = stats.compare_pair("a", [1.0, 1.0, 1.0], "b", [1.0, 1.0, 1.0])
    assert (pair.p_a_beats_b, pair.ci, pair.verdict) == (0.5, (0.5, 0.5), "no detectable difference")


def test_fully_separated_samples_beat_with_certainty() -> None:
    better, worse = [0.95, 0.96, 0.97, 0.98, 0.99], [0.80, 0.81, 0.82, 0.83, 0.84]
    pair = stats.compare_pair("adam", better, "sgd", worse)
    assert pair.p_a_beats_b == 1.0
    assert pair.ci == (1.0, 1.0)
    assert pair.verdict == "adam beats sgd" and pair.a_beats_b
    reverse = stats.compare_pair("sgd", worse, "adam", better)
    assert reverse.p_a_beats_b == 0.0 and reverse.verdict == "adam beats sgd" and not reverse.a_beats_b
    assert stats.letters(["adam", "sgd"], [reverse]) == {"adam": "a", "sgd": "b"}


def test_lower_is_better_turns_the_comparison_round() -> None:
    low_loss, high_loss = [0.10, 0.11, 0.12, 0.13, 0.14], [0.5, 0.6, 0.7, 0.8, 0.9]
    pair = stats.compare_pair("adam", low_loss, "sgd", high_loss, higher_is_better=False)
    assert pair.p_a_beats_b == 1.0 and pair.verdict == "adam beats sgd"
    assert stats.p_beats(low_loss, high_loss, higher_is_better=True) == 0.0


def test_two_seeds_are_never_enough_to_call_a_winner() -> None:
    # separated, yet 1 arrangement in 6 is separated by chance: the bootstrap alone would say [1, 1]
    pair = stats.compare_pair("a", [0.9, 0.91], "b", [0.5, 0.51])
    assert pair.p_a_beats_b == 1.0 and pair.ci == (1.0, 1.0)
    assert pair.p_value > 0.05 and pair.verdict == "no detectable difference"


def test_ties_count_half() -> None:
    assert stats.p_beats([1.0, 2.0], [1.0, 1.0]) == pytest.approx((0.5 + 0.5 + 1 + 1) / 4)


def test_overlapping_noise_is_not_ranked() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.9, 0.01, 5), rng.normal(0.9, 0.01, 5)
    pair = stats.compare_pair("a", a.tolist(), "b", b.tolist())
    assert pair.verdict == "no detectable difference"
    assert pair.ci[0] <= 0.5 <= pair.ci[1]


def test_letters_never_place_a_row_above_one_it_cannot_be_told_from() -> None:
    def pair(a: str, b: str, winner: str | None) -> stats.Pair:
        return stats.Pair(a, b, 0.5, (0.5, 0.5), 0.5, 0.5, winner)

    # a beats c; b ties with both: b shares a letter with each, so nothing ranks b above c
    pairs = [pair("a", "b", None), pair("a", "c", "a"), pair("b", "c", None)]
    assert [p.verdict for p in pairs] == ["no detectable difference", "a beats c", "no detectable difference"]
    assert stats.letters(["a", "b", "c"], pairs) == {"a": "a", "b": "ab", "c": "b"}
    assert stats.best_set(["a", "b", "c"], pairs) == ["a", "b"] and stats.beats("a", pairs) == ["c"]
    # the best ties with two that differ from each other: it shares a letter with both
    pairs = [pair("a", "b", None), pair("a", "c", None), pair("b", "c", "b")]
    assert stats.letters(["a", "b", "c"], pairs) == {"a": "ab", "b": "a", "c": "b"}
    assert stats.best_set(["a", "b", "c"], pairs) == ["a", "b", "c"]
    every = [pair(x, y, x) for x, y in itertools.combinations("abcd", 2)]
    assert stats.letters(list("abcd"), every) == {"a": "a", "b": "b", "c": "c", "d": "d"}


@pytest.mark.parametrize("values", [[0.3, 0.9, 0.5], [0.1, 0.1, 0.7, 0.4], [2.0, -1.0, 0.5, 0.5, 3.0]])
@pytest.mark.parametrize("higher_is_better", [True, False])
def test_budget_curve_equals_brute_force_over_all_ordered_draws(values: list[float], higher_is_better: bool) -> None:
    best = max if higher_is_better else min
    for k in range(1, 5):
        draws = list(itertools.product(values, repeat=k))  # all N^k ordered draws with replacement
        brute = sum(best(d) for d in draws) / len(draws)
        assert stats.expected_best(values, k, higher_is_better) == pytest.approx(brute, rel=1e-12)
    curve = stats.budget_curve(values, higher_is_better)
    assert curve[0] == pytest.approx(np.mean(values))
    ordered = curve if higher_is_better else [-v for v in curve]
    assert ordered == sorted(ordered)  # more trials never make the expected best worse


def test_summary_of_reruns() -> None:
    values = [0.91, 0.93, 0.92, 0.95, 0.90]
    s = stats.summarise(values)
    assert (s.n, s.mean, s.median) == (5, pytest.approx(0.922), 0.92)
    assert s.std == pytest.approx(np.std(values, ddof=1))
    # Student's t interval: mean ± t(0.975, 4) · s / √5
    half = 2.7764451051977987 * np.std(values, ddof=1) / np.sqrt(5)
    assert s.ci == (pytest.approx(0.922 - half), pytest.approx(0.922 + half))
    same = stats.summarise([0.5, 0.5, 0.5])
    assert same.ci == (0.5, 0.5) and same.std == 0.0


def test_the_bootstraps_u_statistic_is_mannwhitneyus() -> None:
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(1)
    for n, m in ((3, 5), (5, 5), (10, 7)):
        x, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 4, m).astype(float)  # ties on purpose
        assert stats.u_fraction(x, y) == pytest.approx(mannwhitneyu(x, y).statistic / (n * m))
        batch_x, batch_y = rng.normal(size=(6, n)), rng.normal(size=(6, m))  # as the bootstrap calls it
        expected = [mannwhitneyu(a, b).statistic / (n * m) for a, b in zip(batch_x, batch_y)]
        assert stats.u_fraction(batch_x, batch_y, axis=-1) == pytest.approx(expected)


def test_the_two_sided_p_is_exact_with_ties_where_scipy_would_approximate() -> None:
    # the case: with a tie scipy leaves the exact test for the normal approximation (0.038);
    # the 20 ways to split six values into two threes give 2/20 as extreme
    better, worse = [0.9712, 0.9712, 0.9715], [0.969, 0.97, 0.9705]
    assert stats.two_sided_p(better, worse) == pytest.approx(0.1)
    assert stats.compare_pair("a", better, "b", worse).winner is None


@pytest.mark.parametrize("n", [3, 4, 5])
def test_the_exact_p_counts_every_split(n: int) -> None:
    from scipy.stats import rankdata

    rng = np.random.default_rng(n)
    x, y = rng.integers(0, 4, n).astype(float), rng.integers(1, 5, n + 1).astype(float)  # ties on purpose
    ranks, centre = rankdata(np.concatenate([x, y])), n * (2 * n + 2) / 2
    observed = abs(ranks[:n].sum() - centre)
    splits = [
        abs(ranks[list(idx)].sum() - centre) >= observed - 1e-9 for idx in itertools.combinations(range(2 * n + 1), n)
    ]
    assert stats.two_sided_p(x, y) == pytest.approx(sum(splits) / len(splits))


def test_holm_adjusts_step_down() -> None:
    assert stats.holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])


def test_a_family_of_pairs_makes_no_claim_the_adjustment_does_not_allow() -> None:
    # 5 seeds: each separated pair has exact p = 2/252 = 0.0079; alone a claim, but not one of 21 (x21 = 0.17)
    samples = {f"o{i}": [10 * i + j for j in range(5)] for i in range(7)}
    assert stats.compare_pair("o1", samples["o1"], "o0", samples["o0"]).winner == "o1"
    pairs = stats.compare_all(samples)
    assert len(pairs) == 21 and all(p.winner is None for p in pairs)
    assert min(p.p_adjusted for p in pairs) == pytest.approx(21 * 2 / 252)


def test_a_diverged_run_ranks_below_every_finished_one() -> None:
    finished, diverged = [0.5, 0.6, 0.7, 0.8, 0.9], [0.1, 0.2, float("-inf"), float("-inf"), float("-inf")]
    pair = stats.compare_pair("ok", finished, "wild", diverged)
    assert pair.p_a_beats_b == 1.0 and pair.winner == "ok"


def test_an_interval_stays_within_what_the_metric_can_take() -> None:
    lo, hi = stats.mean_interval([0.2, 0.99, 0.99], (0.0, 1.0))  # an accuracy: t alone would reach past 1
    assert 0.0 <= lo < hi == 1.0
    assert stats.mean_interval([0.2, 0.99, 0.99])[1] > 1.0


def test_values_far_from_every_bound_get_the_t_interval() -> None:
    values = [0.90, 0.91, 0.89, 0.905, 0.895]  # an accuracy 20 sd below 1: the bounds change nothing
    assert stats.mean_interval(values, (0.0, 1.0)) == stats.mean_interval(values)
    half = st.t.ppf(0.975, 4) * np.std(values, ddof=1) / math.sqrt(5)
    assert stats.mean_interval(values) == (pytest.approx(0.9 - half), pytest.approx(0.9 + half))


def test_values_piled_against_a_bound_get_the_far_limit_widened() -> None:
    # a loss-like sample that drew none of its long tail: lognormal (sigma 1) values, true mean e^0.5 = 1.65
    values = [0.4, 0.6, 0.7, 0.9, 1.2]  # mean 0.76, sd 0.30: within NEAR_BOUND sd of 0
    mean, se = 0.76, np.std(values, ddof=1) / math.sqrt(5)
    lo, hi = stats.mean_interval(values, (0.0, math.inf))
    assert lo == pytest.approx(mean - st.t.ppf(0.975, 4) * se)  # the side towards the bound as t has it
    assert hi == pytest.approx(mean + st.t.ppf(stats.FAR_SIDE, 4) * se)
    assert stats.mean_interval(values)[1] < math.exp(0.5) <= hi  # t alone misses the true mean; this holds it
    accuracy = [1 - v / 100 for v in values]  # the mirror image under an upper bound: the lower limit widens
    lo, hi = stats.mean_interval(accuracy, (0.0, 1.0))
    assert lo == pytest.approx(1 - (mean + st.t.ppf(stats.FAR_SIDE, 4) * se) / 100)
    assert hi == pytest.approx(1 - (mean - st.t.ppf(0.975, 4) * se) / 100)


@pytest.mark.parametrize(
    "values, unit, why",
    [
        ([0.9, 0.91], "values", "2 values"),
        ([0.9, 0.91, 0.92, 0.93], "values", "4 values"),
        ([0.9, 0.91, 0.92], "pipelines", "3 pipelines"),
        ([0.9] * 5, "values", "no spread"),
        ([0.9, 0.91, 0.92, 0.93, 0.94], "values", None),
    ],
)
def test_an_interval_below_five_values_or_without_spread_is_unreliable(values, unit, why) -> None:
    assert stats.unreliable(values, unit) == why


def test_a_summary_says_whether_its_interval_is_reliable() -> None:
    few, enough = stats.summarise([0.9, 0.91, 0.92]), stats.summarise([0.9, 0.91, 0.92, 0.93, 0.94])
    assert (few.reliable, few.unreliable) == (False, "3 values")
    assert (enough.reliable, enough.unreliable) == (True, None)
    assert few.ci == stats.mean_interval([0.9, 0.91, 0.92])  # still given, marked where it is printed
