"""What a sweep hands a process: a unit, one point or a stacked group of them (gdtrain/execution/groups.py)."""

from __future__ import annotations

import signal
import time

from gdtrain.core.errors import UserError
from gdtrain.core.signals import Guard
from gdtrain.training.tasks import Result, Task, Watch, run_point


def run_unit(tasks: list[Task], watch: Watch | None = None) -> list[Result]:
    """Train one group of tasks: stacked when it has several (gdtrain/stacked/loop.py, shown as `watch`
    says), else as run_point."""
    if len(tasks) == 1 and not tasks[0].stacked:
        return [run_point(tasks[0])]
    from gdtrain.stacked import loop as stacked

    started = time.perf_counter()
    try:
        return stacked.train_group(tasks, watch)
    except UserError:
        raise
    except Exception as err:  # before the group could start: a crash in it must not stop the sweep
        return [
            Result(task.name, "failed", error=f"{type(err).__name__}: {err}", seconds=time.perf_counter() - started)
            for task in tasks
        ]


def attempt(unit: list[Task], guard: Guard, watch: Watch | None = None) -> list[Result]:
    """run_unit under `guard`: a signal that comes before the runs' own handlers are in place (or
    after they are gone), or a second one, stops the unit at once."""
    try:
        with guard.running():
            return run_unit(unit, watch)
    except KeyboardInterrupt:
        return [
            Result(
                task.name,
                "interrupted",
                error="stopped at once; its last checkpoint, if any, is kept",
                signal=guard.signal or signal.SIGINT,
            )
            for task in unit
        ]
