"""`gdtrain bench`: seconds per epoch of the tutorials' MNIST MLP, four ways, in one process.

(a) gdtrain's engine (data on the device, one permutation per epoch, slices per step);
(b) a plain hand-written loop over a torch DataLoader of per-sample tensors, the tutorials' style
    (torchvision's ToTensor + Normalize per sample, default collate, `loss.item()` every step);
(c) the same hand-written loop over tensor slices instead of a DataLoader (a lean plain loop:
    torch.optim's default kernel, `loss.item()` every step), to show what the data path alone buys;
(d) the matmul floor: 6 × parameters × samples over the GFLOP/s of a large matmul here;
then, optionally, bf16 autocast and torch.compile against fp32, and N runs trained together as one
stacked model (issue 13) against the same N runs one after another, each (a).
"""

from __future__ import annotations

import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from gdtrain.components import idx
from gdtrain.components.datasets import Dataset
from gdtrain.components.models import build_model
from gdtrain.components.optimizers import build_optimizer, build_over
from gdtrain.core.config import Config, validate
from gdtrain.core.errors import UserError
from gdtrain.core.signals import Stop
from gdtrain.stacked import loop as stacked
from gdtrain.stacked.data import GroupData
from gdtrain.stacked.generic import Solos
from gdtrain.stacked.optimizer import StackedOptimizer
from gdtrain.training import engine, lifecycle
from gdtrain.training.distributed import World
from gdtrain.training.lifecycle import Outcome, Progress
from gdtrain.training.recipe import compiled
from gdtrain.training.tracker import NullTracker, Tracker


def mnist_or_random(root: Path | None) -> tuple[Tensor, Tensor, str]:
    """The real MNIST training images (N, 28, 28) uint8 when found under root, else random ones."""
    if root is not None:
        try:
            images, labels, _, _ = idx.load("mnist", root)
            return images, labels, f"MNIST from {root}"
        except UserError:
            pass
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60000, 28, 28), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 10, (60000,), generator=g), "random data of MNIST's shape"


def matmul_gflops(device: torch.device, n: int = 2048, repeat: int = 10) -> float:
    """Measured GFLOP/s of an n×n float32 matmul on `device`."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    started = time.perf_counter()
    for _ in range(repeat):
        a @ b
    sync()
    return 2 * n**3 * repeat / (time.perf_counter() - started) / 1e9


class PerSample(TorchDataset):
    """The tutorials' dataset: torchvision's MNIST with ToTensor and Normalize((0.5,), (0.5,)).

    Op for op what torchvision runs per image, minus its PIL round trip (torchvision does not
    import here): a numpy copy, view/permute/contiguous, float / 255, then Normalize's clone,
    mean and std tensors, zero-std check, sub_ and div_.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        pixels, target = self.images[i], int(self.labels[i])
        image = torch.from_numpy(np.array(pixels.numpy(), np.uint8, copy=True))  # ToTensor
        image = image.view(28, 28, 1).permute((2, 0, 1)).contiguous().to(dtype=torch.float32).div(255)
        image = image.clone()  # Normalize, not in place
        mean = torch.as_tensor((0.5,), dtype=image.dtype, device=image.device)
        std = torch.as_tensor((0.5,), dtype=image.dtype, device=image.device)
        if (std == 0).any():
            raise ValueError("std evaluated to zero")
        return image.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1)), target  # (1, 28, 28)


def _seeds_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def plain_loop_epoch(images: Tensor, labels: Tensor, batch_size: int) -> float:
    """Seconds for one epoch of the hand-written DataLoader loop (b)."""
    model, optimizer = _seeds_model()
    loader = DataLoader(PerSample(images, labels), batch_size=batch_size, shuffle=True)
    started, running_loss = time.perf_counter(), 0.0
    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    return time.perf_counter() - started


