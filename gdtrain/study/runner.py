"""Running a study: tune every optimizer, choose each one's best trial, rerun it over fresh seeds,
then hand the runs to the verdict and the report. Each phase is a sweep (gdtrain/execution/sweep.py)."""

from __future__ import annotations

import copy
import signal
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdtrain.core import names
from gdtrain.core.config import to_dict, validate
from gdtrain.core.errors import UserError
from gdtrain.core.manifest import MANIFEST, Manifest
from gdtrain.core.runs import finished_run, flatten
from gdtrain.core.signals import Guard
from gdtrain.execution.options import Execution, continue_command
from gdtrain.execution.sweep import owning
from gdtrain.study import definition
from gdtrain.study.spec import (
    Arm,
    Study,
    repeat_seed,
    repeats,
    rerun_name,
    rerun_points,
    rerun_seeds,
    tuning_points,
)

if TYPE_CHECKING:
    from gdtrain.study.verdict import StudyResults, Tuning  # imported where it runs: scipy takes a second


def run_study(study: Study, runs_dir: Path, execution: Execution, echo: Any) -> tuple[Path, StudyResults | None, int]:
    """Tune, select, rerun and analyse, the runs executed as `execution` says (stacked, in workers or as
    submitit jobs; gdtrain/execution/options.py): (study folder, results, exit code); results are
    None when some run did not end in a result (exit 1), or a signal stopped the study (exit 128 + signal)."""
    with owning(runs_dir, study.name, "study", definition.DEFINITION):
        return _run_study(study, runs_dir, execution, echo)


def _run_study(study: Study, runs_dir: Path, execution: Execution, echo: Any) -> tuple[Path, StudyResults | None, int]:
    from gdtrain.study import report as studyreport
    from gdtrain.study import verdict

    folder = runs_dir / study.name
    if (
        not execution.resume
        and folder.is_dir()
        and any(p.name not in (MANIFEST, definition.DEFINITION) for p in folder.iterdir())
    ):
        raise UserError(
            f"{folder}: already holds a study's runs; continue it with --resume, or give it a new "
            f"name: --set study.name=<name>"
        )
    now, before = definition.resolved(study), definition.read(folder) if execution.resume else None
    changed = definition.changes(before, now) if before is not None else []
    if changed:  # no run of the old definition counts: a point reruns unless its name and config are unchanged
        echo(definition.announcement(study.name, changed, *_reuse(study, runs_dir)))
    definition.write(folder, now)
    points = tuning_points(study)
    manifest = Manifest(folder, "study")
    manifest.plan(_labelled(study, points))
    trials, code = _execute(study, points, runs_dir, execution, echo, "tuning", manifest)
    if trials is None:
        return folder, None, code
    tunings, chosen = _choose(study, trials)
    again = rerun_points(study, chosen)
    manifest.plan(_labelled(study, points + again))
    reruns, code = _execute(study, again, runs_dir, execution, echo, "reruns", manifest)
    if reruns is None:
        return folder, None, code
    rerun_dirs = {
        (arm.label, repeat): [reruns[rerun_name(arm, seed, repeat)] for seed in rerun_seeds(study, repeat)]
        for repeat in repeats(study)
        for arm in study.arms
        if (arm.label, repeat) in chosen
    }
    setup = verdict.Setup(
        study.select,
        study.report,
        study.spec.seeds,
        study.spec.target,
        study.name,
        study.source,
        study.spec.budget,
        study.spec.sampler,
        study.spec.study.seed,
        tuple(rerun_seeds(study)),
        study.spec.repeats,
        tuple(repeat_seed(study, r) for r in repeats(study)),
        tuple((arm.label, arm.describe()) for arm in study.arms),
    )
    # A signal now stops at once: every run is kept, and --resume makes the report again from them.
    guard = Guard()
    again = continue_command("study", study.source, runs_dir, study.overrides, execution)
    try:
        with guard.installed(), guard.running():
            results = verdict.analyse(tunings, rerun_dirs, setup)
            studyreport.write(folder, results, study.base, study.spec.study, again)
    except KeyboardInterrupt:
        signum = guard.signal or signal.SIGINT
        echo(
            f"study {study.name} stopped by {signal.Signals(signum).name} while writing its report: "
            f"all {len(trials) + len(reruns)} runs are kept; write the report with: {again}"
        )
        return folder, None, 128 + signum
    return folder, results, 0


