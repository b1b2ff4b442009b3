"""Sweeps and studies as submitit jobs: `--executor local` (processes on this machine) or `--executor slurm`.

Each job runs one unit, the tasks that train together (gdtrain/execution/units.py, run_unit), and hands its
results back through submitit's result pickle, so run_sweep keeps its own bookkeeping: --resume,
the manifest, the counts. Local jobs run `--jobs` at a time (submitit's local executor has no
queue of its own); on Slurm the units are one job array, `--jobs` of it at a time. A job's pickles
and logs go to <experiment folder>/_jobs/ (<job id>_0_log.err, ...), which compare, TensorBoard
and --resume never take for a run. A job that ends without a result (killed, out of memory, a
crash outside its runs) fails its own points, naming its log, and the sweep goes on.

Signals. The sweep holds SIGINT and SIGTERM while it submits, so a local job (submitit's controller
process and the job's process under it) starts with them blocked: Ctrl-C at the terminal reaches
neither. The job's process moves to a process group of its own and unblocks them under its guard,
and the sweep passes each signal on to it once, as to its workers (gdtrain/execution/workers.py): the run
saves a checkpoint and stops (Linux: the job's process is found through /proc). Not
LocalJob.cancel(): it SIGINTs the controller, which SIGKILLs the job a second later, often before
its checkpoint is written. A local job also stops (SIGTERM, with a checkpoint) when its sweep dies,
even by kill -9. A Slurm job is cancelled with job.cancel() (scancel: SIGTERM, then SIGKILL after
the cluster's KillWait).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gdtrain.core.errors import UserError
from gdtrain.core.runs import runs_named
from gdtrain.core.signals import STOP_SIGNALS, Guard, die_with_process
from gdtrain.execution.units import attempt
from gdtrain.training.tasks import Result, Task, lost_result

if TYPE_CHECKING:
    from submitit import Executor, Job

EXECUTORS = ("local", "slurm")
JOBS = "_jobs"  # in the experiment folder: each job's pickles and logs, <job id>_0_log.out and .err
SLURM_TIME_MIN = 60  # a Slurm job's time limit without --slurm-time (submitit's own default is 5 minutes)
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit kills a local job after 2 minutes by default; runs end by themselves
POLL_SECONDS = {"local": 0.1, "slurm": 2.0}  # how often the sweep looks at its jobs (Slurm's states come from sacct)


@dataclass(frozen=True)
class JobOptions:
    """How a sweep's units become submitit jobs: the executor and its Slurm settings."""

    executor: str  # local | slurm
    partition: str | None = None  # Slurm partition; None: the cluster's default
    gpus_per_job: int | None = None  # GPUs of each job's one node; None: none asked for
    time_min: int | None = None  # each Slurm job's time limit in minutes; None: SLURM_TIME_MIN

    def args(self) -> list[str]:
        """The command-line options that give these settings again (the --resume line)."""
        given = [
            ("--slurm-partition", self.partition),
            ("--slurm-gpus-per-job", self.gpus_per_job),
            ("--slurm-time", self.time_min),
        ]
        return [
            "--executor",
            self.executor,
            *[arg for option, value in given if value is not None for arg in (option, str(value))],
        ]


def job_options(
    executor: str | None, partition: str | None = None, gpus_per_job: int | None = None, time_min: int | None = None
) -> JobOptions | None:
    """The --executor and --slurm-* options, checked; None without --executor (this process, or --jobs workers)."""
    if executor is not None and executor not in EXECUTORS:
        raise UserError(f"--executor {executor!r}: unknown executor; choose one of: {', '.join(EXECUTORS)}")
    given = [
        option
        for option, value in [
            ("--slurm-partition", partition),
            ("--slurm-gpus-per-job", gpus_per_job),
            ("--slurm-time", time_min),
        ]
        if value is not None
    ]
    if given and executor != "slurm":
        raise UserError(f"{', '.join(given)}: Slurm options need --executor slurm; add it, or leave them out")
    if partition is not None and not partition.strip():
        raise UserError("--slurm-partition: empty; give a partition's name, or leave it out for the cluster's default")
    if executor == "slurm":
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise UserError(
                f"--executor slurm: Slurm's {' and '.join(missing)} not found on PATH; run gdtrain on a "
                "Slurm login node, or use --executor local"
            )
    return None if executor is None else JobOptions(executor, partition, gpus_per_job, time_min)


def make_executor(options: JobOptions, folder: Path, jobs: int) -> Executor:
    """submitit's executor for `options`, each job's pickles and logs in `folder`, named by its id."""
    import submitit

    if options.executor == "local":
        executor = submitit.LocalExecutor(folder)
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
        return executor
    executor = submitit.AutoExecutor(folder, cluster="slurm")
    slurm = {"slurm_partition": options.partition, "gpus_per_node": options.gpus_per_job}
    executor.update_parameters(
        name="gdtrain",
        nodes=1,
        tasks_per_node=1,
        slurm_array_parallelism=jobs,
        timeout_min=options.time_min or SLURM_TIME_MIN,
        **{key: value for key, value in slurm.items() if value is not None},
    )
    return executor


@dataclass
class Submitted:
    """A submitted unit: its job, its tasks' run folders at submission, and the signals owed to it."""

    unit: list[Task]
    job: Job
    before: list[frozenset[Path]]
    owed: list[int] = field(default_factory=list)  # to pass on once the local job's process is there