def lean_loop_epoch(images: Tensor, labels: Tensor, batch_size: int) -> float:
    """Seconds for one epoch of the hand-written loop over slices of a shuffled tensor (c)."""
    model, optimizer = _seeds_model()
    x_all = images.reshape(len(images), -1).float().div(255).sub(0.5).div(0.5)
    started, running_loss = time.perf_counter(), 0.0
    order = torch.randperm(len(x_all))
    x_all, y_all = x_all[order], labels[order]
    for start in range(0, len(x_all), batch_size):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_all[start : start + batch_size]), y_all[start : start + batch_size])
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    return time.perf_counter() - started


def _config(batch_size: int, precision: str = "fp32", compile: bool = False, max_steps: int | None = None) -> Config:
    """The bench's run: configs/mnist_adam.yaml's MLP and Adam with the tutorials' (0.5, 0.5) pixels."""
    length = {"epochs": 1} if max_steps is None else {"max_steps": max_steps}
    return validate(
        {
            "data": {"name": "mnist", "normalize": "half"},
            "model": {"name": "mlp", "hidden_sizes": [128]},
            "optimizer": {"name": "adam", "lr": 1e-3},
            "train": {
                **length,
                "batch_size": batch_size,
                "loss": "cross_entropy",
                "log_every": 100,
                "precision": precision,
                "compile": compile,
            },
        },
        "bench",
    )


