"""A torchrun worker that runs gdtrain's CLI with one instrumented moment, chosen by $PROBE.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_probe.py run CONFIG ...

- `teardown`: destroy_process_group prints how many DistributedDataParallel wrappers are alive.
- `late-signal`: rank 0 gets a real SIGINT while the first stop agreement is under way, after
  its own "no signal" has gone out, so the gathered answer is None.
- `checkpoint-signal`: rank 1 gets a real SIGTERM while the first epoch-end checkpoint gathers
  the ranks' RNG states, just after the ranks agreed to go on.
- `second-signal`: rank 0 gets SIGINT at the first stop agreement, then, once training has
  stopped, SIGTERM as it leaves the process group (what torchrun sends on a second Ctrl-C).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from typing import Any

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gdtrain import cli
from gdtrain.training import distributed, engine

PROBE = os.environ["PROBE"]
RANK = int(os.environ["RANK"])
real_destroy, real_gather, real_leave = dist.destroy_process_group, engine.gather, distributed.leave
fired = False


def destroy_process_group(*args: Any, **kwargs: Any) -> None:
    """Report the live DDP wrappers (cycles not yet collected count: they are not freed)."""
    alive = sum(DistributedDataParallel in type(o).__mro__ for o in gc.get_objects())
    print(f"rank {RANK}: DDP wrappers alive at destroy_process_group: {alive}", flush=True)
    real_destroy(*args, **kwargs)


def gather(obj: Any, world: Any) -> Any:
    """engine.gather, with a signal to this process at the chosen moment."""
    global fired
    found = real_gather(obj, world)
    stop_agreement = obj is None or isinstance(obj, int)  # the RNG gather sends a dict
    if not fired and PROBE in ("late-signal", "second-signal") and RANK == 0 and stop_agreement:
        fired = True
        os.kill(os.getpid(), signal.SIGINT)  # its handler runs here, before gather returns
    if not fired and PROBE == "checkpoint-signal" and RANK == 1 and not stop_agreement:
        fired = True
        os.kill(os.getpid(), signal.SIGTERM)
    return found


def leave(world: Any) -> None:
    """distributed.leave, entered by rank 0 with a second signal under way."""
    if PROBE == "second-signal" and RANK == 0:
        os.kill(os.getpid(), signal.SIGTERM)
    real_leave(world)


dist.destroy_process_group = destroy_process_group
engine.gather = gather
distributed.leave = leave
sys.argv = ["gdtrain", *sys.argv[1:]]
cli.main()