def run_units(units: list[list[Task]], options: JobOptions, jobs: int, guard: Guard) -> Iterator[list[Result]]:
    """Run each unit as a job, `jobs` at a time, and yield its results as it ends. Once `guard`
    has a signal no unit is submitted, and the submitted ones are told."""
    if not units:
        return
    first = units[0][0]
    executor = make_executor(options, Path(first.runs_dir) / first.experiment / JOBS, jobs)
    local = options.executor == "local"
    threads = max(1, (os.cpu_count() or 1) // jobs) if local else None  # jobs × threads ≤ cores, as the workers
    queue, running = deque(units), []
    failure: UserError | None = None

    def forward(signum: int) -> None:
        for one in list(running):
            if local:
                one.owed.append(signum)
                _pass_on(one)
            else:
                one.job.cancel(check=False)

    guard.forward = forward
    try:
        while True:
            room = (jobs - len(running)) if local else len(queue)  # Slurm: one array, `jobs` of it at a time
            if queue and room > 0 and guard.signal is None and failure is None:
                running += submit(executor, [queue.popleft() for _ in range(min(room, len(queue)))], threads, local)
            if not running:
                break
            time.sleep(POLL_SECONDS[options.executor])
            for one in list(running):
                if one.owed:
                    _pass_on(one)
                if one.job.done():
                    running.remove(one)
                    reply = outcome(one, local, guard.signal is not None)
                    if isinstance(reply, UserError):
                        failure = reply
                    else:
                        yield reply
    finally:
        if running:  # the sweep itself failed: its jobs stop too, and a local one ends before the sweep does
            forward(signal.SIGTERM)
        while local and any(not one.job.done() for one in running):
            for one in running:
                if one.owed:
                    _pass_on(one)
            time.sleep(POLL_SECONDS[options.executor])
    if failure is not None:
        raise failure


def submit(executor: Executor, units: list[list[Task]], threads: int | None, local: bool) -> list[Submitted]:
    """Submit each unit as a job (one array on Slurm), SIGINT and SIGTERM held meanwhile: a local job
    starts with them blocked, and a signal that comes now waits for the jobs to be known."""
    before = [[frozenset(runs_named(Path(t.runs_dir), t.experiment, t.name)) for t in unit] for unit in units]
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        with executor.batch():
            jobs = [executor.submit(run_job, unit, threads, os.getpid() if local else None) for unit in units]
    except (RuntimeError, OSError) as err:  # sbatch refused them (no such partition, a limit), a full disk
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise UserError(f"submitit could not submit the jobs: {lines[-1] if lines else type(err).__name__}") from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return [Submitted(unit, job, made) for unit, job, made in zip(units, jobs, before)]


def _pass_on(one: Submitted) -> None:
    """Send a local job's process the signals owed to it, once it has one (submitit's controller starts it)."""
    pids = _children(int(one.job.job_id))  # the job's id is its controller's pid
    for pid in pids:
        for signum in one.owed:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
    if pids:
        one.owed.clear()


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:  # gone
                continue
            if int(fields[1]) == pid:  # after the command's name: state, then the parent's pid
                found.append(int(entry.name))
    return found


def outcome(one: Submitted, local: bool, stopping: bool) -> list[Result] | UserError:
    """What an ended job's unit came to: its results, or for a job that ended without them, each
    task's result from its run folders."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    job = one.job
    if stopping and not job.paths.stdout.exists():  # cancelled before it started: it has no log
        return [Result(task.name, "not started") for task in one.unit]
    raised = None
    if not local or job.paths.result_pickle.exists():  # a local job writes it before its process ends
        try:
            return job.result()  # on Slurm, waits a while for a result still on its way to a shared disk
        except FailedJobError as err:  # an exception outside the runs: its trace is in the log
            trace = str(err).split("-" * 22)
            raised = trace[1].strip().splitlines()[-1] if len(trace) > 2 and trace[1].strip() else "an exception"
        except UncompletedJobError:
            pass
    how = "its process was killed or died" if local else f"Slurm state {job.state}"
    why = f"its job {job.job_id} " + (f"raised {raised}" if raised else f"ended without a result ({how})")
    why += f"; its log: {job.paths.stderr}"
    return [lost_result(task, before, why) for task, before in zip(one.unit, one.before)]


def run_job(unit: list[Task], threads: int | None, sweep: int | None) -> list[Result] | UserError:
    """A job's life: its unit (units.attempt: one point, or a stacked group) under a guard; a signal
    before it starts leaves it not started. `sweep`, for a local job: the sweep's pid, whose process
    group it leaves and whose end it follows."""
    if sweep is not None:
        os.setpgid(0, 0)  # Ctrl-C at the terminal reaches the sweep only, which passes it on once
        die_with_process(sweep)
    import torch

    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))  # Slurm: the CPUs it gave the job
    if sweep is not None:
        atexit.register(_leave)  # registered after torch's: it runs first
    guard = Guard()
    with guard.installed():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a signal that came meanwhile lands now
        try:
            if guard.signal is not None:
                return [Result(task.name, "not started") for task in unit]
            return attempt(unit, guard)
        except UserError as err:  # a problem of the whole sweep: the sweep reports it
            return err
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # submitit writes the result undisturbed


def _leave() -> None:
    """End a local job's process at once, its result written: the interpreter's teardown with torch
    loaded takes seconds (the workers skip it too), and submitit's controller acts on no exit status
    but its requeue code, which these jobs never use."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
