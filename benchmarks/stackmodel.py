"""Milliseconds per training step of M stacked MNIST MLPs (configs/mnist_adam.yaml: 784-128-10, relu, Adam lr
1e-3), M = 1, 8, 21, 64, at batch 32 and 256: batched matmuls against torch.func's vmap.

    python benchmarks/stackmodel.py [--steps N] [--repeats R] [--sizes 1,8,21,64] [--batch-sizes 32,256] [--threads T]

A step is what a stacked training loop does: gather each member's batch, rows of one shared (60000, 784)
float table by a (M, B) index (each member's slice of its own permutation), one forward and one backward
for all members (the sum of their mean losses), one StackedOptimizer step (torch's fused Adam on the CPU).
Columns, each the best of `--repeats` timings of `--steps` steps (the least disturbed by other work):
(a) gdtrain.stackmodel.StackedModel: feature-major baddbmm, h = W @ x.mT, (M, features, B);
(a') the same matmuls batch-major, x @ W.mT: the weights' gradients come out transposed and AccumulateGrad
     copies them into the weights' layout (stackmodel's forward before it was made feature-major);
(b) torch.func.stack_module_state + functional_call + vmap(randomness="different") over the solo model;
then (a)'s step in pieces: the gather, forward + backward, the optimizer step, each timed alone.
The matmul floor is 6 × parameters × M × B at the GFLOP/s of a 2048² matmul with the same threads.

Measured (AMD EPYC, 2 cores, KVM, shared with other jobs: load average 4.4-6.5; torch 2.13.0 CPU, 1 thread,
matmul 57-70 GFLOP/s), ms per step, the best of 3 runs of the script, (a) / (a') / (b):
batch 32:  M = 1: 1.21 / 1.26 / 1.83; M = 8: 3.91 / 7.64 / 8.90; M = 21: 11.98 / 22.46 / 19.63;
           M = 64: 30.34 / 62.63 / 55.07
batch 256: M = 1: 2.73 / 3.00 / 4.27; M = 8: 18.70 / 20.27 / 23.26; M = 21: 46.32 / 53.02 / 53.21;
           M = 64: 131.3 / 159.8 / 171.5
(a) is the fastest everywhere: at batch 32 with M >= 8, (a') and vmap take 1.6-2.3 times its time (both
get the weights' gradients transposed: the profiler shows vmap's step paying the same strided copy_), at
batch 256 1.1-1.3 times; vmap also pays its dispatch (M = 1). (a) at M = 21, batch 32: gather 0.42, forward +
backward 7.66, the fused Adam 2.27 (memory-bound: several passes over 21 × 101,770 weights and their state).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from gdtrain.bench import machine, matmul_gflops
from gdtrain.components.models import build_model
from gdtrain.core.config import Config, load_config
from gdtrain.stacked.model import StackedModel, member_losses
from gdtrain.stacked.optimizer import StackedOptimizer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mnist_adam.yaml"  # the seeds' MLP with Adam
N_TABLE, D, CLASSES = 60000, 784, 10


def timed(step: Callable[[], object], steps: int, repeats: int) -> float:
    """Best ms per call of `step` over the repeats, after a few calls to warm up."""
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - started) / steps * 1e3)
    return min(times)


def members(config: Config, m: int) -> list[nn.Module]:
    """M solo models as a run of seed `m` builds them."""
    models = []
    for seed in range(m):
        torch.manual_seed(seed)
        models.append(build_model(config.model, D, CLASSES))
    return models


def batch_major(model: StackedModel, x: Tensor) -> Tensor:
    """(a'): stackmodel's forward as it was, x @ W.mT, (M, B, features) throughout."""
    for i, (weight, bias) in enumerate(model.layers):
        if i > 0:
            x = model.activation(x)
        x = torch.baddbmm(bias.unsqueeze(1), x, weight.mT)
    return x


class Batches:
    """Each member's batches: its own permutation of the table's rows, sliced per step, gathered by index."""

    def __init__(self, m: int, batch_size: int):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(N_TABLE, D, generator=g), torch.randint(0, CLASSES, (N_TABLE,), generator=g)
        self.order = torch.stack([torch.randperm(N_TABLE, generator=g) for _ in range(m)])  # (M, N)
        self.m, self.batch_size, self.step = m, batch_size, 0
        self.inputs = torch.empty(m * batch_size, D)  # reused: a fresh one past 32 MB is page-faulted in each step

    def __call__(self) -> tuple[Tensor, Tensor]:
        """(M, B, D) inputs and (M, B) labels of the next step."""
        start = self.step * self.batch_size % (N_TABLE - self.batch_size)
        self.step += 1
        rows = self.order[:, start : start + self.batch_size].reshape(-1)  # (M·B,)
        x = torch.index_select(self.x, 0, rows, out=self.inputs)
        return x.view(self.m, self.batch_size, D), self.y[rows].view(self.m, -1)


def stacked_step(config: Config, m: int, batch: Batches, forward: str) -> tuple[Callable[[], None], dict]:
    """One training step of StackedModel ((a) "feature", (a') "batch"), and its pieces to time alone."""
    model = StackedModel(config.model, members(config, m))
    optimizer = StackedOptimizer(model.params, [config.optimizer] * m)
    lr = optimizer.base_lr
    run = model if forward == "feature" else (lambda x: batch_major(model, x))
    x, y = batch()

    def backward(x: Tensor, y: Tensor) -> None:
        for p in model.params:
            p.grad = None
        member_losses("cross_entropy", run(x), y).sum().backward()

    def step() -> None:
        backward(*batch())
        optimizer.step(lr)

    pieces = {"gather": batch, "forward + backward": lambda: backward(x, y), "optimizer": lambda: optimizer.step(lr)}
    return step, pieces


def vmap_step(config: Config, m: int, batch: Batches) -> Callable[[], None]:
    """(b): one training step of the solo model vmapped over stack_module_state's stacks."""
    models = members(config, m)
    params, buffers = stack_module_state(models)  # (M, *shape) each, requires_grad
    base = copy.deepcopy(models[0]).to("meta")

    def loss(params: dict, buffers: dict, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(base, (params, buffers), (x,)), y)

    losses = vmap(loss, randomness="different")  # dropout draws per member
    optimizer = StackedOptimizer(list(params.values()), [config.optimizer] * m)
    lr = optimizer.base_lr

    def step() -> None:
        x, y = batch()
        for p in params.values():
            p.grad = None
        losses(params, buffers, x, y).sum().backward()
        optimizer.step(lr)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings, the best is shown")
    parser.add_argument("--sizes", default="1,8,21,64", help="numbers of members")
    parser.add_argument("--batch-sizes", default="32,256", help="samples per member per step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(CONFIG)
    gflops = matmul_gflops(torch.device("cpu"))
    params = sum(p.numel() for p in members(config, 1)[0].parameters())
    print(
        f"{machine()}; matmul {gflops:.0f} GFLOP/s; ms per step of all M members, best of "
        f"{args.repeats} × {args.steps} steps"
    )
    print(
        "\n| M | batch | (a) StackedModel | (a') batch-major | (b) vmap | (a) run-samples/s | (a) vs floor "
        "| (a): gather | forward + backward | optimizer |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for m in [int(s) for s in args.sizes.split(",")]:
            step, pieces = stacked_step(config, m, Batches(m, batch_size), "feature")
            ours = timed(step, args.steps, args.repeats)
            before = timed(stacked_step(config, m, Batches(m, batch_size), "batch")[0], args.steps, args.repeats)
            vmapped = timed(vmap_step(config, m, Batches(m, batch_size)), args.steps, args.repeats)
            parts = " | ".join(f"{timed(f, args.steps, args.repeats):.2f}" for f in pieces.values())
            floor = 6 * params * m * batch_size / (gflops * 1e9) * 1e3
            print(
                f"| {m} | {batch_size} | {ours:.2f} | {before:.2f} | {vmapped:.2f} | "
                f"{m * batch_size / ours * 1e3:,.0f} | {ours / floor:.1f}× | {parts} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
