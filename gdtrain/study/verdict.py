"""A study's numbers, from its run folders: choices, reruns, pairs, letters and budget curves.

Everything the report says is computed here once, into StudyResults; the report and the figures
only format it, and results.json is its to_json(). A diverged rerun is a result without a value: it
ranks below every finished rerun of any optimizer (it enters the tests as -inf, +inf for a loss)
and is counted in its optimizer's divergence rate; means and intervals are over finished reruns.
A repeat whose every trial diverged has nothing to rerun: its reruns count as diverged, so an
optimizer that never trains ranks last. Without repeats the claims are stats.compare_all's (exact
Mann-Whitney over reruns), with them pipelines.compare_pipelines' (over the repeats' pipelines).
Only the budget curve still scores a diverged trial, as the worst trial value of the study, so
that an expected best stays finite. Which way is better comes from gdtrain/core/metrics.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gdtrain.core import metrics
from gdtrain.core.folders import Run, read_run
from gdtrain.report import pipelines, power, stats
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
    repeat: int = 1  # which of the study's repeats (1-based)


@dataclass(frozen=True)
class Choice:
    """One repeat's choice for an optimizer: what it chose, by how much, and what its reruns gave."""

    repeat: int
    trial: str | None  # the chosen trial; None: every trial diverged
    settings: dict[str, Any] | None  # the chosen trial's searched settings
    select_value: float | None
    runner_up: str | None  # the second-best trial
    margin: float | None  # how far the chosen trial's select value is ahead of the runner-up's
    noise: float | None  # the std of the select metric over this repeat's finished reruns
    mean: float | None  # the mean report metric of this repeat's finished reruns

    @property
    def near_tie(self) -> bool:
        """The runner-up is within the reruns' noise: which of the two was chosen is chance."""
        return self.margin is not None and self.noise is not None and self.margin < self.noise

    def as_dict(self) -> dict[str, Any]:
        """The choice as results.json lists it."""
        return asdict(self) | {"near_tie": self.near_tie}


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
    rerun_seeds: tuple[int, ...]  # repeat 1's
    repeats: int = 1  # independent tune → choose → rerun pipelines per optimizer
    repeat_seeds: tuple[int, ...] = (0,)  # each repeat's sampler and tuning seed
    scope: tuple[tuple[str, str], ...] = ()  # (optimizer, what was tuned over which range and what was fixed)


@dataclass(frozen=True)
class Reruns:
    """The chosen settings' reruns, every repeat's: the report metric of each, None where it diverged."""

    values: tuple[float | None, ...]
    seeds: tuple[int | None, ...]
    statuses: tuple[str, ...]  # a repeat whose every trial diverged: "not run" for each of its reruns
    run_dirs: tuple[str | None, ...]
    diverged: int  # reruns without a value: diverged, or not run
    summary: stats.Summary | None  # mean, median, std and the CI of the mean over finished reruns; None below two
    repeats: tuple[int, ...] = ()  # the repeat of each rerun

    @property
    def finished(self) -> list[float]:
        """The values of the finished reruns."""
        return [v for v in self.values if v is not None]

    def as_dict(self) -> dict[str, Any]:
        """The reruns as results.json lists them."""
        out: dict[str, Any] = {
            "values": list(self.values),
            "seeds": list(self.seeds),
            "repeats": list(self.repeats),
            "statuses": list(self.statuses),
            "run_dirs": list(self.run_dirs),
            "diverged": self.diverged,
        }
        if self.summary is not None:
            s = self.summary
            out |= {"mean": s.mean, "median": s.median, "std": s.std, "ci": list(s.ci)} | _caveat(s)
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
    return None if summary is None else {"mean": summary.mean, "ci": list(summary.ci)} | _caveat(summary)


def _caveat(summary: stats.Summary) -> dict[str, Any]:
    # only an unreliable CI says so: a reliable one's keys, and results.json written before, stay as they were
    return {} if summary.reliable else {"ci_reliable": False, "ci_unreliable": summary.unreliable}


