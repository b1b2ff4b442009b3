"""A study's typed results: which way a metric improves, results.json in the layout it has always had,
the verdict's words from a pair's winner, and the analysis of hand-made run folders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from gdtrain.core import metrics
from gdtrain.report import stats
from gdtrain.study import verdict
from gdtrain.study.report import markdown, verdict_lines
from gdtrain.study.verdict import OptimizerResult, Reach, Reruns, Setup, StudyResults, Trial, Tuning


@pytest.mark.parametrize(
    ("metric", "higher"),
    [
        ("loss/train", False),
        ("loss/val", False),
        ("loss/test", False),
        ("accuracy/val", True),
        ("accuracy/test", True),
        ("lr", True),
    ],
)
def test_losses_go_down_and_everything_else_up(metric: str, higher: bool) -> None:
    assert metrics.higher_is_better(metric) is higher
    assert metrics.direction(metric) == ("higher" if higher else "lower")
    assert metrics.best_of(metric)([0.2, 0.1, 0.3]) == (0.3 if higher else 0.1)
    assert metrics.worst_of(metric)([0.2, 0.1, 0.3]) == (0.1 if higher else 0.3)
    assert metrics.reaches(metric, 0.5, 0.5) and metrics.reaches(metric, 0.6, 0.5) is higher


def test_choose_takes_the_best_select_value_the_first_among_equals() -> None:
    trials = [_trial("t1", 0.1, 0.5), _trial("t2", 0.01, None), _trial("t3", 1.0, 0.2), _trial("t4", 0.3, 0.2)]
    assert verdict.choose(trials, "loss/val").name == "t3"
    assert verdict.choose(trials, "accuracy/val").name == "t1"
    assert verdict.choose([_trial("t1", 0.1, None)], "loss/val") is None


def _trial(name: str, lr: float, value: float | None) -> Trial:
    return Trial(
        name,
        {"lr": lr},
        value,
        "finished" if value is not None else "diverged",
        f"runs/s/{name}",
        {"name": "sgd", "lr": lr},
    )


def hand_made() -> StudyResults:
    """Two compared optimizers, one whose every trial diverged; numbers chosen by hand, not computed."""
    setup = Setup("loss/val", "loss/test", 2, 0.5, "s", "s.yaml", 2, "grid", 0, (1, 2))
    sgd = OptimizerResult(
        (
            Tuning(
                "sgd",
                (_trial("sgd-t01", 0.1, 0.4), _trial("sgd-t02", 10.0, None)),
                {"name": "sgd", "lr": 0.1},
                "sgd-t01",
            ),
        ),
        (0.6, 0.5),
        Reruns(
            (0.3, 0.35),
            (1, 2),
            ("finished", "finished"),
            ("runs/s/sgd-s1", "runs/s/sgd-s2"),
            0,
            stats.Summary(2, 0.325, 0.325, 0.035, (0.3, 0.35)),
            (1, 1),
        ),
        Reach(0.5, 1, 2, stats.Summary(1, 40.0, 40.0, 0.0, (40.0, 40.0)), None),
        "a",
    )
    adam = OptimizerResult(
        (Tuning("adam", (_trial("adam-t01", 0.01, 0.45),), {"name": "adam", "lr": 0.01}, "adam-t01"),),
        (0.45,),
        Reruns(
            (0.5, None),
            (1, 2),
            ("finished", "diverged"),
            ("runs/s/adam-s1", "runs/s/adam-s2"),
            1,
            None,
            (1, 1),
        ),
        Reach(0.5, 0, 1, None, None),
        "b",
    )
    wild = OptimizerResult(
        (Tuning("wild", (_trial("wild-t01", 10.0, None),), None, None),),
        (0.6,),
        Reruns((None, None), (None, None), ("not run", "not run"), (None, None), 2, None, (1, 1)),
        Reach(0.5, 0, 0, None, None),
        "b",
    )
    pair = stats.Pair("sgd", "adam", 1.0, (1.0, 1.0), 0.01, 0.01, "sgd")
    optimizers = {"sgd": sgd, "adam": adam, "wild": wild}
    return StudyResults(setup, optimizers, (pair,), ("sgd", "adam", "wild"), ("sgd",), 0.05)


def test_results_json_has_its_layout() -> None:
    def trial(name: str, lr: float, value: float | None) -> dict:
        return {
            "name": name,
            "settings": {"lr": lr},
            "select_value": value,
            "status": "finished" if value is not None else "diverged",
            "run_dir": f"runs/s/{name}",
            "optimizer": {"name": "sgd", "lr": lr},
            "repeat": 1,
        }

    expected = {
        "select": "loss/val",
        "report": "loss/test",
        "higher_is_better": False,
        "seeds": 2,
        "target": 0.5,
        "optimizers": {
            "sgd": {
                "chosen": {"name": "sgd", "lr": 0.1},
                "chosen_trial": "sgd-t01",
                "trials": [trial("sgd-t01", 0.1, 0.4), trial("sgd-t02", 10.0, None)],
                "choices": [],
                "budget_curve": [0.6, 0.5],
                "reruns": {
                    "values": [0.3, 0.35],
                    "seeds": [1, 2],
                    "repeats": [1, 1],
                    "statuses": ["finished", "finished"],
                    "run_dirs": ["runs/s/sgd-s1", "runs/s/sgd-s2"],
                    "diverged": 0,
                    "mean": 0.325,
                    "median": 0.325,
                    "std": 0.035,
                    "ci": [0.3, 0.35],
                },
                "to_target": {
                    "target": 0.5,
                    "reached": 1,
                    "of": 2,
                    "steps": {"mean": 40.0, "ci": [40.0, 40.0]},
                    "samples": None,
                },
                "group": "a",
            },
            "adam": {
                "chosen": {"name": "adam", "lr": 0.01},
                "chosen_trial": "adam-t01",
                "trials": [trial("adam-t01", 0.01, 0.45)],
                "choices": [],
                "budget_curve": [0.45],
                "reruns": {
                    "values": [0.5, None],
                    "seeds": [1, 2],
                    "repeats": [1, 1],
                    "statuses": ["finished", "diverged"],
                    "run_dirs": ["runs/s/adam-s1", "runs/s/adam-s2"],
                    "diverged": 1,
                },
                "to_target": {"target": 0.5, "reached": 0, "of": 1, "steps": None, "samples": None},
                "group": "b",
            },
            "wild": {
                "chosen": None,
                "chosen_trial": None,
                "trials": [trial("wild-t01", 10.0, None)],
                "choices": [],
                "budget_curve": [0.6],
                "reruns": {
                    "values": [None, None],
                    "seeds": [None, None],
                    "repeats": [1, 1],
                    "statuses": ["not run", "not run"],
                    "run_dirs": [None, None],
                    "diverged": 2,
                },
                "to_target": {"target": 0.5, "reached": 0, "of": 0, "steps": None, "samples": None},
                "group": "b",
            },
        },
        "pairs": [
            {
                "a": "sgd",
                "b": "adam",
                "p_a_beats_b": 1.0,
                "ci": [1.0, 1.0],
                "p_value": 0.01,
                "p_adjusted": 0.01,
                "winner": "sgd",
                "verdict": "sgd beats adam",
            }
        ],
        "best": ["sgd"],
        "detectable": 0.05,
        "tuning_sd": 0.0,
        "repeats": 1,
        "repeat_seeds": [0],
        "study": "s",
        "source": "s.yaml",
        "budget": 2,
        "sampler": "grid",
        "tuning_seed": 0,
        "rerun_seeds": [1, 2],
    }
    # key order included: results.json's bytes stay as they were
    assert json.dumps(hand_made().to_json(), indent=2) == json.dumps(expected, indent=2)


def test_the_verdict_names_the_winner_whichever_side_of_the_pair_it_is() -> None:
    results = hand_made()
    reversed_pair = stats.Pair("adam", "sgd", 0.1, (0.0, 0.25), 0.03, 0.03, "sgd")
    assert (reversed_pair.winner, reversed_pair.loser) == ("sgd", "adam")
    tie = stats.Pair("adam", "sgd", 0.5, (0.2, 0.8), 0.5, 0.5, None)
    assert (tie.winner, tie.loser) == (None, None)
    lines = verdict_lines(
        StudyResults(results.setup, results.optimizers, (reversed_pair,), results.order, results.best)
    )
    assert lines[:2] == [
        "**sgd** is best on loss/test (2 seeds each).",
        "Letters (optimizers that share one show no detectable difference): sgd a, adam b, wild b.",
    ]
    assert "- sgd beats adam: P = 0.90, 95% CI 0.75–1.00, p = 0.03 (two-sided, Holm over 1 pairs)" in lines
    assert lines[-1] == "- no rerun finished (ranked last): wild"
    two = {label: results.optimizers[label] for label in ("adam", "sgd")}
    lines = verdict_lines(StudyResults(results.setup, two, (tie,), ("adam", "sgd"), ("adam", "sgd")))
    assert lines == [
        "**No detectable difference**: adam and sgd tie on loss/test with 2 seeds each.",
        "This design could not have declared any difference: with 2 optimizers and 2 seeds the smallest possible "
        "p is above 0.05 after Holm's adjustment; add seeds or repeats.",
        "- no detectable difference with 2 seeds: adam–sgd",
    ]


def _run(folder: Path, status: str, seed: int, final: dict[str, float]) -> str:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"experiment: {{seed: {seed}}}\noptimizer: {{name: sgd, lr: 0.1}}\n")
    (folder / "summary.json").write_text(json.dumps({"status": status, "final": final, "epochs": 2, "samples": 200}))
    rows = [{"step": 10 * e, "epoch": e, **{tag: v * (3 - e) for tag, v in final.items()}} for e in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder)


def test_analyse_ranks_a_diverged_rerun_below_every_finished_one(tmp_path: Path) -> None:
    trials = {label: (_trial(f"{label}-t01", 0.1, v),) for label, v in (("a", 0.2), ("b", 0.3), ("c", None))}
    tunings = [
        Tuning(
            label,
            t,
            {"name": "sgd", "lr": 0.1} if t[0].select_value else None,
            t[0].name if t[0].select_value else None,
        )
        for label, t in trials.items()
    ]
    reruns = {
        ("a", 1): [_run(tmp_path / f"a{s}", "finished", s, {"loss/val": 0.1 * s}) for s in (1, 2, 3)],
        ("b", 1): [
            _run(tmp_path / "b1", "diverged", 1, {}),
            *[_run(tmp_path / f"b{s}", "finished", s, {"loss/val": 1.0 + s}) for s in (2, 3)],
        ],
    }  # c: every trial diverged, nothing rerun
    setup = Setup("loss/val", "loss/val", 3, 0.35, "s", "s.yaml", 1, "grid", 0, (1, 2, 3))
    results = verdict.analyse(tunings, reruns, setup)
    b, c = results.optimizers["b"], results.optimizers["c"]
    assert b.reruns.values == (None, 3.0, 4.0) and b.reruns.diverged == 1  # no value imputed from the others
    assert b.reruns.statuses == ("diverged", "finished", "finished") and b.reruns.seeds == (1, 2, 3)
    assert b.reruns.summary.mean == pytest.approx(3.5)  # over its finished reruns
    assert c.reruns.statuses == ("not run",) * 3 and c.reruns.diverged == 3 and c.reruns.summary is None
    assert results.optimizers["a"].reruns.summary.mean == pytest.approx(0.2)
    pairs = {(p.a, p.b): p for p in results.pairs}
    assert pairs["a", "b"].p_a_beats_b == 1.0  # the diverged rerun loses to every finished one
    assert pairs["b", "c"].p_a_beats_b == pytest.approx((2 * 3 + 3 * 0.5) / 9)  # diverged ties with not run
    assert pairs["a", "b"].p_value == pytest.approx(2 / 20)  # exact two-sided, 3 against 3
    assert results.ranked == ["a", "b", "c"]  # c never trained a rerun: last
    assert all(p.winner is None for p in results.pairs)  # 3 seeds cannot reach 0.05 after Holm over 3 pairs
    assert results.best == ("a", "b", "c") and results.detectable is None
    assert c.budget_curve == (0.3,)  # its diverged trial scored as the study's worst trial
    reach = results.optimizers["a"].to_target  # the curves fall from 2x to 1x the final value: steps 10, 20, 20
    assert (reach.reached, reach.of, reach.steps.mean) == (3, 3, pytest.approx(50 / 3))
    assert reach.samples.mean == pytest.approx(500 / 3)  # 100, 200, 200: the samples seen by the epoch that reached it


def test_an_unreliable_interval_is_marked_in_the_report_and_in_results_json() -> None:
    results = hand_made()
    sgd = results.optimizers["sgd"]
    summary = dataclasses.replace(sgd.reruns.summary, unreliable="2 values")  # as stats.summarise says of 2 reruns
    sgd = dataclasses.replace(sgd, reruns=dataclasses.replace(sgd.reruns, summary=summary))
    two = {"sgd": sgd, "adam": results.optimizers["adam"]}  # the pair hand_made compares
    results = dataclasses.replace(results, optimizers=two, order=("sgd", "adam"))
    reruns = results.to_json()["optimizers"]["sgd"]["reruns"]
    assert (reruns["ci"], reruns["ci_reliable"], reruns["ci_unreliable"]) == ([0.3, 0.35], False, "2 values")
    lines = markdown(results, []).splitlines()
    head = next(line for line in lines if line.startswith("| group | optimizer |"))
    assert head.rstrip(" |").endswith("95% CI reliable")
    row = next(line for line in lines if line.startswith("| a | sgd |"))
    assert "| 0.3–0.35 |" in row and row.endswith("| no (unreliable: 2 values) |")
    assert "ci_reliable" not in hand_made().to_json()["optimizers"]["sgd"]["reruns"]  # a reliable CI: as before
