"""Optimizers from torch.optim and schedules from torch.optim.lr_scheduler, by config name."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import lr_scheduler

from gdtrain.core.config import OptimizerConfig, ScheduleConfig

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}
IMPLEMENTATIONS = {"for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
# Device types with a fused kernel (one kernel for all parameters, the fastest) for each optimizer;
# torch has none for RMSprop, and Adagrad's is CPU-only. Measured on this 2-core CPU, MNIST MLP at
# batch 32: fused Adam 24.7k samples/s, foreach 20.0k, for_loop 19.1k.
FUSED = {"sgd": {"cpu", "cuda"}, "adam": {"cpu", "cuda"}, "adamw": {"cpu", "cuda"}, "adagrad": {"cpu"}}


def implementation(cfg: OptimizerConfig, device: torch.device) -> str:
    """The configured kernel, or for `auto` the fastest torch has for this optimizer and device."""
    if cfg.implementation != "auto":
        return cfg.implementation
    return "fused" if device.type in FUSED.get(cfg.name, ()) else "foreach"


def build_optimizer(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    """torch.optim.<name>(model.parameters(), **the config's own torch arguments)."""
    kwargs = cfg.model_dump(exclude={"name", "implementation"})
    kernel = implementation(cfg, next(model.parameters()).device)
    return OPTIMIZERS[cfg.name](model.parameters(), **kwargs, **IMPLEMENTATIONS[kernel])


def build_schedule(
    cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, epochs: int
) -> lr_scheduler.LRScheduler | None:
    """The per-epoch scheduler (None for constant); `epochs` is the run's length for cosine."""
    if cfg.name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "exponential":
        return lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
    if cfg.name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.t_max or epochs, eta_min=cfg.eta_min)
    if cfg.name == "plateau":
        return lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=cfg.factor,
            patience=cfg.patience,
            threshold=cfg.threshold,
            min_lr=cfg.min_lr,
        )
    return None


def build_warmup(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer) -> lr_scheduler.LinearLR | None:
    """Linear warm-up over `warmup_steps` optimizer steps, chained onto the epoch schedule."""
    if cfg.warmup_steps == 0:
        return None
    return lr_scheduler.LinearLR(optimizer, start_factor=cfg.warmup_start_factor, total_iters=cfg.warmup_steps)
