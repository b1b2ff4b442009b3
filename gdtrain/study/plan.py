"""`gdtrain study STUDY --plan`: what a study would do, before it does it. Trains nothing of the study
and writes nothing under --runs-dir; prints a few lines:
- runs: its tuning trials and reruns, and how they would train (stacked groups or one by one), from
  gdtrain/execution/groups.py's own plan of the points (the reruns' chosen settings are not known
  yet; any trial of each optimizer stands in for them: grouping ignores the optimizer's settings);
- time: measured, not guessed. A probe trains a few steps of the study's own points in a temporary
  folder (removed after), as the study would: stacked groups of two sizes (PROBE_MEMBERS, at most
  the study's largest group) when the study stacks, else one run. Two lengths of each split its wall
  time into training steps and the rest (start, data, evaluation, writing); the two sizes give each
  a line in the group's size (a small group's step is mostly fixed cost, a large one's mostly
  compute), extrapolated to the study's groups and steps; a first one-step run pays the imports and
  the first data load, and is counted once;
- claims: whether the verdict's tests (gdtrain/report/stats.py, gdtrain/report/pipelines.py) can
  declare any difference at all at Holm's first threshold, and how large a difference they detect
  with 80% power (gdtrain/report/power.py).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdtrain.components import idx
from gdtrain.core.config import ImageData, validate
from gdtrain.core.errors import UserError
from gdtrain.core.manifest import MANIFEST
from gdtrain.execution import groups
from gdtrain.execution.options import Execution
from gdtrain.study.spec import Study, rerun_points, tuning_points
from gdtrain.training import lifecycle, memory
from gdtrain.training.tasks import Task

PROBE_STEPS = 80  # steps of the longer probe run (the shorter takes a quarter): past the first steps, which are slower
PROBE_MEMBERS = (8, 32)  # members of the probe's stacked groups (at most the study's largest); others on their line

Point = tuple[str, str, dict[str, Any]]  # (arm label, run name, config document), as spec gives them


@dataclass(frozen=True)
class Timing:
    """What the probe measured of units of one or two sizes (one run, or stacked groups): seconds a step
    of the whole unit, and seconds besides its steps (start, data, each epoch's set-up, evaluation,
    writing), for each size probed."""

    members: tuple[int, ...]  # the unit sizes probed, smallest first
    step: tuple[float, ...]  # seconds a step of a unit of each size
    rest: tuple[float, ...]  # seconds of such a unit besides its steps, for a run of one epoch
    first: float  # the process's first run pays the imports and the first data load, once a study

    def at(self, values: tuple[float, ...], members: int) -> float:
        """A figure for a unit of `members`: proportional to its size from one probe, on the line through two."""
        if len(self.members) == 1:
            return values[0] * members / self.members[0]
        (m1, m2), (v1, v2) = self.members, values
        slope = max((v2 - v1) / (m2 - m1), 0.0)  # noise can make the larger unit look cheaper: then flat
        return max(v1 + slope * (members - m1), 0.0)

    def seconds(self, units: list[int], steps: int, epochs: int) -> float:
        """The wall time of units of these sizes, one after the other, each run `steps` steps in `epochs`
        epochs: the rest counted each epoch (an upper bound)."""
        return self.first + sum(epochs * self.at(self.rest, m) + steps * self.at(self.step, m) for m in units)


def show(study: Study, runs_dir: Path, execution: Execution, echo: Callable[[str], None]) -> None:
    """Print the plan of `gdtrain study` with these options."""
    trials = tuning_points(study)
    reruns = rerun_points(study, _stand_ins(study, trials))
    for line in run_lines(study, len(trials), len(reruns)):
        echo(line)
    steps, epochs, missing = _steps(study, trials[0])
    if missing is not None:
        echo(f"time: no estimate: {missing}")
    else:
        units = [_units(points, runs_dir, execution) for points in (trials, reruns)]
        echo(_how(units, execution, runs_dir / study.name))
        sizes = [len(u) for phase in units for u in phase]
        for line in time_lines(probe(trials, max(sizes), steps), sizes, steps, epochs, execution):
            echo(line)
    for line in claim_lines(len(study.arms), study.spec.repeats, study.spec.seeds):
        echo(line)
    folder = runs_dir / study.name
    if folder.is_dir() and any(p.name != MANIFEST for p in folder.iterdir()):
        echo(
            f"note: {folder} already holds a study's runs: "
            + ("those done would be skipped" if execution.resume else "the study would refuse it without --resume")
        )


def run_lines(study: Study, trials: int, reruns: int) -> list[str]:
    """`runs: 224 tuning trials (7 optimizers × 8 trials × 4 repeats) + 140 reruns (...) = 364`."""
    spec, k = study.spec, len(study.arms)
    return [
        f"study {study.name} ({study.source}): select on {study.select}, verdict on {study.report}",
        f"runs: {trials} tuning trials ({k} optimizers × {_plural(spec.budget, 'trial')} × "
        f"{_plural(spec.repeats, 'repeat')}) + {reruns} reruns ({k} optimizers × {_plural(spec.repeats, 'repeat')} × "
        f"{spec.seeds} seeds) = {trials + reruns}",
    ]


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("s" if n != 1 else "")


def _stand_ins(study: Study, trials: list[Point]) -> dict[tuple[str, int], dict[str, Any]]:
    """Each (arm, repeat)'s first trial's optimizer section, standing in for the one tuning will choose."""
    chosen: dict[tuple[str, int], dict[str, Any]] = {}
    per_repeat = len(trials) // study.spec.repeats
    for i, (label, _, doc) in enumerate(trials):
        chosen.setdefault((label, i // per_repeat + 1), doc["optimizer"])
    return chosen


def _steps(study: Study, point: Point) -> tuple[int, int, str | None]:
    """Steps and epochs of each run (all share the base's data, batch size and length), or why they are unknown:
    image data not here (the plan reads no more than its headers, and downloads nothing)."""
    config = validate(copy.deepcopy(point[2]), study.source)
    if isinstance(config.data, ImageData):
        root = idx.data_root(config.data.root)
        if None in idx.find(config.data.name, root):
            then = "the study would download it first" if config.data.download else "the study's runs would fail"
            return 0, 0, f"{config.data.name} is not in {idx.raw_folder(config.data.name, root)}/ ({then})"
    length = lifecycle.plan(memory.data_sizes(config).n_train, config.train)
    return length.max_steps, length.epochs, None


def _units(points: list[Point], runs_dir: Path, execution: Execution) -> list[list[Task]]:
    """The points as the study's sweep would train them: execution/groups.py's plan."""
    tasks = [Task(doc, name, str(runs_dir), doc["experiment"]["name"]) for _, name, doc in points]
    return groups.plan(tasks, execution.batch_runs, execution.jobs)


def _how(units: list[list[list[Task]]], execution: Execution, folder: Path) -> str:
    """`how: stacked, tuning as 1 group of 224, reruns as 1 group of 140`, or one by one."""
    if all(len(u) == 1 for phase in units for u in phase):
        why = " (--batch-runs 1)" if execution.batch_runs == 1 else ""
        return f"how: one run at a time{why}" + execution.described(folder)
    phases = [
        f"{name} as {_plural(len(phase), 'group')} of {_sizes(phase)}"
        for name, phase in zip(("tuning", "reruns"), units)
    ]
    return "how: stacked, " + ", ".join(phases) + execution.described(folder) + " (--batch-runs 1 trains each alone)"


def _sizes(phase: list[list[Task]]) -> str:
    sizes = sorted({len(u) for u in phase}, reverse=True)
    return " or ".join(map(str, sizes))


def probe(trials: list[Point], largest: int, steps: int) -> Timing:
    """Time a one-step run (it pays the imports and the first data load), then units like the study's
    (stacked groups of the PROBE_MEMBERS sizes, at most `largest`; or one run) for a few steps and for
    four times as many, in a temporary folder removed after. The difference is the steps' time; the
    rest is the same in both."""
    from gdtrain.execution.units import run_unit

    sizes = sorted({min(largest, size) for size in PROBE_MEMBERS})
    length = min(steps, PROBE_STEPS)
    short = max(length // 4, 1)
    per_step, rests = [], []
    with tempfile.TemporaryDirectory(prefix="gdtrain-plan-") as tmp:
        first = _measure(run_unit, _probe_tasks(trials[:1], 1, Path(tmp), "first"))
        for members in sizes:
            spread = [trials[i * len(trials) // members % len(trials)] for i in range(members)]  # several optimizers
            brief = _measure(run_unit, _probe_tasks(spread, short, Path(tmp), f"short{members}"))
            full = _measure(run_unit, _probe_tasks(spread, length, Path(tmp), f"long{members}"))
            # noise can swamp the difference: then every second counts as steps', an upper bound
            step = (full - brief) / (length - short) if length > short and full > brief else full / length
            per_step.append(step)
            rests.append(max(full - length * step, 0.0))
    return Timing(tuple(sizes), tuple(per_step), tuple(rests), max(first - rests[0] / sizes[0], 0.0))


def _probe_tasks(points: list[Point], length: int, runs_dir: Path, experiment: str) -> list[Task]:
    tasks = []
    for _, name, doc in points:
        raw = copy.deepcopy(doc)
        raw["experiment"]["name"] = experiment
        raw["train"].pop("epochs", None)
        raw["train"]["max_steps"] = length
        tasks.append(Task(raw, name, str(runs_dir), experiment))
    return tasks


def _measure(run_unit: Callable[[list[Task]], list[Any]], tasks: list[Task]) -> float:
    """The wall seconds of one unit; a probe run that did not finish is a UserError."""
    started = time.perf_counter()
    results = run_unit(tasks)
    wall = time.perf_counter() - started
    for result in results:
        if result.status not in ("finished", "diverged"):
            raise UserError(f"--plan: the timing probe's run {result.name} {result.status}: {result.error}")
    return wall


def time_lines(timing: Timing, units: list[int], steps: int, epochs: int, execution: Execution) -> list[str]:
    """`time: ≈ 7 min (measured ...)` and what makes it uncertain."""
    sizes = " and ".join(map(str, timing.members))
    unit = "one run" if timing.members == (1,) else f"stacked groups of {sizes}"
    doubts = [
        f"machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores while measuring",
        "early stopping and diverged runs shorten it",
        "training only: the study's start, its report and figures add a few seconds",
    ]
    if max(units) > max(timing.members):
        doubts.append(f"groups of {max(units)} extrapolated on the line through groups of {sizes}")
    if execution.jobs > 1:
        doubts.append(f"--jobs {execution.jobs} runs units side by side: not counted, they share this machine's cores")
    if execution.job_options is not None:
        doubts.append(f"{execution.job_options.executor} jobs: this machine's time, not theirs")
    return [
        f"time: ≈ {duration(timing.seconds(units, steps, epochs))} (measured on this machine: {unit} at "
        f"{' and '.join(map(_ms, timing.step))} a step and {' and '.join(f'{r:.2g}' for r in timing.rest)} s "
        f"besides; extrapolated to {sum(units):,} runs × {steps:,} steps)",
        "uncertain: " + "; ".join(doubts),
    ]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def duration(seconds: float) -> str:
    """`40 s`, `7 min`, `2.5 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def claim_lines(optimizers: int, repeats: int, seeds: int) -> list[str]:
    """Whether the verdict can declare any difference, and the smallest it detects with 80% power."""
    from gdtrain.report import power
    from gdtrain.report.stats import ALPHA

    if optimizers < 2:
        return ["claims: one optimizer: nothing to compare"]
    pairs = power.pairs(optimizers)
    level = ALPHA / pairs
    head = f"claims: {optimizers} optimizers, {pairs} pairs: Holm's first threshold {ALPHA}/{pairs} = {level:.3g}"
    if repeats == 1:
        smallest = power.smallest_p(seeds)
        lines = [
            head + f"; the exact two-sided Mann-Whitney test of {seeds} seeds a side has p ≥ "
            f"2/C({2 * seeds},{seeds}) = {smallest:.3g}"
        ]
        if not power.can_claim(optimizers, repeats, seeds):
            return lines + [f"cannot declare any difference: use at least {_enough(level)} seeds or repeats ≥ 2"]
        d = power.detectable(optimizers, repeats, seeds, seed_sd=1.0)
        return lines + [f"detects a difference of {d:.1f} rerun std with 80% power (one tuning: about its choices)"]
    plain = power.detectable(optimizers, repeats, seeds, seed_sd=1.0)
    tuned = power.detectable(optimizers, repeats, seeds, seed_sd=1.0, repeat_sd=0.5)
    lines = [
        head + f"; Welch's t on {repeats} pipeline means a side",
        f"detects a difference of {plain:.1f} rerun std with 80% power ({tuned:.1f} if tuning adds half a std)",
    ]
    ranks = power.smallest_p(repeats)  # the exact permutation over pipelines has the same smallest p
    if ranks >= level:
        lines.append(
            f"if a rerun diverges, its pairs are tested by an exact permutation over pipelines, p ≥ "
            f"2/C({2 * repeats},{repeats}) = {ranks:.3g}: no claim on them (repeats ≥ {_enough(level)} lifts that)"
        )
    return lines


def _enough(level: float) -> int:
    """The fewest n a side whose smallest exact two-sided p, 2/C(2n, n), is below `level`."""
    n = 2
    while 2 / math.comb(2 * n, n) >= level:
        n += 1
    return n
