"""`run --nproc N` and `resume --nproc N`: this process becomes torchrun's launcher and exits as rank 0 did.

torchrun starts each worker in a session of its own, so a Ctrl-C at the terminal reaches the
launcher only. Its handler passes SIGINT or SIGTERM on to every worker's process group, once, and
waits for them (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s, then SIGKILL): they stop together at their
next agreement with a checkpoint, and rank 0 prints the resume line. A worker's UserError is left
in a folder the launcher names (ERRORS), and the launcher prints the lowest rank's once: often every
rank meets the same one. Torch-free until `torchrun` runs: the CLI asks `left_for_launcher` on every
error.
"""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from gdtrain.core.config import Config

ERRORS = "GDTRAIN_ERRORS"  # set by the launcher: a folder where the workers leave their errors
CHOSEN = (1, 2, 130, 143)  # rank 0's status once it has said why: diverged or a crash, bad input, a signal


def world() -> tuple[int, int]:
    """(rank, processes) of this process, from torchrun's environment; (0, 1) alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def left_for_launcher(message: str) -> bool:
    """Under the launcher, leave a worker's error for it to print once for all ranks (they often
    all meet the same one); False when there is no launcher, or its folder is gone."""
    if ERRORS not in os.environ or "RANK" not in os.environ:
        return False
    try:
        Path(os.environ[ERRORS], f"rank-{int(os.environ['RANK']):05d}").write_text(message)
    except OSError:
        return False
    return True


def check_shares(cfg: Config, nproc: int) -> None:
    """What one process can check before torchrun starts several: each rank gets part of every batch."""
    from gdtrain.training.distributed import World, check_batch

    if cfg.train.batch_size != "full":
        check_batch(World(size=nproc), cfg.train.batch_size)


def torchrun(nproc: int, args: list[str], say: Callable[..., None]) -> int:
    """Be `torchrun --standalone --nproc-per-node N -m gdtrain ARGS`, in this process; rank 0's exit
    status, or 128 + the signal that stopped the workers. `say` prints (typer.echo's signature)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as launch

    from gdtrain.training.distributed import AGENT

    argv = ["--standalone", f"--nproc-per-node={nproc}", "-m", "gdtrain", *args]
    say(f"launching: torchrun {shlex.join(argv)}", err=True)
    os.environ[AGENT] = str(os.getpid())  # the workers' parent: they stop when it dies (distributed.join)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun gives each worker, without its 4-line banner
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(unexplained)
    with tempfile.TemporaryDirectory(prefix="gdtrain-errors-") as errors:
        os.environ[ERRORS] = errors
        try:
            launch(parse_args(argv))
        except SignalException as err:  # the workers have stopped (or been killed after the timeout)
            return 128 + err.sigval
        except KeyboardInterrupt:  # Ctrl-C before torchrun's handler was in place: no worker yet
            return 130
        except ChildFailedError as err:
            # The lowest rank's UserError, once: often every rank met the same one, and the
            # first to exit 2 made torchrun stop the others, perhaps before they could say it.
            reported = sorted(Path(errors).iterdir())
            for line in (reported[0].read_text() if reported else "").splitlines():
                say(f"error: {line}", err=True)
            return 2 if reported else failure_status(err.failures, say)
    return 0


def unexplained(record: logging.LogRecord) -> bool:
    """False for torchrun's "failed (exitcode: N) local_rank: 0" when rank 0 chose N and has said why."""
    chosen = {(code, 0) for code in CHOSEN}
    return not (str(record.msg).startswith("failed (exitcode") and tuple(record.args or ())[:2] in chosen)


def failure_status(failures: dict[int, ProcessFailure], say: Callable[..., None]) -> int:
    """The launcher's exit status when a worker exited non-zero: rank 0's own status when it chose
    it (it has printed why); else 1, with a line per failed worker (killed by a signal, say)."""
    main = failures.get(0)
    if main is not None and main.exitcode in CHOSEN:
        return main.exitcode
    for rank, failure in sorted(failures.items()):
        how = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit status {failure.exitcode}"
        say(f"error: rank {rank} (pid {failure.pid}) stopped: {how}", err=True)
    return 1