def _choose(study: Study, trials: dict[str, str]) -> tuple[list[Tuning], dict[tuple[str, int], dict[str, Any]]]:
    """Each (optimizer, repeat)'s tuning and chosen optimizer section from its trials' run folders
    ({run name: folder}); one with a trial missing from `trials` is left out of both."""
    from gdtrain.study import verdict

    tunings, chosen = [], {}
    for repeat in repeats(study):
        points = tuning_points(study, repeat)
        for arm in study.arms:
            mine = [(name, doc) for label, name, doc in points if label == arm.label]
            if any(name not in trials for name, _ in mine):
                continue
            records = [
                verdict.trial_record(name, _searched(arm, doc), Path(trials[name]), study.select) for name, doc in mine
            ]
            best = verdict.choose(records, study.select)
            if best is not None:
                chosen[arm.label, repeat] = next(doc["optimizer"] for name, doc in mine if name == best.name)
            tunings.append(
                verdict.Tuning(
                    arm.label, tuple(records), chosen.get((arm.label, repeat)), best.name if best else None, repeat
                )
            )
    return tunings, chosen


def _reuse(study: Study, runs_dir: Path) -> tuple[int, int, int]:
    """(runs a resume reuses, runs it trains, reruns whose setting trials still to run will choose),
    by the sweep's rule: a run is reused when one with its name and config has its result."""

    def done(points: list[tuple[str, str, dict[str, Any]]]) -> dict[str, str]:
        found = {
            name: finished_run(runs_dir, validate(copy.deepcopy(doc), study.source), name) for _, name, doc in points
        }
        return {name: str(run_dir) for name, run_dir in found.items() if run_dir is not None}

    points = tuning_points(study)
    trials = done(points)
    tunings, chosen = _choose(study, trials)
    again = rerun_points(study, chosen)
    reused = len(trials) + len(done(again))
    waiting = (len(study.arms) * study.spec.repeats - len(tunings)) * study.spec.seeds
    return reused, len(points) + len(again) - reused, waiting


def _searched(arm: Arm, doc: dict[str, Any]) -> dict[str, Any]:
    return {key: doc["optimizer"][key] for key in arm.spaces}


def _labelled(study: Study, points: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str]]:
    """(run name, label) of every point: the label as compare shows the run (gdtrain/core/names.py)."""
    configs = [flatten(to_dict(validate(copy.deepcopy(doc), study.source))) for _, _, doc in points]
    return [(name, text) for (_, name, _), text in zip(points, names.labels(configs))]


def _execute(
    study: Study,
    points: list[tuple[str, str, dict[str, Any]]],
    runs_dir: Path,
    execution: Execution,
    echo: Any,
    phase: str,
    manifest: Manifest,
) -> tuple[dict[str, str] | None, int]:
    """Run the points as a sweep: ({run name: run folder}, 0), or (None, exit code) when some did not
    end in a result or a signal stopped them."""
    from gdtrain.execution import sweep

    todo = [sweep.Point(name, doc, validate(copy.deepcopy(doc), study.source)) for _, name, doc in points]
    step = "phase 1 of 2" if phase == "tuning" else "phase 2 of 2"
    repeated = f", {study.spec.repeats} repeats" if study.spec.repeats > 1 else ""
    echo(
        f"study {study.name}: {phase} ({step}{repeated}), {len(todo)} runs" + execution.described(runs_dir / study.name)
    )
    counter = iter(range(1, len(todo) + 1))

    def report(result: Any) -> None:
        value = (result.final or {}).get(study.select)
        shown = f"  {study.select} {value:.4g}" if isinstance(value, float) else ""
        detail = f"  {result.error}" if result.error else ""
        echo(f"[{next(counter)}/{len(todo)}] {result.name}: {result.status}{shown}{detail}")

    # resume=True: a run already done with this name and config is never run twice, and an interrupted
    # one continues from its checkpoint (run_study has refused a non-empty folder without --resume)
    results, stopped_by = sweep.run_sweep(
        todo, runs_dir, replace(execution, resume=True), report, manifest, echo, f"{study.name} {phase}"
    )
    again = continue_command("study", study.source, runs_dir, study.overrides, execution)
    missing = [r for r in results if r.status not in ("finished", "diverged", "skipped") or r.run_dir is None]
    if stopped_by is not None:
        counts = ", ".join(
            f"{sum(r.status == s for r in results)} {s}"
            for s in ("finished", "diverged", "skipped", "failed", "interrupted", "not started")
        )
        echo(
            f"study {study.name} stopped by {signal.Signals(stopped_by).name} in {phase}: {counts}; "
            f"continue with: {again}"
        )
        return None, 128 + stopped_by
    if missing:
        echo(
            f"study {study.name}: {len(missing)} of {len(todo)} {phase} runs did not finish "
            f"({', '.join(sorted({r.status for r in missing}))}); continue with: {again}"
        )
        return None, 1
    return {r.name: r.run_dir for r in results}, 0
