"""Processes and signals, in one place: how a run, a sweep and their workers take SIGINT and SIGTERM,
and how a process dies with the one that started it. Torch-free.

- A run (`stop_on_signals`): the first SIGINT or SIGTERM asks its loop to stop after the step in
  progress and save a checkpoint (`Stop.signal`); a second one stops it at once (KeyboardInterrupt).
- A sweep (`Guard`): keeps the first signal, passes each one on to its running workers, and stops a
  point at once while that point has no handlers of its own (being set up, or writing its results).
- Dying with the parent (`die_with_parent`): a sweep's workers and torchrun's ranks ask Linux for a
  signal when their parent dies (PR_SET_PDEATHSIG), turned into exactly one SIGTERM, so a running
  point saves a checkpoint first. A submitit job is no child of its sweep: `die_with_process`
  watches the sweep's pidfd instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class Stop:
    """Set by a SIGINT/SIGTERM handler; the loop stops after the step in progress."""

    signal: int | None = None


@contextlib.contextmanager
def stop_on_signals(stop: Stop, main: bool = True, ranks: int = 1) -> Iterator[None]:
    """SIGINT or SIGTERM asks the loop to stop after its step (`ranks` > 1 processes: at the next log
    point, together); a second one stops at once. Only the `main` process says so."""
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread only
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.signal is not None:
            raise KeyboardInterrupt
        stop.signal = signum
        if main:  # one line for the run, not one per process
            when = "after this step" if ranks == 1 else "at the next log point"
            sys.stderr.write(
                f"\n{signal.Signals(signum).name}: stopping {when} to save a checkpoint (again to stop at once)\n"
            )

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Guard:
    """SIGINT and SIGTERM in a sweep's process. The first signal is kept in `signal`; every one is
    passed to `forward` (the parent's running workers). While `busy`, a point runs here without
    its run's own handlers in place (being set up, or writing its results): the guard then
    raises KeyboardInterrupt, so the point stops at once instead of training to its end."""

    def __init__(self, message: str = "", forward: Callable[[int], None] = lambda signum: None) -> None:
        """A guard that prints `message` on the first signal (nothing when empty)."""
        self.signal: int | None = None
        self.busy = False
        self.message = message
        self.forward = forward

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The handler of SIGINT and SIGTERM."""
        if self.signal is None and self.message:
            sys.stderr.write(f"\n{signal.Signals(signum).name}: {self.message}\n")
        self.stop(signum)
        if self.busy:
            raise KeyboardInterrupt

    def stop(self, signum: int) -> None:
        """Stop the sweep as `signum` asks: keep the first signal, pass this one on."""
        if self.signal is None:
            self.signal = signum
        self.forward(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM with this guard, then put the previous handlers back."""
        if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread only
            yield
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Mark a point running in this process."""
        self.busy = True
        try:
            yield
        finally:
            self.busy = False


def die_with_parent(parent: int | None, exit_if_gone: bool = True) -> None:
    """Have Linux send this process one SIGTERM when its parent dies, even by SIGKILL. When the
    parent (pid `parent`, if known) died before the request, exit now (`exit_if_gone`) or SIGTERM
    this process, so it stops as the signal would have stopped it."""
    # The kernel sends the parent-death signal again each time it hands the child from a dying
    # thread of the parent to another one (seen twice in 5 kills of a 5-thread parent), and a
    # second SIGTERM means "stop at once, no checkpoint". So the signal is SIGHUP (also what
    # torchrun passes on when its terminal goes), turned here into one SIGTERM. Ignoring SIGHUP
    # once the handler runs is not enough: more can arrive before that line, each starting the
    # handler again inside the one before (seen in 1 of 10 and 1 of 30 launcher kills: three nested
    # calls, two SIGTERMs), so only the first call counts; `next` is one step for Python's signal
    # handling, which can start a handler between any two.
    calls = itertools.count()

    def parent_died(signum: int, frame: FrameType | None) -> None:
        if next(calls) > 0:
            return
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.kill(os.getpid(), signal.SIGTERM)

    if sys.platform.startswith("linux"):
        signal.signal(signal.SIGHUP, parent_died)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent is not None and os.getppid() != parent:  # it died before the request: no signal will come
        if exit_if_gone:
            sys.exit(128 + signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)


def die_with_process(pid: int) -> None:
    """SIGTERM this process once when the process `pid` ends, however it ends (a pidfd, Linux 5.3+);
    for a process that is not this one's parent (a submitit job and its sweep)."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:  # gone already: the signal waits for the guard, and nothing starts
        os.kill(os.getpid(), signal.SIGTERM)
        return
    except (AttributeError, OSError):  # no pidfds here: the job trains to its end
        return

    def watch() -> None:
        select.select([handle], [], [])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gdtrain-sweep-watch", daemon=True).start()