@dataclass(frozen=True)
class OptimizerResult:
    """One optimizer of the study: its tunings (one a repeat), budget curve, reruns and letters."""

    tunings: tuple[Tuning, ...]
    budget_curve: tuple[float, ...]  # expected best select value after k = 1, 2, ... trials
    reruns: Reruns
    to_target: Reach | None  # None: the study has no target
    group: str  # letters (stats.letters): optimizers sharing one show no detectable difference
    choices: tuple[Choice, ...] = ()  # one a repeat

    @property
    def tuning(self) -> Tuning:
        """Repeat 1's tuning: the study's choice when it has no repeats."""
        return self.tunings[0]

    @property
    def trials(self) -> list[Trial]:
        """Every tuning trial of every repeat."""
        return [t for tuning in self.tunings for t in tuning.trials]

    @property
    def chosen_trials(self) -> set[str]:
        """The trials chosen, one a repeat (fewer where every trial of a repeat diverged)."""
        return {t.chosen_trial for t in self.tunings if t.chosen_trial is not None}

    def as_dict(self) -> dict[str, Any]:
        """The optimizer as results.json lists it."""
        reach = None if self.to_target is None else self.to_target.as_dict()
        return {
            "chosen": self.tuning.chosen,
            "chosen_trial": self.tuning.chosen_trial,
            "trials": [t.as_dict() | {"repeat": tuning.repeat} for tuning in self.tunings for t in tuning.trials],
            "choices": [c.as_dict() for c in self.choices],
            "budget_curve": list(self.budget_curve),
            "reruns": self.reruns.as_dict(),
            "to_target": reach,
            "group": self.group,
        }


@dataclass(frozen=True)
class StudyResults:
    """Everything a study found: each optimizer, every pair of them, the best and the letters."""

    setup: Setup
    optimizers: dict[str, OptimizerResult]  # by label, in the study file's order
    pairs: tuple[stats.Pair, ...]  # every two compared optimizers, in the study file's order
    order: tuple[str, ...]  # best first by mean rank (stats.ranking): a ranking only where the letters say so
    best: tuple[str, ...]  # the first and every optimizer it cannot be told from
    detectable: float | None = None  # the difference the design detects with 80% power at the spread seen
    tuning_sd: float = 0.0  # the spread of the repeats' means beyond their seeds' (0 without repeats)

    @property
    def ranked(self) -> list[str]:
        """The optimizers, best first."""
        return list(self.order)

    @property
    def seed_sd(self) -> float:
        """The spread of reruns of one chosen setting: the pooled std within repeats, finished reruns."""
        return _pooled_sd([r for e in self.optimizers.values() for r in _by_repeat(e.reruns)])

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
            "detectable": self.detectable,
            "tuning_sd": self.tuning_sd,
            "repeats": s.repeats,
            "repeat_seeds": list(s.repeat_seeds),
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


def _by_repeat(reruns: Reruns) -> list[list[float]]:
    """The finished values of each repeat's reruns."""
    out: dict[int, list[float]] = {}
    for value, repeat in zip(reruns.values, reruns.repeats or [1] * len(reruns.values)):
        out.setdefault(repeat, [])
        if value is not None:
            out[repeat].append(value)
    return list(out.values())


def _pooled_sd(groups: list[list[float]]) -> float:
    """The pooled within-group standard deviation; 0.0 without two values in a group."""
    dof = sum(len(g) - 1 for g in groups if len(g) >= 2)
    if not dof:
        return 0.0
    return math.sqrt(sum(sum((v - sum(g) / len(g)) ** 2 for v in g) for g in groups if len(g) >= 2) / dof)


def _repeat_sd(optimizers: dict[str, OptimizerResult], seeds: int, seed_sd: float) -> float:
    """The spread that tuning adds: the std of the repeats' means beyond what their seeds explain (0 at least)."""
    means = [[sum(g) / len(g) for g in _by_repeat(e.reruns) if g] for e in optimizers.values()]
    between = _pooled_sd(means)
    return math.sqrt(max(0.0, between**2 - seed_sd**2 / seeds))


def _rerun_values(runs: list[Run | None], metric: str) -> list[float | None]:
    return [None if run is None else final_value(run, metric) for run in runs]


