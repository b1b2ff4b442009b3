"""Microseconds per optimizer step: M stacked MNIST MLPs (784-128-10) updated by one StackedOptimizer
against M separate torch.optim optimizers, for M = 1, 8, 21, 64.

    python benchmarks/stackopt.py [--steps N] [--repeats R] [--sizes 1,8,21,64] [--threads T]

Three tables, each the best of `--repeats` timings of `--steps` steps (the least disturbed by other
work on the machine), gradients already in place (only the update is timed, not forward and backward):
1. Adam: the stacked update vs M torch.optim.Adam as gdtrain builds them on the CPU (fused) and with
   foreach. Stacked with `implementation: auto` runs torch's fused kernel over all rows: with each
   member's own lr (1e-3, 2e-3, 3e-3 in turn) through a scratch z, with one lr directly (as a group
   of seeds would); and stacked with the single-tensor rules (`implementation: for_loop`).
2. A mixed group, half SGD with momentum and half Adam: members of a kind side by side (views),
   interleaved (index_select / index_copy_), and the mask alternative (each rule on all M rows,
   torch.where keeps its members' rows).
3. The per-step helpers: per-member clipping, and MemberSchedules during warm-up (a Python loop).
One torch thread by default: on a 2-core machine shared with other work, two threads waiting on each
other made the same step 10 to 100 times slower from one timing to the next.

Measured (AMD EPYC, 2 cores, shared with two other jobs, torch 2.13.0 CPU, 1 thread), µs per step:
M = 8 / 21 / 64 stacked Adam, own lr each 1,741 / 4,361 / 13,575; one lr 1,133 / 2,572 / 8,352;
for_loop rules 4,747 / 12,318 / 38,145; M × torch fused Adam 2,408 / 4,617 / 13,157. The update is
memory-bound at these sizes: stacking saves the per-call overhead, not the passes over the numbers.
Mixed group at M = 64: views 24,186, gathers 37,441 (+55%), masks 151,823.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import torch
from torch import nn

from gdtrain.bench import machine
from gdtrain.components.optimizers import IMPLEMENTATIONS, implementation
from gdtrain.core.config import AdamConfig, ConstantSchedule, SGDConfig
from gdtrain.stacked.lr import MemberSchedules
from gdtrain.stacked.optimizer import StackedOptimizer, clip_grad_norms_
from gdtrain.stacked.rules import RULES, Rows

SHAPES = [(128, 784), (128,), (10, 128), (10,)]  # the seeds' MNIST MLP: fc1 weight and bias, fc2 weight and bias


def stack(m: int) -> list[nn.Parameter]:
    """M members' parameters, (M, *shape) each, with random gradients in place."""
    params = [nn.Parameter(torch.randn(m, *shape) * 0.05) for shape in SHAPES]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def timed(step: Callable[[], None], steps: int, repeats: int) -> float:
    """Best µs per call of `step` over the repeats, after a few calls to warm up."""
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - started) / steps * 1e6)
    return min(times)


def separate(m: int, kernel: str) -> Callable[[], None]:
    """M torch.optim.Adam, one per member, each over its own four tensors."""
    optimizers = []
    for params in zip(*[p.unbind() for p in stack(m)]):
        own = [nn.Parameter(p.clone()) for p in params]
        for p in own:
            p.grad = torch.randn_like(p)
        optimizers.append(torch.optim.Adam(own, lr=1e-3, **IMPLEMENTATIONS[kernel]))

    def step() -> None:
        for opt in optimizers:
            opt.step()

    return step


