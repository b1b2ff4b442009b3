"""Reproducible runs: every RNG seeded, and (`train.deterministic`) deterministic kernels.

Seeding (seed_everything) fixes the random numbers; set_determinism fixes the arithmetic. On the CPU
the kernels gdtrain uses are already deterministic, so it changes nothing there; on a GPU it
avoids atomic-add kernels and cuDNN's autotuner. PyTorch's notes: docs.pytorch.org/docs/stable/notes/randomness.html
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_determinism(on: bool) -> None:
    """Require deterministic algorithms (an op without one raises) and fix cuDNN's choice; or release both."""
    if on:
        # cuBLAS reuses workspace across streams unless told a fixed size; read when CUDA first starts,
        # so this must run before anything touches the GPU. An explicit user setting wins.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=False)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: a run-to-run difference


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches: Python, NumPy, torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
