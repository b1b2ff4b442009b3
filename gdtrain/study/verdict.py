"""A study's numbers, from its run folders: choices, reruns, pairs, letters and budget curves.

Everything the report says is computed here once, into StudyResults; the report and the figures
only format it, and results.json is its to_json(). A diverged trial or rerun is a result, scored
as the worst value any run of its kind (trial or rerun) reached in the study: it loses every
comparison and drags its optimizer's mean and budget curve down, as it should, without making
them infinite. Which way is better comes from gdtrain/core/metrics.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gdtrain.core import metrics
from gdtrain.core.folders import Run, read_run
from gdtrain.report import stats
from gdtrain.report.compare import figures


@dataclass(frozen=True)
class Trial:
    """One tuning trial: the settings it searched and its final select value."""

    name: str  # the study's name for the point: adam-t01-lr0.01
    settings: dict[str, Any]  # the searched keys' values
    select_value: float | None  # None: it diverged, or never logged the select metric
    status: str  # the run's status (core/folders.py)
    run_dir: str
    optimizer: dict[str, Any]  # the optimizer section the run resolved, defaults included

    @property
    def lr(self) -> float:
        """The trial's lr: every optimizer of a study searches it (study/spec.py)."""
        return self.settings["lr"]

    def as_dict(self) -> dict[str, Any]:
        """The trial as results.json lists it."""
        return asdict(self)


@dataclass(frozen=True)
class Tuning:
    """One optimizer's tuning, as the runner hands it to the verdict: every trial and the one chosen."""

    label: str
    trials: tuple[Trial, ...]
    chosen: dict[str, Any] | None  # the chosen trial's optimizer section; None: every trial diverged
    chosen_trial: str | None  # the chosen trial's name


@dataclass(frozen=True)
class Setup:
    """What the study asked: its metrics, target and seeds, as the report states them."""

    select: str  # the validation metric that chose each optimizer's setting
    report: str  # the metric of the verdict
    seeds: int  # reruns per chosen setting
    target: float | None  # the select value whose steps to reach are reported
    study: str  # the study's name
    source: str  # the study file
    budget: int  # trials per optimizer
    sampler: str
    tuning_seed: int
    rerun_seeds: tuple[int, ...]


@dataclass(frozen=True)
class Reruns:
    """The chosen setting's reruns: the report metric of each, a diverged one scored worst."""

    values: tuple[float, ...]
    seeds: tuple[int | None, ...]
    statuses: tuple[str, ...]
    run_dirs: tuple[str, ...]
    diverged: int
    summary: stats.Summary | None  # mean, median, std and the CI of the mean; None below two values

    def as_dict(self) -> dict[str, Any]:
        """The reruns as results.json lists them."""
        out: dict[str, Any] = {
            "values": list(self.values),
            "seeds": list(self.seeds),
            "statuses": list(self.statuses),
            "run_dirs": list(self.run_dirs),
            "diverged": self.diverged,
        }
        if self.summary is not None:
            s = self.summary
            out |= {"mean": s.mean, "median": s.median, "std": s.std, "ci": list(s.ci)}
        return out


@dataclass(frozen=True)
class Reach:
    """Steps and samples to reach the target on the select curve, over the finished reruns that reached it."""

    target: float
    reached: int  # finished reruns that reached the target
    of: int  # finished reruns
    steps: stats.Summary | None  # None: no rerun reached it
    samples: stats.Summary | None

    def as_dict(self) -> dict[str, Any]:
        """The reach as results.json lists it: each estimate as its mean and CI."""
        return {
            "target": self.target,
            "reached": self.reached,
            "of": self.of,
            "steps": _estimate(self.steps),
            "samples": _estimate(self.samples),
        }


def _estimate(summary: stats.Summary | None) -> dict[str, Any] | None:
    return None if summary is None else {"mean": summary.mean, "ci": list(summary.ci)}


@dataclass(frozen=True)
class OptimizerResult:
    """One optimizer of the study: its tuning, budget curve, reruns and letters."""

    tuning: Tuning
    budget_curve: tuple[float, ...]  # expected best select value after k = 1, 2, ... trials
    reruns: Reruns
    to_target: Reach | None  # None: the study has no target
    group: (
        str | None
    )  # letters (stats.letters): optimizers sharing one show no detectable difference; None: not compared

    def as_dict(self) -> dict[str, Any]:
        """The optimizer as results.json lists it."""
        reach = None if self.to_target is None else self.to_target.as_dict()
        out = {
            "chosen": self.tuning.chosen,
            "chosen_trial": self.tuning.chosen_trial,
            "trials": [t.as_dict() for t in self.tuning.trials],
            "budget_curve": list(self.budget_curve),
            "reruns": self.reruns.as_dict(),
            "to_target": reach,
        }
        return out | ({"group": self.group} if self.group is not None else {})


