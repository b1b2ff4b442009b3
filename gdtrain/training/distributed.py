"""Several processes, one run: torchrun's environment, DistributedDataParallel's helpers.

`torchrun --nproc-per-node N -m gdtrain run CONFIG` starts N copies; each finds its rank here,
joins the process group (gloo on CPU, nccl on GPU) and trains its share of every global batch.
Only rank 0 writes the run folder. With one process none of this does anything.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gdtrain.core.errors import StoppedElsewhere, UserError
from gdtrain.core.signals import die_with_parent

AGENT = "GDTRAIN_AGENT_PID"  # set by `gdtrain run --nproc`: the pid of the workers' parent
PR_SET_PDEATHSIG = 1  # prctl(2), <linux/prctl.h>


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the GPU this process drives on its machine

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, checkpoints and writes the summary."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's part of a global batch of n samples (sizes differ by at most one)."""
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)


def join(cuda: bool) -> World:
    """The World torchrun describes in the environment; joins its process group when there are several."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    agent = os.environ.get(AGENT)  # torchrun's agent, our parent: the ranks stop when it dies
    die_with_parent(int(agent) if agent is not None else None, exit_if_gone=False)
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if cuda:
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return world


@contextlib.contextmanager
def together(world: World) -> Iterator[None]:
    """Run a block that may fail on one rank only (rank 0 making the run folder); then every rank
    learns whether it failed anywhere. The failing rank raises its own error, which it reports;
    the others raise StoppedElsewhere instead of waiting in a collective the failed one never joins."""
    error: Exception | None = None
    try:
        yield
    except Exception as err:
        if world.size == 1:
            raise
        error = err
    if world.size > 1 and any(gather(error is not None, world)):
        raise error if error is not None else StoppedElsewhere()


def check_batch(world: World, batch_size: int) -> None:
    """Every rank needs at least one sample of each global batch."""
    if world.size > 1 and batch_size < world.size:
        raise UserError(
            f"train.batch_size: {batch_size} cannot be shared by {world.size} processes; "
            f"use at least {world.size}, or fewer processes"
        )


def all_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum `tensor` over every rank, in place (a no-op for one process)."""
    if world.size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather(obj: Any, world: World) -> Any:
    """Every rank's `obj` as a list, in rank order; the object itself for one process."""
    if world.size == 1:
        return obj
    found: list[Any] = [None] * world.size
    dist.all_gather_object(found, obj)
    return found


def leave(world: World) -> None:
    """Leave the process group at the end of a run."""
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
