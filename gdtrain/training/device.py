"""`train.device`: where a run trains; CUDA when present unless told otherwise."""

from __future__ import annotations

import torch

from gdtrain.core.errors import UserError


def resolve_device(setting: str) -> torch.device:
    """auto → CUDA when present, else CPU; asking for CUDA without a GPU is a user error."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda requested but no CUDA GPU is available; use --device auto or cpu")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
