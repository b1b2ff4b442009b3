"""`gdtrain bench`: seconds per epoch of the seeds' MNIST MLP, four ways, in one process.

(a) gdtrain's engine (data on the device, one permutation per epoch, slices per step);
(b) a plain hand-written loop over a torch DataLoader of per-sample tensors, the seeds' style
    (torchvision's ToTensor + Normalize per sample, default collate, `loss.item()` every step);
(c) the same hand-written loop over tensor slices instead of a DataLoader (a lean plain loop:
    torch.optim's default kernel, `loss.item()` every step), to show what the data path alone buys;
(d) the matmul floor: 6 × parameters × samples over the GFLOP/s of a large matmul here.
"""

from __future__ import annotations

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

from gdtrain import engine, idx
from gdtrain.config import validate
from gdtrain.datasets import Dataset
from gdtrain.distributed import World
from gdtrain.errors import UserError
from gdtrain.models import build_model
from gdtrain.optimizers import build_optimizer
from gdtrain.recipe import compiled
from gdtrain.tracker import Tracker


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
    """The seeds' dataset: torchvision's MNIST with ToTensor and Normalize((0.5,), (0.5,)).

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


def engine_epoch(images: Tensor, labels: Tensor, batch_size: int, device: torch.device, precision: str = "fp32",
                 compile: bool = False) -> float:
    """Seconds for one training epoch of gdtrain's engine (a), logging included, compiling not."""
    config = validate({
        "data": {"name": "mnist", "normalize": "half"}, "model": {"name": "mlp", "hidden_sizes": [128]},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": batch_size, "loss": "cross_entropy", "log_every": 100,
                  "precision": precision, "compile": compile},
    }, "bench")
    torch.manual_seed(0)
    x = images.reshape(len(images), -1).float().div(255).sub(0.5).div(0.5)
    n_val = min(1000, len(x) // 10)  # validation runs once, after the timed epoch
    data = Dataset(x[:-n_val], labels[:-n_val], x[-n_val:], labels[-n_val:], 10).to(device)
    model = build_model(config.model, 784, 10).to(device)
    optimizer = build_optimizer(config.optimizer, model)
    steps = engine.plan(len(data.x_train), config.train)
    order = torch.Generator(device=device).manual_seed(0)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    parts = engine.Parts(device, data, model, optimizer, None, None, scaler, config.train, steps, order, World())
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(Path(tmp))
        outcome = engine.train(parts, tracker=tracker, quiet=True, model=compiled(model, data, config, batch_size))
        tracker.close()
    return outcome.train_seconds * len(images) / outcome.samples  # scaled to one epoch of all `images`


def machine() -> str:
    """CPU model, core count, torch version and threads, for the README."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def run_bench(root: Path | None, batch_sizes: list[int], device: torch.device, echo: Callable[[str], None],
              samples: int | None = None, variants: bool = True) -> None:
    """Measure every row and `echo` the benchmark as markdown: machine, data, then the table."""
    images, labels, source = mnist_or_random(root)
    images, labels = images[:samples], labels[:samples]  # None: the whole training set
    gflops = matmul_gflops(device)
    params = 784 * 128 + 128 + 128 * 10 + 10  # the 784-128-10 MLP
    n = len(images)
    floor = 6 * params * n / (gflops * 1e9)  # forward 2, backward 4 FLOPs per parameter per sample
    echo(f"machine: {machine()}; device {device}")
    echo(f"data: {source}; one epoch = {n:,} samples; matmul {gflops:.0f} GFLOP/s, so the floor is "
         f"{floor:.3f} s/epoch")
    echo("")
    echo("| batch | gdtrain s/epoch (samples/s) | (b) DataLoader loop | (c) lean loop | gdtrain vs (b) "
         "| gdtrain vs floor |")
    echo("|---|---|---|---|---|---|")
    for batch_size in batch_sizes:
        ours = engine_epoch(images, labels, batch_size, device)
        plain = plain_loop_epoch(images, labels, batch_size)
        lean = lean_loop_epoch(images, labels, batch_size)
        cell = lambda seconds: f"{seconds:.2f} ({n / seconds:,.0f})"  # noqa: E731
        echo(f"| {batch_size} | {cell(ours)} | {cell(plain)} | {cell(lean)} | {plain / ours:.1f}x faster "
             f"| {ours / floor:.1f}x the floor |")
    if not variants:
        return
    echo("")
    echo("| batch | gdtrain fp32 s/epoch | bf16 autocast | torch.compile (fp32) |")
    echo("|---|---|---|---|")
    for batch_size in batch_sizes:
        fp32 = engine_epoch(images, labels, batch_size, device)
        bf16 = engine_epoch(images, labels, batch_size, device, precision="bf16")
        started = time.perf_counter()
        fast = engine_epoch(images, labels, batch_size, device, compile=True)
        whole = time.perf_counter() - started
        echo(f"| {batch_size} | {fp32:.2f} | {bf16:.2f} ({fp32 / bf16:.2f}x) | {fast:.2f} ({fp32 / fast:.2f}x; "
             f"{whole:.0f} s with compiling) |")
