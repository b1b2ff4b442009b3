"""Claims over repeated studies (gdtrain/report/pipelines.py) and what a design can detect
(gdtrain/report/power.py): the procedure's known cases, with fixed values and seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from gdtrain.report import pipelines, power, stats


def test_finished_pipelines_are_compared_by_welchs_t_on_their_means() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.0, 1.0, (4, 5)), rng.normal(0.5, 1.0, (4, 5))
    expected = st.ttest_ind(a.mean(axis=1), b.mean(axis=1), equal_var=False).pvalue
    assert pipelines.pipeline_p(a, b) == pytest.approx(expected)
    assert pipelines.pipeline_p(a, a.copy()) == pytest.approx(1.0)


def test_a_diverged_rerun_makes_the_test_an_exact_permutation_of_the_pipelines() -> None:
    better = np.array([[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]])
    worse = np.array([[-math.inf, 1.0], [2.0, 3.0], [3.5, 4.0]])
    # every pipeline of A above every one of B: 2 of the C(6, 3) = 20 splits are as far apart
    assert pipelines.pipeline_p(better, worse) == pytest.approx(2 / 20)
    (pair,) = pipelines.compare_pipelines({"a": better, "b": worse})
    assert pair.p_a_beats_b == 1.0 and pair.winner is None  # three pipelines a side cannot reach 0.05


def test_separated_pipelines_are_told_apart_and_alike_ones_are_not() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(0.9, 0.01, (3, 4, 5))  # 3 optimizers, 4 pipelines, 5 reruns
    alike = pipelines.compare_pipelines({f"o{i}": base[i] for i in range(3)})
    assert all(p.winner is None for p in alike)
    far = pipelines.compare_pipelines({"good": base[0] + 0.1, "bad": base[1]})
    assert [(p.winner, p.loser) for p in far] == [("good", "bad")]
    lo, hi = far[0].ci
    assert lo <= far[0].p_a_beats_b <= hi == 1.0


def test_lower_is_better_turns_the_claim_around() -> None:
    low = np.full((3, 2), 0.1) + np.arange(6).reshape(3, 2) * 1e-3
    high = low + 0.4
    (pair,) = pipelines.compare_pipelines({"low": low, "high": high}, higher_is_better=False)
    assert pair.winner == "low" and pair.p_a_beats_b == 1.0


def test_the_interval_of_the_mean_is_over_the_pipelines_means() -> None:
    values = np.array([[1.0, 3.0], [4.0, 6.0], [7.0, -math.inf]])  # a diverged rerun: its pipeline's mean is 7
    summary = pipelines.summarise(values)
    means = [2.0, 5.0, 7.0]
    assert summary.mean == pytest.approx(np.mean(means)) and summary.n == 5
    assert summary.ci == pytest.approx(stats.mean_interval(means))
    assert pipelines.summarise(np.full((2, 3), -math.inf)) is None
    assert summary.unreliable == "3 pipelines"  # 5 finished reruns, but the interval is over 3 means


def test_ranking_puts_every_diverged_run_last_and_a_winner_above_its_loser() -> None:
    samples = {"mixed": [0.99, -math.inf, -math.inf], "steady": [0.95, 0.96, 0.97], "never": [-math.inf] * 3}
    assert stats.ranking(samples, []) == ["steady", "mixed", "never"]
    forced = stats.Pair("never", "steady", 0.0, (0.0, 0.0), 0.01, 0.01, "never")  # a win the means do not show
    assert stats.ranking(samples, [forced]).index("never") < stats.ranking(samples, [forced]).index("steady")


def test_a_design_that_cannot_reach_holms_first_threshold_detects_nothing() -> None:
    assert power.smallest_p(5) == pytest.approx(2 / 252)
    assert not power.can_claim(7, 1, 5) and power.detectable(7, 1, 5, 1.0) is None  # 2/252 > 0.05/21
    assert power.can_claim(7, 1, 6) and power.can_claim(2, 1, 4) and not power.can_claim(2, 1, 3)
    assert power.can_claim(7, 3, 2)  # t on pipeline means: any p is reachable


def test_more_seeds_or_repeats_detect_smaller_differences() -> None:
    assert power.detectable(7, 1, 10, 1.0) < power.detectable(7, 1, 6, 1.0)
    assert power.detectable(7, 5, 5, 1.0) < power.detectable(7, 3, 5, 1.0)
    assert power.detectable(7, 3, 5, 1.0, 0.5) > power.detectable(7, 3, 5, 1.0, 0.0)  # tuning's spread costs
    assert power.detectable(2, 3, 5, 2.0) == pytest.approx(2 * power.detectable(2, 3, 5, 1.0))  # in the metric's units


def test_tuning_that_varies_for_one_optimizer_only_is_tested_by_welchs_t() -> None:
    steady = np.array([[0.90, 0.91], [0.905, 0.915], [0.91, 0.92]])
    wild = np.array([[0.80, 0.81], [0.95, 0.96], [0.99, 1.0]])
    expected = st.ttest_ind(steady.mean(axis=1), wild.mean(axis=1), equal_var=False).pvalue
    assert pipelines.pipeline_p(steady, wild) == pytest.approx(expected)


def test_repeat_means_without_spread_are_counted_not_given_p_zero() -> None:
    a = np.array([[0.8, 1.0], [1.0, 0.8]])  # both repeats' means 0.9
    b = np.array([[0.79, 0.99], [0.99, 0.79]])  # both 0.89
    assert pipelines.pipeline_p(a, b) == pytest.approx(2 / 6)  # 2 of the C(4, 2) splits are as far apart
