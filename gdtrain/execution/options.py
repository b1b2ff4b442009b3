"""How a sweep's or study's points execute, as one value, and the command that continues them.

`--jobs`, `--batch-runs`, `--executor` with its `--slurm-*` settings, and `--resume` travel from
the command line to the sweep (gdtrain/execution/sweep.py) as one Execution. It is also the one
place that renders them back into flags: the "continue with:" line of a stopped sweep or study
(`continue_command`). A single run folder's line is runs.resume_command.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gdtrain.core.errors import UserError
from gdtrain.execution.executors import JOBS, JobOptions, job_options


@dataclass(frozen=True)
class Execution:
    """How points run: how many at once, how many stacked, where, and whether done ones are skipped."""

    jobs: int = 1  # units at once: worker processes, or submitit jobs with job_options
    batch_runs: int | None = None  # most points stacked in one group; None: as many as fit in memory
    job_options: JobOptions | None = None  # --executor: each unit a submitit job; None: here or `jobs` workers
    resume: bool = False  # skip points with a result, continue interrupted ones from their checkpoints

    def args(self) -> list[str]:
        """The command-line options that give these settings again (--resume aside)."""
        return [
            *(["--jobs", str(self.jobs)] if self.jobs > 1 else []),
            *(["--batch-runs", str(self.batch_runs)] if self.batch_runs is not None else []),
            *(self.job_options.args() if self.job_options else []),
        ]

    def described(self, folder: Path) -> str:
        """`, 2 at a time, as local jobs (logs in <folder>/_jobs/)`: what follows a sweep's or phase's count."""
        options = self.job_options
        return (f", {self.jobs} at a time" if self.jobs > 1 else "") + (
            f", as {options.executor} jobs (logs in {folder / JOBS}/)" if options else ""
        )


def execution(
    jobs: int = 1,
    batch_runs: int | None = None,
    executor: str | None = None,
    partition: str | None = None,
    gpus_per_job: int | None = None,
    time_min: int | None = None,
    resume: bool = False,
) -> Execution:
    """The command line's execution options, checked (a UserError names the option)."""
    if batch_runs is not None and batch_runs < 1:
        raise UserError(
            f"--batch-runs {batch_runs}: must be 1 or more (1 trains each run alone; leave it out "
            "to train as many together as fit in memory)"
        )
    return Execution(jobs, batch_runs, job_options(executor, partition, gpus_per_job, time_min), resume)


def continue_command(
    command: str,
    source: Path | str,
    runs_dir: Path,
    overrides: Sequence[str],
    execution: Execution,
    grid: Sequence[str] = (),
    seeds: int | None = None,
) -> str:
    """`gdtrain sweep|study FILE ... --resume`: what continues a stopped sweep or study with its options.

    A study's line names its folder first (`--runs-dir R --resume`, then the rest); a sweep's gives
    its grid first and its folder last."""
    sets = [arg for o in overrides for arg in ("--set", o)]
    where = ["--runs-dir", str(runs_dir), "--resume"]
    if command == "study":
        args = [str(source), *where, *execution.args(), *sets]
    else:
        what = [*[arg for g in grid for arg in ("--grid", g)], *(["--seeds", str(seeds)] if seeds is not None else [])]
        args = [str(source), *what, *execution.args(), *sets, *where]
    return shlex.join(["gdtrain", command, *args])
