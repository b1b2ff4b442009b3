"""Worker processes for `sweep --jobs N`, and how a sweep takes SIGINT and SIGTERM.

Each worker is a spawned process that runs the points its parent sends, one at a time, and sends
each result back through its own pipe, so the parent always knows which point a worker holds.
When a worker dies (SIGKILL, the OOM killer), its point is recorded as failed with the reason,
unless its run had finished on disk, and a new worker takes the next points; no other point is
touched. (concurrent.futures' ProcessPoolExecutor cannot tell which point a dead worker held,
fails every pending point with BrokenProcessPool and SIGTERMs the other workers.)

Signals: workers run in process groups of their own, so Ctrl-C at the terminal reaches only the
sweep, which passes each SIGINT or SIGTERM on, once, to its running workers: the first lets their
runs save a checkpoint and stop, a second stops them at once, and no queued point starts. A
worker dies with its parent: on Linux it asks for SIGTERM when the parent dies (PR_SET_PDEATHSIG),
so a running point saves a checkpoint first; an idle worker sees its pipe close and exits.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

from gdtrain.core.errors import UserError
from gdtrain.core.runs import runs_named
from gdtrain.core.signals import STOP_SIGNALS, Guard, die_with_parent
from gdtrain.execution.units import attempt
from gdtrain.training.tasks import Result, Task, lost_result


def _serve(conn: Connection, threads: int, parent: int) -> None:
    """A worker's life: run each group of tasks the parent sends and send back their results, until
    the parent sends None or is gone. Starts with SIGINT and SIGTERM blocked (the parent's mask at the spawn)."""
    die_with_parent(parent)
    os.setpgid(0, 0)  # out of the terminal's group: Ctrl-C reaches the sweep, which passes it on once
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may still write to the terminal
    import torch
    from tqdm import tqdm

    torch.set_num_threads(threads)
    # tqdm's default lock is a named semaphore, which os._exit below would leave for multiprocessing's
    # resource tracker to clean up, with a warning; a worker's runs are quiet and need no shared lock.
    tqdm.set_lock(threading.RLock())
    guard = Guard()
    with guard.installed():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a signal that came meanwhile lands now
        while True:
            try:
                unit = conn.recv()
            except EOFError:  # the parent is gone
                break
            if unit is None:
                break
            try:
                reply: list[Result] | UserError = (
                    attempt(unit, guard)
                    if guard.signal is None
                    else [Result(task.name, "not started") for task in unit]
                )
            except UserError as err:  # a problem of the whole sweep: the parent reports it
                reply = err
            try:
                conn.send(reply)
            except OSError:  # the parent is gone
                break
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the interpreter's teardown with torch loaded takes seconds, and the runs closed their files


@dataclass
class Worker:
    """A worker process, the parent's end of its pipe, and the group of tasks it holds."""

    process: BaseProcess
    conn: Connection
    task: list[Task] | None = None
    before: dict[str, frozenset[Path]] = field(default_factory=dict)  # each task's run folders when it was sent

    def send(self, unit: list[Task]) -> None:
        """Hand the worker a group of tasks."""
        self.task = unit
        self.before = {
            task.name: frozenset(runs_named(Path(task.runs_dir), task.experiment, task.name)) for task in unit
        }
        with contextlib.suppress(OSError):  # already dead: its pipe reads as closed, handled there
            self.conn.send(unit)

    def tell(self, signum: int) -> None:
        """Pass a signal on to the worker."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signum)

    def died(self) -> list[Result]:
        """The results of the tasks this worker held when it died: their runs', when finished on disk."""
        self.process.join()
        code = self.process.exitcode or 0
        try:
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        except ValueError:
            how = f"was killed by signal {-code}"
        return [
            lost_result(task, self.before[task.name], f"its worker process {self.process.pid} {how} while it ran")
            for task in self.task
        ]


def run_parallel(units: list[list[Task]], jobs: int, guard: Guard) -> Iterator[list[Result]]:
    """Run the groups of tasks `jobs` at a time in worker processes, replacing any that dies; yield
    each group's results as they come. Once `guard` has a signal no group is sent."""
    context = multiprocessing.get_context("spawn")  # fork after torch's thread pools start can hang
    threads = max(1, (os.cpu_count() or 1) // jobs)  # jobs × threads ≤ cores: no oversubscription
    queue, workers = deque(units), []
    failure: UserError | None = None

    def forward(signum: int) -> None:
        for worker in list(workers):
            if worker.task is not None:
                worker.tell(signum)

    guard.forward = forward
    resource_tracker.ensure_running()  # its first start unblocks SIGINT and SIGTERM: have it start here
    try:
        while True:
            with _held():  # a signal now would miss the worker being handed a task
                if guard.signal is None and failure is None:
                    _hand_out(queue, workers, jobs, lambda: _start(context, threads))
            busy = [w for w in workers if w.task is not None]
            if not busy:
                break
            ready = wait([w.conn for w in busy])  # a dead worker's pipe reads as closed
            for worker in busy:
                if worker.conn not in ready:
                    continue
                try:
                    reply = worker.conn.recv()
                except (EOFError, OSError):
                    reply = worker.died()
                    workers.remove(worker)
                worker.task = None
                if isinstance(reply, UserError):
                    failure = reply
                else:
                    yield reply
    finally:
        for worker in workers:
            if worker.task is not None:  # the sweep itself failed: its runs stop too
                worker.tell(signal.SIGTERM)
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in workers:
            worker.process.join()
            worker.conn.close()
    if failure is not None:
        raise failure


@contextlib.contextmanager
def _held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then their handler runs. A worker started
    meanwhile inherits the mask: a signal waits for its guard instead of killing it in its start-up."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _hand_out(queue: deque[list[Task]], workers: list[Worker], jobs: int, start: Callable[[], Worker]) -> None:
    """Give queued groups to idle workers, starting new ones, until `jobs` are busy."""
    workers[:] = [w for w in workers if w.task is not None or w.process.is_alive()]  # an idle one may have died
    while queue and sum(w.task is not None for w in workers) < jobs:
        worker = next((w for w in workers if w.task is None), None)
        if worker is None:
            worker = start()
            workers.append(worker)
        worker.send(queue.popleft())


def _start(context: multiprocessing.context.SpawnContext, threads: int) -> Worker:
    """A new worker process. Called from the sweep's main thread: Linux sends the parent-death
    signal when the thread that started a process ends, not only when the process does."""
    mine, theirs = context.Pipe()
    process = context.Process(target=_serve, args=(theirs, threads, os.getpid()), name="gdtrain-sweep-worker")
    process.start()
    theirs.close()  # its end lives in the worker only, so the worker's death closes the pipe here
    return Worker(process, mine)
