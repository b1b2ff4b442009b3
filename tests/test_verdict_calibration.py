"""benchmarks/verdict_calibration.py on known cases, fixed seeds: designs that cannot claim anything claim
nothing, a far-apart pair is always told apart, fast_verdicts leaves compare_all's verdicts as they are,
and the same seed gives the same figures. No rate is checked against a band it could leave by chance."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from gdtrain.report import stats

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "verdict_calibration.py"


@pytest.fixture(scope="module")
def calibration():
    """The benchmark script as a module."""
    spec = importlib.util.spec_from_file_location("verdict_calibration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_a_null_rate_is_a_fraction_and_reproducible(calibration):
    rate = calibration.false_claim_rate("normal", 4, 5, 100, seed=3)
    assert 0.0 <= rate <= 1.0
    assert calibration.false_claim_rate("normal", 4, 5, 100, seed=3) == rate


@pytest.mark.parametrize(
    "kind, k, n",
    [
        ("normal", 2, 2),  # the smallest two-sided p is 2 / C(4, 2) = 1/3
        ("accuracy", 2, 2),
        ("normal", 2, 3),  # 2 / C(6, 3) = 0.1
        ("normal", 7, 5),  # 2 / C(10, 5) = 0.0079, times 21 pairs: 0.17
    ],
)
def test_a_design_that_cannot_reach_alpha_never_claims(calibration, kind, k, n):
    assert calibration.false_claim_rate(kind, k, n, 200, seed=0) == 0.0


def test_a_pair_ten_sd_apart_is_always_told_apart(calibration):
    # five seeds a side: complete separation gives p = 2/252, below 0.05
    assert calibration.power(2, 5, 10.0, 100, seed=0) == (1.0, 1.0)


def test_one_optimizer_far_ahead_of_three_beats_them_all(calibration):
    assert calibration.power(4, 10, 10.0, 50, seed=0) == (1.0, 1.0)


@pytest.mark.parametrize("kind, k, n", [("normal", 4, 5), ("accuracy", 4, 5), ("accuracy", 3, 20), ("normal", 3, 3)])
def test_fast_verdicts_change_no_p_value_and_no_verdict(calibration, kind, k, n):
    rng = np.random.default_rng(7)
    for _ in range(3):
        values = calibration.draw(rng, kind, (k, n))
        values[0] += 0.02  # a difference, so that some pairs are claimed
        samples = {f"o{i}": row for i, row in enumerate(values)}
        with calibration.fast_verdicts():
            fast = stats.compare_all(samples)
        slow = stats.compare_all(samples)
        assert [(p.a, p.b, p.p_a_beats_b, p.p_value, p.p_adjusted, p.winner) for p in fast] == [
            (p.a, p.b, p.p_a_beats_b, p.p_value, p.p_adjusted, p.winner) for p in slow
        ]
    assert not np.isnan(slow[0].ci[0])  # the patches are gone after the block


def test_the_exact_test_on_small_tied_samples_is_unchanged(calibration):
    # issue 20's case (scipy's normal approximation gave 0.038): of the 20 splits of six values into two
    # threes, 2 are as extreme, ties included
    better, worse = [0.9712, 0.9712, 0.9715], [0.969, 0.97, 0.9705]
    with calibration.fast_verdicts():
        assert stats.two_sided_p(better, worse) == pytest.approx(2 / 20)


def test_coverage_of_normal_intervals_with_a_fixed_seed(calibration):
    # deterministic: seed 0 gives one fixed figure, here near the nominal 95%
    covered = calibration.coverage("normal", 10, 2000, seed=0)
    assert covered == calibration.coverage("normal", 10, 2000, seed=0)
    assert 0.93 <= covered <= 0.97


def test_intervals_below_five_values_are_all_flagged_and_none_from_five_up(calibration):
    # deterministic: the rule flags by the count of values (and no spread), whatever they are
    for kind in ("normal", "lognormal"):
        covered, every, flagged, _ = calibration.interval_figures(kind, 3, 200, seed=0)
        assert np.isnan(covered) and flagged == 1.0 and 0.0 <= every <= 1.0
        covered, every, flagged, _ = calibration.interval_figures(kind, 5, 200, seed=0)
        assert flagged == 0.0 and covered == every
    assert calibration.interval_figures("normal", 10, 200, seed=0)[3] == 1.0  # 10 sd from 1: the t interval


def test_an_unknown_kind_of_data_is_an_error(calibration):
    with pytest.raises(ValueError, match="Unknown kind of data: uniform"):
        calibration.draw(np.random.default_rng(0), "uniform", (2, 2))


def test_the_tables_do_not_depend_on_the_number_of_processes(calibration, capsys):
    printed = []
    for processes in ("1", "2"):
        calibration.main(["--studies", "4", "--draws", "10", "--processes", processes])
        out = capsys.readouterr().out
        printed.append([line for line in out.splitlines() if line.startswith("|")])
    assert printed[0] == printed[1]
    # header and rule, then one row a setting: tables 1, 2 and 3, then table 4's false claims, coverage and power
    assert len(printed[0]) == (2 + 6) + (2 + 4) + (2 + 12) + (2 + 5) + (2 + 5) + (2 + 12)
