"""A study's numbers, from its run folders: choices, reruns, pairs, groups and budget curves.

Everything the report says is computed here once, into one plain dict (results.json); the report
and the figures only format it. A diverged trial or rerun is a result, scored as the worst value
any run of its kind (trial or rerun) reached in the study: it loses every comparison and drags its
optimizer's mean and budget curve down, as it should, without making them infinite.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gdtrain.report import stats
from gdtrain.core.folders import Run, read_run
from gdtrain.report.compare import figures

SCORED = ("finished", "diverged")  # statuses that are results; anything else is missing work


def final_value(run: Run, metric: str) -> float | None:
    """The run's final value of `metric` (None when it diverged or never logged it)."""
    value = run.summary.get("final", {}).get(metric) if run.status == "finished" else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _worst(values: list[float | None], higher_is_better: bool) -> float | None:
    finite = [v for v in values if v is not None]
    return (min(finite) if higher_is_better else max(finite)) if finite else None


def _scored(values: list[float | None], worst: float | None) -> list[float]:
    return [worst if v is None else v for v in values if v is not None or worst is not None]


def choose(trials: list[dict[str, Any]], higher_is_better: bool) -> dict[str, Any] | None:
    """The trial with the best select value (the first among equals); None when all diverged."""
    scored = [t for t in trials if t["select_value"] is not None]
    if not scored:
        return None
    pick = max if higher_is_better else min
    return pick(scored, key=lambda t: t["select_value"])


def trial_record(label: str, name: str, settings: dict[str, Any], run_dir: Path, select: str) -> dict[str, Any]:
    """One tuning trial as results.json lists it."""
    run = read_run(run_dir)
    return {"name": name, "settings": settings, "select_value": final_value(run, select), "status": run.status,
            "run_dir": str(run_dir), "optimizer": run.config and {k.removeprefix("optimizer."): v for k, v in
                                                                   run.config.items() if k.startswith("optimizer.")}}


def _to_target(runs: list[Run], select: str, target: float | None) -> dict[str, Any] | None:
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
    out: dict[str, Any] = {"target": target, "reached": len(steps), "of": len(runs)}
    for key, values in (("steps", steps), ("samples", samples)):
        got = [v for v in values if v is not None]
        summary = stats.summarise(got) if got else None
        out[key] = None if summary is None else {"mean": summary.mean, "ci": list(summary.ci)}
    return out


def analyse(arms: list[dict[str, Any]], select: str, report: str, target: float | None, seeds: int) -> dict[str, Any]:
    """results.json from each arm's trials and reruns (`{"label", "trials", "chosen", "reruns": [run_dir]}`)."""
    up_select, up_report = select.startswith("accuracy"), report.startswith("accuracy")
    worst_trial = _worst([t["select_value"] for arm in arms for t in arm["trials"]], up_select)
    runs = {arm["label"]: [read_run(Path(p)) for p in arm["reruns"]] for arm in arms}
    worst_rerun = _worst([final_value(r, report) for rs in runs.values() for r in rs], up_report)
    optimizers: dict[str, Any] = {}
    for arm in arms:
        label, reruns = arm["label"], runs[arm["label"]]
        values = _scored([final_value(r, report) for r in reruns], worst_rerun)
        entry: dict[str, Any] = {
            "chosen": arm["chosen"], "chosen_trial": arm.get("chosen_trial"), "trials": arm["trials"],
            "budget_curve": stats.budget_curve(_scored([t["select_value"] for t in arm["trials"]], worst_trial), up_select)
            if worst_trial is not None else [],
            "reruns": {"values": values, "seeds": [r.config.get("experiment.seed") for r in reruns],
                       "statuses": [r.status for r in reruns], "run_dirs": [str(r.path) for r in reruns],
                       "diverged": sum(r.status == "diverged" for r in reruns)},
            "to_target": _to_target([r for r in reruns if r.status == "finished"], select, target),
        }
        if len(values) >= 2:
            s = stats.summarise(values)
            entry["reruns"] |= {"mean": s.mean, "median": s.median, "std": s.std, "ci": list(s.ci)}
        optimizers[label] = entry
    ranked = [label for label, e in optimizers.items() if len(e["reruns"]["values"]) >= 2]
    pairs = [stats.compare_pair(a, optimizers[a]["reruns"]["values"], b, optimizers[b]["reruns"]["values"], up_report)
             for i, a in enumerate(ranked) for b in ranked[i + 1:]]
    by_mean = sorted(ranked, key=lambda n: optimizers[n]["reruns"]["mean"], reverse=up_report)
    groups = [sorted(g, key=by_mean.index) for g in stats.tie_groups(by_mean, pairs)]
    unranked = [label for label in optimizers if label not in ranked]
    for rank, group in enumerate(groups, 1):
        for label in group:
            optimizers[label]["group"] = rank
    return {
        "select": select, "report": report, "higher_is_better": up_report, "seeds": seeds, "target": target,
        "optimizers": optimizers,
        "pairs": [{"a": p.a, "b": p.b, "p_a_beats_b": p.p_a_beats_b, "ci": list(p.ci), "p_value": p.p_value,
                   "verdict": p.verdict} for p in pairs],
        "groups": groups,  # best first; within a group by mean, tied
        "unranked": unranked,
    }