def adam_table(sizes: list[int], steps: int, repeats: int) -> None:
    kernel = implementation(AdamConfig(), torch.device("cpu"))
    print(
        f"\n| M | stacked, auto, own lr each | stacked, auto, one lr | stacked, for_loop rules, own lr each "
        f"| M × Adam {kernel} (gdtrain's pick) | M × Adam foreach | speed-up: own lr each vs M × {kernel} |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for m in sizes:
        figures = []
        for kernel_, lrs in (("auto", (1e-3, 2e-3, 3e-3)), ("auto", (1e-3,)), ("for_loop", (1e-3, 2e-3, 3e-3))):
            configs = [AdamConfig(lr=lrs[i % len(lrs)], implementation=kernel_) for i in range(m)]
            opt, lr = StackedOptimizer(stack(m), configs), torch.tensor([c.lr for c in configs], dtype=torch.float64)
            figures.append(timed(functools.partial(opt.step, lr), steps, repeats))
        solo = timed(separate(m, kernel), steps, repeats)
        foreach = timed(separate(m, "foreach"), steps, repeats)
        cells = " | ".join(f"{f:,.0f}" for f in (*figures, solo, foreach))
        print(f"| {m} | {cells} | {solo / figures[0]:.2f}× |")


def masked(m: int, configs: list) -> Callable[[], None]:
    """The alternative to gathering: each kind's rule on all M rows, its members' rows kept by torch.where."""
    params = stack(m)
    work = [(torch.empty_like(p), torch.empty_like(p)) for p in params]
    kinds = {}
    for name, switch in (("sgd", (True, False)), ("adam", (False,))):
        member = torch.tensor([c.name == name for c in configs])
        states = ("momentum_buffer",) if name == "sgd" else ("exp_avg", "exp_avg_sq")
        hypers = (
            {"momentum": torch.full((m,), 0.9), "dampening": torch.zeros(m), "weight_decay": torch.zeros(m)}
            if name == "sgd"
            else {
                "beta1": torch.full((m,), 0.9),
                "beta2": torch.full((m,), 0.999),
                "eps": torch.full((m,), 1e-8),
                "weight_decay": torch.zeros(m),
            }
        )
        kinds[name] = (
            member,
            switch,
            {s: [torch.zeros_like(p) for p in params] for s in states},
            {h: v.double() for h, v in hypers.items()},
        )
    lr, step_count = torch.full((m,), 1e-3, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)

    def step() -> None:
        step_count.add_(1)
        for name, (member, switch, state, hypers) in kinds.items():
            new = [p.detach().clone() for p in params]
            RULES[name](Rows(new, [p.grad for p in params], state, work, hypers, lr, step_count, switch, False, False))
            with torch.no_grad():
                for p, q in zip(params, new):
                    p.copy_(torch.where(member.view(-1, *[1] * (p.dim() - 1)), q, p))

    return step


def mixed_table(sizes: list[int], steps: int, repeats: int) -> None:
    print(
        "\n| M (half SGD momentum, half Adam, for_loop rules) | by kind, views (µs/step) | interleaved, gathers "
        "| masks |"
    )
    print("|---:|---:|---:|---:|")
    for m in [s for s in sizes if s > 1]:
        sgd, adam = SGDConfig(lr=0.01, momentum=0.9), AdamConfig(implementation="for_loop")
        by_kind = [sgd] * (m // 2) + [adam] * (m - m // 2)
        interleaved = [sgd if i % 2 else adam for i in range(m)]
        lr = torch.full((m,), 1e-3, dtype=torch.float64)
        figures = []
        for configs in (by_kind, interleaved):
            opt = StackedOptimizer(stack(m), configs)
            figures.append(timed(functools.partial(opt.step, lr), steps, repeats))
        figures.append(timed(masked(m, interleaved), steps, repeats))
        print(f"| {m} | " + " | ".join(f"{f:,.0f}" for f in figures) + " |")


def helpers_table(sizes: list[int], steps: int, repeats: int) -> None:
    print("\n| M | clip_grad_norms_ (µs/step) | MemberSchedules.step in warm-up | after warm-up |")
    print("|---:|---:|---:|---:|")
    for m in sizes:
        params = stack(m)
        max_norm = torch.tensor([1e9 if i % 2 else float("inf") for i in range(m)])  # half clip (never binding)
        clip = timed(functools.partial(clip_grad_norms_, params, max_norm), steps, repeats)
        warm = ConstantSchedule(warmup_steps=10**9)
        schedules = MemberSchedules([AdamConfig()] * m, [warm] * m, epochs=1)
        warming = timed(schedules.step, steps, repeats)
        after = MemberSchedules([AdamConfig()] * m, [ConstantSchedule()] * m, epochs=1)
        print(f"| {m} | {clip:,.0f} | {warming:,.0f} | {timed(after.step, steps, repeats):,.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings, the best is shown")
    parser.add_argument("--sizes", default="1,8,21,64", help="numbers of members")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{machine()}; µs per optimizer step of all M members, best of {args.repeats} × {args.steps} steps")
    adam_table(sizes, args.steps, args.repeats)
    mixed_table(sizes, args.steps, args.repeats)
    helpers_table(sizes, args.steps, args.repeats)


if __name__ == "__main__":
    main()
