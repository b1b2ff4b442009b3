"""One sweep point as a run: the Task a worker process receives, what became of it (Result), and
how it runs (continuing its interrupted run when it has one). Sweeps and studies share these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdtrain.core import runs
from gdtrain.core.config import validate
from gdtrain.core.errors import UserError

if TYPE_CHECKING:
    from gdtrain.training.engine import Outcome


@dataclass
class Result:
    """What became of one point."""

    name: str
    status: str  # runs.STATUSES, or skipped (done before, with --resume) or not started (a signal came first)
    run_dir: str | None = None
    final: dict[str, float] | None = None
    error: str | None = None
    seconds: float = 0.0
    signal: int | None = None  # the signal that interrupted it


@dataclass(frozen=True)
class Watch:
    """How a stacked group trained in the sweep's own process shows itself: the title of its progress
    bar (a terminal only), and `ended`, called with each member's result the moment that member ends."""

    title: str
    ended: Callable[[Result], None]


@dataclass(frozen=True)
class Task:
    """A point as a worker process receives it: plain values, so it pickles."""

    raw: dict[str, Any]  # the config document, validated again where it runs
    name: str
    runs_dir: str
    experiment: str  # its folder under runs_dir
    resume: str | None = None  # an interrupted run folder of this point, to continue from its checkpoint
    resume_step: int | None = None  # the checkpoint to continue from: its newest when None (groups.align)
    # Trains on the stacked engine, even in a group of one: a member's numbers then agree in every
    # group (groups.py), so a resume that regroups it computes what the uninterrupted sweep did.
    stacked: bool = False


def run_point(task: Task) -> Result:
    """Train one point in this process (continuing its interrupted run when it has one); any
    exception becomes a failed result."""
    from gdtrain.training import recipe

    started = time.perf_counter()
    try:
        resumed = _resume(task)
        if resumed is not None:
            run_dir, outcome = resumed
        else:
            run_dir, outcome = recipe.run(validate(task.raw, task.name), Path(task.runs_dir), task.name, quiet=True)
    except UserError:
        raise
    except Exception as err:  # a crash in one run must not stop the sweep
        return Result(task.name, "failed", error=f"{type(err).__name__}: {err}", seconds=time.perf_counter() - started)
    return Result(
        task.name,
        outcome.status,
        str(run_dir),
        outcome.final,
        seconds=time.perf_counter() - started,
        signal=outcome.signal,
    )


def _resume(task: Task) -> tuple[Path, Outcome] | None:
    """Continue the point's interrupted run; None when there is none, or nothing to continue from."""
    from gdtrain.training import recipe

    if task.resume is None:
        return None
    try:
        return Path(task.resume), recipe.resume(Path(task.resume), quiet=True, step=task.resume_step)
    except UserError:  # stopped before its first checkpoint, or the folder no longer reads: run anew
        return None


def recorded_result(name: str, run_dir: Path) -> Result | None:
    """The result a finished or diverged run folder records in its summary.json; None for any other."""
    summary = runs.read_summary(run_dir)
    try:
        final, seconds = summary["final"], float(summary["wall_seconds"])
    except (TypeError, KeyError, ValueError):
        return None
    return (
        Result(name, summary["status"], str(run_dir), final, seconds=seconds)
        if summary["status"] in runs.RESULTS
        else None
    )


def lost_result(task: Task, before: frozenset[Path], why: str) -> Result:
    """The result of a task whose process or job ended without giving one (`why`): its run's, when
    that finished on disk (a folder made since `before`, or the one it continued), else failed."""
    made = sorted(set(runs.runs_named(Path(task.runs_dir), task.experiment, task.name)) - before)
    made = ([Path(task.resume)] if task.resume is not None else []) + made  # the run it continued, if any
    for run_dir in made:
        recorded = recorded_result(task.name, run_dir)
        if recorded is not None:
            return recorded
    hint = f"; its run folder keeps its last checkpoint: gdtrain resume {made[-1]}" if made else ""
    return Result(task.name, "failed", str(made[-1]) if made else None, error=why + hint)