def _dataset(images: Tensor, labels: Tensor, device: torch.device) -> Dataset:
    """The images as (0.5, 0.5)-normalised float rows on the device; the last 1,000 (at most) for validation."""
    x = images.reshape(len(images), -1).float().div(255).sub(0.5).div(0.5)
    n_val = min(1000, len(x) // 10)  # validation runs once, after the timed steps
    return Dataset(x[:-n_val], labels[:-n_val], x[-n_val:], labels[-n_val:], 10).to(device)


def engine_run(data: Dataset, config: Config, seed: int, device: torch.device) -> Outcome:
    """One run of gdtrain's engine from `seed`; outcome.train_seconds has its logging, not its compiling."""
    torch.manual_seed(seed)
    model = build_model(config.model, data.in_features, data.n_classes).to(device)
    optimizer = build_optimizer(config.optimizer, model)
    steps = lifecycle.plan(len(data.x_train), config.train)
    order = torch.Generator(device=device).manual_seed(seed)
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16")
    parts = engine.Parts(device, data, model, optimizer, None, None, scaler, config.train, steps, order, World())
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(Path(tmp))
        outcome = engine.train(
            parts, tracker=tracker, quiet=True, model=compiled(model, data, config, config.train.batch_size)
        )
        tracker.close()
    return outcome


def engine_epoch(
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    compile: bool = False,
) -> float:
    """Seconds for one training epoch of gdtrain's engine (a), logging included, compiling not."""
    outcome = engine_run(_dataset(images, labels, device), _config(batch_size, precision, compile), 0, device)
    return outcome.train_seconds * len(images) / outcome.samples  # scaled to one epoch of all `images`


def machine() -> str:
    """CPU model, core count, torch version and threads, for the README."""
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def stacked_run(data: Dataset, config: Config, runs: int, device: torch.device) -> tuple[float, int]:
    """Seconds and samples per run of `runs` runs of `config` (seeds 0, 1, ...) trained together by the
    stacked loop itself (gdtrain/stacked/loop.py's `train`), for its max_steps: its train_seconds,
    which leave out validation as engine.train's do. The runs keep no checkpoints and log nothing,
    as engine_run's."""
    configs = [
        config.model_copy(update={"experiment": config.experiment.model_copy(update={"seed": seed})})
        for seed in range(runs)
    ]
    n_train, n_val = len(data.x_train), len(data.x_val)
    rows = torch.arange(n_train + n_val, device=device)
    shared = GroupData(
        torch.cat([data.x_train, data.x_val]),
        torch.cat([data.y_train, data.y_val]),
        rows[:n_train].expand(runs, n_train),
        rows[n_train:].expand(runs, n_val),
        data.n_classes,
    )
    model, optimizer, schedules, steps = stacked.stack(configs, shared, device)
    with tempfile.TemporaryDirectory() as tmp:
        members = [
            stacked.Member(
                name=f"bench-{seed}",
                config=c,
                run_dir=Path(tmp),
                owned=None,  # no run folder to hold
                tracker=NullTracker(),
                saved=None,  # no checkpoints, as engine_run keeps none
                meta={},
                order=torch.Generator(device=device).manual_seed(seed),
                at=Progress(),
            )
            for seed, c in enumerate(configs)
        ]
        group = stacked.Group(members, shared, model, optimizer, schedules, steps, settings=config.train, device=device)
        stacked.train(group, Stop())
    return group.at.outcome.train_seconds, group.at.outcome.samples


def stacked_table(
    images: Tensor,
    labels: Tensor,
    batch_sizes: list[int],
    runs: list[int],
    steps: int,
    floor: float,
    device: torch.device,
    echo: Callable[[str], None],
    repeats: int = 3,
) -> None:
    """`echo` the stacked table: N runs trained together against N engine runs one after another.

    Each run takes `steps` steps: one epoch of the first steps × batch training images, not all of them
    (N = 64 would take minutes), so that each still pays its epoch's start (the permutation's gather) in
    proportion. Each side is timed `repeats` times, the best kept. `floor`: the matmul floor's s/sample.
    """
    full = _dataset(images, labels, device)
    echo("")
    echo(
        f"N runs trained together (one stacked model, one StackedOptimizer) and one after another (N engine "
        f"runs, as (a)): each run {steps} steps, one epoch of the first {steps} × batch images, not all of them; "
        f"best of {repeats}; run-samples/s:"
    )
    echo("")
    echo(
        "| N | batch | together | one after another | together vs one after another | together vs floor "
        "| one after another vs floor |"
    )
    echo("|---|---|---|---|---|---|---|")
    for batch_size in batch_sizes:
        config = _config(batch_size, max_steps=steps)
        k = steps * batch_size
        data = Dataset(full.x_train[:k], full.y_train[:k], full.x_val, full.y_val, full.n_classes)
        for n in runs:
            together, alone = [], []  # seconds, the two sides in turn: a change of load hits both
            for _ in range(repeats):
                seconds, samples = stacked_run(data, config, n, device)
                together.append(seconds)
                alone.append(sum(engine_run(data, config, seed, device).train_seconds for seed in range(n)))
            per = min(together) / (n * samples), min(alone) / (n * samples)  # seconds per run-sample
            echo(
                f"| {n} | {batch_size} | {1 / per[0]:,.0f} | {1 / per[1]:,.0f} | {per[1] / per[0]:.1f}x | "
                f"{per[0] / floor:.1f}x the floor | {per[1] / floor:.1f}x the floor |"
            )


def optimizer_step_table(runs: list[int], device: torch.device, echo: Callable[[str], None], repeats: int = 3) -> None:
    """`echo` the optimizer-step table: one Adam step of M members of the MNIST MLP (784-128-10) by the
    vectorised rule (stacked/rules.py), by the generic path (each member's own torch.optim.Adam over its
    rows, stacked/generic.py, forced here for Adam so the maths is the same) and by M solo optimizers
    over M separate models. Each timed over 10 steps after 2 warm-up steps, best of `repeats`."""
    cfg = validate({"optimizer": {"name": "adam", "lr": 1e-3}}, "bench").optimizer
    shapes = [(128, 784), (128,), (10, 128), (10,)]
    echo("")
    echo(
        "One Adam step for M members of the 784-128-10 MLP, ms per step (best of "
        f"{repeats}): the vectorised rule, the generic path (each member's own torch.optim over its rows) "
        "and M optimizers over M separate models:"
    )
    echo("")
    echo("| M | vectorised | generic | alone | generic vs vectorised | generic vs alone |")
    echo("|---|---|---|---|---|---|")

    def timed(step: Callable[[], None]) -> float:
        best = math.inf
        for _ in range(repeats):
            for _ in range(2):
                step()
            started = time.perf_counter()
            for _ in range(10):
                step()
            best = min(best, (time.perf_counter() - started) / 10)
        return best * 1e3

    for m in runs:
        stack = [torch.randn((m, *s), device=device).requires_grad_() for s in shapes]
        for p in stack:
            p.grad = torch.randn_like(p) * 1e-3
        rule = StackedOptimizer(stack, [cfg] * m)
        lr = rule.base_lr
        solos = Solos(stack, dict.fromkeys(range(m), cfg))
        frozen = torch.zeros(m, dtype=torch.bool)
        models = [[p[i].detach().clone().requires_grad_() for p in stack] for i in range(m)]
        for i, params in enumerate(models):
            for p, q in zip(params, stack):
                p.grad = q.grad[i].clone()
        alone = [build_over(cfg, params) for params in models]
        seconds = (
            timed(lambda rule=rule, lr=lr: rule.step(lr)),
            timed(lambda solos=solos, frozen=frozen: solos.step(frozen)),
            timed(lambda alone=alone: [opt.step() for opt in alone]),
        )
        echo(
            f"| {m} | {seconds[0]:.2f} | {seconds[1]:.2f} | {seconds[2]:.2f} | {seconds[1] / seconds[0]:.1f}x "
            f"| {seconds[1] / seconds[2]:.2f}x |"
        )


def run_bench(
    root: Path | None,
    batch_sizes: list[int],
    device: torch.device,
    echo: Callable[[str], None],
    samples: int | None = None,
    variants: bool = True,
    runs: list[int] | None = None,
    steps: int = 50,
) -> None:
    """Measure every row and `echo` the benchmark as markdown: machine, data, then the tables; `runs`: the
    stacked table's numbers of runs (None: no stacked table), each run `steps` steps."""
    images, labels, source = mnist_or_random(root)
    images, labels = images[:samples], labels[:samples]  # None: the whole training set
    gflops = matmul_gflops(device)
    params = 784 * 128 + 128 + 128 * 10 + 10  # the 784-128-10 MLP
    n = len(images)
    floor = 6 * params * n / (gflops * 1e9)  # forward 2, backward 4 FLOPs per parameter per sample
    echo(f"machine: {machine()}; device {device}")
    echo(f"data: {source}; one epoch = {n:,} samples; matmul {gflops:.0f} GFLOP/s, so the floor is {floor:.3f} s/epoch")
    echo("")
    echo(
        "| batch | gdtrain s/epoch (samples/s) | (b) DataLoader loop | (c) lean loop | gdtrain vs (b) "
        "| gdtrain vs floor |"
    )
    echo("|---|---|---|---|---|---|")
    for batch_size in batch_sizes:
        ours = engine_epoch(images, labels, batch_size, device)
        plain = plain_loop_epoch(images, labels, batch_size)
        lean = lean_loop_epoch(images, labels, batch_size)
        cell = lambda seconds: f"{seconds:.2f} ({n / seconds:,.0f})"  # noqa: E731
        echo(
            f"| {batch_size} | {cell(ours)} | {cell(plain)} | {cell(lean)} | {plain / ours:.1f}x faster "
            f"| {ours / floor:.1f}x the floor |"
        )
    if variants:
        echo("")
        echo("| batch | gdtrain fp32 s/epoch | bf16 autocast | torch.compile (fp32) |")
        echo("|---|---|---|---|")
        for batch_size in batch_sizes:
            fp32 = engine_epoch(images, labels, batch_size, device)
            bf16 = engine_epoch(images, labels, batch_size, device, precision="bf16")
            started = time.perf_counter()
            fast = engine_epoch(images, labels, batch_size, device, compile=True)
            whole = time.perf_counter() - started
            echo(
                f"| {batch_size} | {fp32:.2f} | {bf16:.2f} ({fp32 / bf16:.2f}x) | {fast:.2f} ({fp32 / fast:.2f}x; "
                f"{whole:.0f} s with compiling) |"
            )
    if runs:
        stacked_table(images, labels, batch_sizes, runs, steps, floor / n, device, echo)
        optimizer_step_table(runs, device, echo)