@dataclass(frozen=True)
class StudyResults:
    """Everything a study found: each optimizer, every pair of them, the best and the letters."""

    setup: Setup
    optimizers: dict[str, OptimizerResult]  # by label, in the study file's order
    pairs: tuple[stats.Pair, ...]  # every two compared optimizers, in the study file's order
    order: tuple[str, ...]  # the compared optimizers, best mean first (a ranking only where the letters say so)
    best: tuple[str, ...]  # the best by mean and every optimizer it cannot be told from
    unranked: tuple[str, ...]  # under two reruns: not compared

    @property
    def ranked(self) -> list[str]:
        """The compared optimizers, best mean first."""
        return list(self.order)

    def to_json(self) -> dict[str, Any]:
        """results.json."""
        s = self.setup
        return {
            "select": s.select,
            "report": s.report,
            "higher_is_better": metrics.higher_is_better(s.report),
            "seeds": s.seeds,
            "target": s.target,
            "optimizers": {label: e.as_dict() for label, e in self.optimizers.items()},
            "pairs": [
                {
                    "a": p.a,
                    "b": p.b,
                    "p_a_beats_b": p.p_a_beats_b,
                    "ci": list(p.ci),
                    "p_value": p.p_value,
                    "p_adjusted": p.p_adjusted,
                    "winner": p.winner,
                    "verdict": p.verdict,
                }
                for p in self.pairs
            ],
            "best": list(self.best),
            "unranked": list(self.unranked),
            "study": s.study,
            "source": s.source,
            "budget": s.budget,
            "sampler": s.sampler,
            "tuning_seed": s.tuning_seed,
            "rerun_seeds": list(s.rerun_seeds),
        }


def final_value(run: Run, metric: str) -> float | None:
    """The run's final value of `metric` (None when it diverged or never logged it)."""
    value = run.summary.get("final", {}).get(metric) if run.status == "finished" else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _worst(values: list[float | None], metric: str) -> float | None:
    finite = [v for v in values if v is not None]
    return metrics.worst_of(metric)(finite) if finite else None


def _scored(values: list[float | None], worst: float | None) -> list[float]:
    return [worst if v is None else v for v in values if v is not None or worst is not None]


def choose(trials: list[Trial], select: str) -> Trial | None:
    """The trial with the best select value (the first among equals); None when all diverged."""
    scored = [t for t in trials if t.select_value is not None]
    return metrics.best_of(select)(scored, key=lambda t: t.select_value) if scored else None


def trial_record(name: str, settings: dict[str, Any], run_dir: Path, select: str) -> Trial:
    """One tuning trial, read from its run folder."""
    run = read_run(run_dir)
    return Trial(
        name,
        settings,
        final_value(run, select),
        run.status,
        str(run_dir),
        {k.removeprefix("optimizer."): v for k, v in run.config.items() if k.startswith("optimizer.")},
    )


def _to_target(runs: list[Run], select: str, target: float | None) -> Reach | None:
    """Steps and samples to reach `target` on the select curve, over the reruns that reached it."""
    if target is None:
        return None
    steps, samples = [], []
    for run in runs:
        reached = figures(run, select, target).steps_to_target
        if reached is not None:
            epochs, seen = run.summary.get("epochs") or 0, run.summary.get("samples") or 0
            epoch = next(e for s, e, _ in run.curve(select) if s == reached)
            steps.append(reached)
            samples.append(epoch * seen // epochs if epochs else None)
    got_steps, got_samples = ([v for v in values if v is not None] for values in (steps, samples))
    return Reach(
        target,
        len(steps),
        len(runs),
        stats.summarise(got_steps, (0.0, math.inf)) if got_steps else None,
        stats.summarise(got_samples, (0.0, math.inf)) if got_samples else None,
    )


def _reruns(runs: list[Run], values: list[float], report: str) -> Reruns:
    return Reruns(
        tuple(values),
        tuple(r.config.get("experiment.seed") for r in runs),
        tuple(r.status for r in runs),
        tuple(str(r.path) for r in runs),
        sum(r.status == "diverged" for r in runs),
        stats.summarise(values, metrics.bounds(report)) if len(values) >= 2 else None,
    )


def analyse(tunings: list[Tuning], reruns: dict[str, list[str]], setup: Setup) -> StudyResults:
    """The study's results from each optimizer's tuning and its reruns' folders (`reruns`: by label)."""
    select, report = setup.select, setup.report
    worst_trial = _worst([t.select_value for tuning in tunings for t in tuning.trials], select)
    runs = {tuning.label: [read_run(Path(p)) for p in reruns[tuning.label]] for tuning in tunings}
    worst_rerun = _worst([final_value(r, report) for rs in runs.values() for r in rs], report)
    values = {label: _scored([final_value(r, report) for r in rs], worst_rerun) for label, rs in runs.items()}
    done = {label: _reruns(runs[label], values[label], report) for label in runs}
    ranked = [label for label in runs if done[label].summary is not None]
    up = metrics.higher_is_better(report)
    pairs = tuple(stats.compare_all({label: values[label] for label in ranked}, up))  # Holm over every pair
    by_mean = sorted(ranked, key=lambda label: done[label].summary.mean, reverse=up)
    rank = stats.letters(by_mean, pairs)
    optimizers = {}
    for tuning in tunings:
        label = tuning.label
        trial_values = _scored([t.select_value for t in tuning.trials], worst_trial)
        curve = stats.budget_curve(trial_values, metrics.higher_is_better(select)) if worst_trial is not None else []
        finished = [r for r in runs[label] if r.status == "finished"]
        reach = _to_target(finished, select, setup.target)
        optimizers[label] = OptimizerResult(tuning, tuple(curve), done[label], reach, rank.get(label))
    unranked = tuple(label for label in runs if label not in ranked)
    return StudyResults(setup, optimizers, pairs, tuple(by_mean), tuple(stats.best_set(by_mean, pairs)), unranked)
