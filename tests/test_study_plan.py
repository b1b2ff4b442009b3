"""`gdtrain study STUDY --plan`: the counts, what the design can claim, a measured estimate, and
nothing written under --runs-dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clihelp import gdtrain, one_error, write
from gdtrain.study import plan
from test_study import SMALL as SHRUNK

SMALL = SHRUNK + "repeats: 2\n"  # the shrunk quick study of tests/test_study.py, with two repeats


def study_file(tmp_path: Path, **changes: object) -> Path:
    doc = yaml.safe_load(SMALL) | changes
    return write(tmp_path, yaml.safe_dump(doc), "study.yaml")


def test_plan_counts_the_runs_measures_the_time_and_writes_nothing(tmp_path: Path) -> None:
    result = gdtrain("study", study_file(tmp_path), "--plan", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "runs: 8 tuning trials (2 optimizers × 2 trials × 2 repeats) + 8 reruns" in result.stdout
    assert lines[1].endswith("= 16"), lines[1]
    assert "how: stacked, tuning as 1 group of 8, reruns as 1 group of 8" in result.stdout
    assert any(line.startswith("time: ≈ ") and "measured on this machine" in line for line in lines), lines
    assert "detects a difference of" in result.stdout and "if tuning adds half a std" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_plan_one_by_one_with_batch_runs_1(tmp_path: Path) -> None:
    result = gdtrain("study", study_file(tmp_path), "--plan", "--batch-runs", "1", "--runs-dir", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "how: one run at a time (--batch-runs 1)" in result.stdout
    assert not (tmp_path / "r").exists()


def test_seven_optimizers_with_five_seeds_cannot_declare_anything(tmp_path: Path) -> None:
    arms = [{"name": "sgd", "label": f"sgd{i}", "lr": [0.1]} for i in range(7)]
    path = study_file(tmp_path, optimizers=arms, budget=1, seeds=5, repeats=1)
    result = gdtrain("study", path, "--plan", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "runs: 7 tuning trials" in result.stdout and "35 reruns" in result.stdout
    assert "21 pairs: Holm's first threshold 0.05/21 = 0.00238" in result.stdout
    assert "2/C(10,5) = 0.00794" in result.stdout
    assert "cannot declare any difference: use at least 6 seeds or repeats ≥ 2" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_few_repeats_say_a_diverged_rerun_blocks_claims() -> None:
    lines = plan.claim_lines(7, 4, 5)
    assert any("2/C(8,4) = 0.0286" in line and "repeats ≥ 6" in line for line in lines), lines
    assert not any("diverges" in line for line in plan.claim_lines(2, 4, 5))  # 2/70 < 0.05: no block


def test_the_estimate_is_linear_in_runs_and_steps() -> None:
    timing = plan.Timing(members=(8,), step=(0.08,), rest=(1.6,), first=2.0)
    assert timing.seconds([16], 100, 1) == pytest.approx(2.0 + 2 * (1.6 + 8.0))
    two = plan.Timing(members=(8, 32), step=(0.08, 0.2), rest=(1.6, 4.0), first=2.0)  # a step: 0.04 s + 5 ms a member
    assert two.at(two.step, 224) == pytest.approx(0.04 + 0.005 * 224)
    assert two.seconds([224, 8], 100, 1) == pytest.approx(2.0 + (0.8 + 0.1 * 224 + 100 * 1.16) + (1.6 + 8.0))
    assert plan.duration(40) == "40 s" and plan.duration(420) == "7 min" and plan.duration(9000) == "2.5 h"


def test_a_bad_study_fails_as_the_study_does(tmp_path: Path) -> None:
    assert "budget: must be >= 1" in one_error(gdtrain("study", study_file(tmp_path, budget=0), "--plan"))
    assert "no-such.yaml" in one_error(gdtrain("study", tmp_path / "no-such.yaml", "--plan"))