def _choice(tuning: Tuning, runs: list[Run | None], setup: Setup) -> Choice:
    """What one repeat chose and how far ahead of its runner-up, against the noise of its reruns."""
    scored = sorted(
        (t for t in tuning.trials if t.select_value is not None),
        key=lambda t: t.select_value,
        reverse=metrics.higher_is_better(setup.select),
    )
    chosen = next((t for t in scored if t.name == tuning.chosen_trial), None)
    runner_up = next((t for t in scored if t is not chosen), None)
    margin = abs(chosen.select_value - runner_up.select_value) if chosen and runner_up else None
    select = [v for v in _rerun_values(runs, setup.select) if v is not None]
    report = [v for v in _rerun_values(runs, setup.report) if v is not None]
    return Choice(
        tuning.repeat,
        tuning.chosen_trial,
        None if chosen is None else chosen.settings,
        None if chosen is None else chosen.select_value,
        None if runner_up is None else runner_up.name,
        margin,
        float(np.std(select, ddof=1)) if len(select) >= 2 else None,
        float(np.mean(report)) if report else None,
    )


def analyse(tunings: list[Tuning], reruns: dict[tuple[str, int], list[str]], setup: Setup) -> StudyResults:
    """The study's results from each optimizer's tunings (one a repeat) and its reruns' folders
    (`reruns`: by (label, repeat); a repeat whose every trial diverged has none)."""
    select, report, up = setup.select, setup.report, metrics.higher_is_better(setup.report)
    worst = -math.inf if up else math.inf  # a rerun without a value ranks below every finished one
    labels = list(dict.fromkeys(t.label for t in tunings))
    worst_trial = _worst([t.select_value for tuning in tunings for t in tuning.trials], select)
    matrices, done, choices, finished_runs = {}, {}, {}, {}
    for label in labels:
        rows, entries, picks = [], [], []
        for tuning in (t for t in tunings if t.label == label):
            dirs = reruns.get((label, tuning.repeat), [])
            runs: list[Run | None] = [read_run(Path(p)) for p in dirs] or [None] * setup.seeds
            values = _rerun_values(runs, report)
            rows.append([worst if v is None else v for v in values])
            entries += [(v, run, tuning.repeat) for v, run in zip(values, runs)]
            picks.append(_choice(tuning, runs, setup))
        matrices[label] = np.array(rows, dtype=float)  # (repeats, seeds)
        finished = [v for v, _, _ in entries if v is not None]
        summary = (
            pipelines.summarise(matrices[label], metrics.bounds(report))
            if setup.repeats >= 2
            else stats.summarise(finished, metrics.bounds(report))
            if len(finished) >= 2
            else None
        )
        done[label] = Reruns(
            tuple(v for v, _, _ in entries),
            tuple(None if run is None else run.config.get("experiment.seed") for _, run, _ in entries),
            tuple("not run" if run is None else run.status for _, run, _ in entries),
            tuple(None if run is None else str(run.path) for _, run, _ in entries),
            sum(v is None for v, _, _ in entries),
            summary,
            tuple(r for _, _, r in entries),
        )
        choices[label] = tuple(picks)
        finished_runs[label] = [run for _, run, _ in entries if run is not None and run.status == "finished"]
    if setup.repeats >= 2:
        pairs = tuple(pipelines.compare_pipelines(matrices, up))  # over the pipelines, Holm over every pair
    else:
        pairs = tuple(stats.compare_all({label: m.ravel() for label, m in matrices.items()}, up))
    order = stats.ranking({label: m.ravel() for label, m in matrices.items()}, pairs, up)
    marks = stats.letters(order, pairs)
    optimizers = {}
    for label in labels:
        own = tuple(t for t in tunings if t.label == label)
        curves = [  # each repeat's expected best after k = 1..budget trials; averaged over the repeats
            stats.budget_curve(
                _scored([t.select_value for t in tuning.trials], worst_trial), metrics.higher_is_better(select)
            )
            for tuning in own
        ]
        curve = [float(v) for v in np.mean(curves, axis=0)] if worst_trial is not None and curves else []
        reach = _to_target(finished_runs[label], select, setup.target)
        optimizers[label] = OptimizerResult(own, tuple(curve), done[label], reach, marks[label], choices[label])
    results = StudyResults(setup, optimizers, pairs, tuple(order), tuple(stats.best_set(order, pairs)))
    sd = results.seed_sd
    tuning_sd = _repeat_sd(optimizers, setup.seeds, sd) if setup.repeats >= 2 else 0.0
    found = power.detectable(len(labels), setup.repeats, setup.seeds, sd, tuning_sd)
    return replace(results, detectable=found, tuning_sd=tuning_sd)
