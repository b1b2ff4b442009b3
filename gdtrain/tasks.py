"""One sweep point as a run: the Task a worker process receives, what became of it (Result), and
how it runs (continuing its interrupted run when it has one); a unit, the tasks one submitit job
trains together (run_unit, gdtrain/executors.py). Sweeps and studies share these.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdtrain import runs
from gdtrain.config import validate
from gdtrain.errors import UserError

if TYPE_CHECKING:
    from gdtrain.engine import Outcome
    from gdtrain.workers import Guard


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
class Task:
    """A point as a worker process receives it: plain values, so it pickles."""

    raw: dict[str, Any]  # the config document, validated again where it runs
    name: str
    runs_dir: str
    experiment: str  # its folder under runs_dir
    resume: str | None = None  # an interrupted run folder of this point, to continue from its checkpoint


def run_point(task: Task) -> Result:
    """Train one point in this process (continuing its interrupted run when it has one); any
    exception becomes a failed result."""
    from gdtrain import recipe

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
    return Result(task.name, outcome.status, str(run_dir), outcome.final, seconds=time.perf_counter() - started,
                  signal=outcome.signal)


def run_unit(tasks: list[Task]) -> list[Result]:
    """Train a unit: the tasks that run together in one job (gdtrain/executors.py), one after the other."""
    return [run_point(task) for task in tasks]


def _resume(task: Task) -> tuple[Path, Outcome] | None:
    """Continue the point's interrupted run; None when there is none, or nothing to continue from."""
    from gdtrain import recipe

    if task.resume is None:
        return None
    try:
        return Path(task.resume), recipe.resume(Path(task.resume), quiet=True)
    except UserError:  # stopped before its first checkpoint, or the folder no longer reads: run anew
        return None


def attempt(task: Task, guard: Guard) -> Result:
    """run_point under `guard`: a signal that comes before the run's own handlers are in place (or
    after they are gone), or a second one, stops the point at once."""
    try:
        with guard.running():
            return run_point(task)
    except KeyboardInterrupt:
        return Result(task.name, "interrupted", error="stopped at once; its last checkpoint, if any, is kept",
                      signal=guard.signal or signal.SIGINT)


def recorded_result(name: str, run_dir: Path) -> Result | None:
    """The result a finished or diverged run folder records in its summary.json; None for any other."""
    summary = runs.read_summary(run_dir)
    try:
        final, seconds = summary["final"], float(summary["wall_seconds"])
    except (TypeError, KeyError, ValueError):
        return None
    return Result(name, summary["status"], str(run_dir), final, seconds=seconds) if summary["status"] in runs.RESULTS else None
