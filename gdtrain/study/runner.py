"""Running a study: tune every optimizer, choose each one's best trial, rerun it over fresh seeds,
then hand the runs to the verdict and the report. Each phase is a sweep (gdtrain/execution/sweep.py)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdtrain.core import names
from gdtrain.core.config import to_dict, validate
from gdtrain.core.errors import UserError
from gdtrain.core.manifest import MANIFEST, Manifest
from gdtrain.core.runs import flatten
from gdtrain.execution.options import Execution, continue_command
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
    from gdtrain.study.verdict import StudyResults  # imported where it runs: scipy takes a second


def run_study(study: Study, runs_dir: Path, execution: Execution, echo: Any) -> tuple[Path, StudyResults | None, int]:
    """Tune, select, rerun and analyse, the runs executed as `execution` says (stacked, in workers or as
    submitit jobs; gdtrain/execution/options.py): (study folder, results, exit code); results are
    None when some run did not end in a result (exit 1), or a signal stopped the study (exit 128 + signal)."""
    from gdtrain.study import report as studyreport
    from gdtrain.study import verdict

    folder = runs_dir / study.name
    if not execution.resume and folder.is_dir() and any(p.name != MANIFEST for p in folder.iterdir()):
        raise UserError(
            f"{folder}: already holds a study's runs; continue it with --resume, or give it a new "
            f"name: --set study.name=<name>"
        )
    points = tuning_points(study)
    manifest = Manifest(folder, "study")
    manifest.plan(_labelled(study, points))
    trials, code = _execute(study, points, runs_dir, execution, echo, "tuning", manifest)
    if trials is None:
        return folder, None, code
    tunings, chosen = [], {}
    for repeat in repeats(study):
        for arm in study.arms:
            records = [
                verdict.trial_record(name, _searched(arm, doc), Path(trials[name]), study.select)
                for label, name, doc in tuning_points(study, repeat)
                if label == arm.label
            ]
            best = verdict.choose(records, study.select)
            if best is not None:
                chosen[arm.label, repeat] = next(
                    doc["optimizer"] for _, name, doc in tuning_points(study, repeat) if name == best.name
                )
            tunings.append(
                verdict.Tuning(
                    arm.label, tuple(records), chosen.get((arm.label, repeat)), best.name if best else None, repeat
                )
            )
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
    results = verdict.analyse(tunings, rerun_dirs, setup)
    studyreport.write(folder, results, study.base, study.spec.study)
    return folder, results, 0


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
    import signal

    from gdtrain.execution import sweep

    todo = [sweep.Point(name, doc, validate(copy.deepcopy(doc), study.source)) for _, name, doc in points]
    echo(f"study {study.name}: {phase}, {len(todo)} runs" + execution.described(runs_dir / study.name))
    counter = iter(range(1, len(todo) + 1))

    def report(result: Any) -> None:
        value = (result.final or {}).get(study.select)
        shown = f"  {study.select} {value:.4g}" if isinstance(value, float) else ""
        detail = f"  {result.error}" if result.error else ""
        echo(f"[{next(counter)}/{len(todo)}] {result.name}: {result.status}{shown}{detail}")

    # resume=True: a run already done with this name and config is never run twice, and an interrupted
    # one continues from its checkpoint (run_study has refused a non-empty folder without --resume)
    results, stopped_by = sweep.run_sweep(todo, runs_dir, replace(execution, resume=True), report, manifest, echo)
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
