"""Losses by name, each `(outputs, targets) -> mean loss`, and how each one counts a hit."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor


def mse(out: Tensor, y: Tensor) -> Tensor:
    """Mean squared error; out and y: (B, T)."""
    return F.mse_loss(out, y)


def cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    """Softmax cross-entropy; out: (B, C) logits, y: (B,) class indices."""
    return F.cross_entropy(out, y)


def bce(out: Tensor, y: Tensor) -> Tensor:
    """Binary cross-entropy on logits; out: (B, 1), y: (B,) in {0, 1}."""
    return F.binary_cross_entropy_with_logits(out.squeeze(1), y.to(out.dtype))


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"mse": mse, "cross_entropy": cross_entropy, "bce": bce}


def count_correct(loss: str, out: Tensor, y: Tensor) -> Tensor:
    """Number of correct predictions in a batch, as a 0-d tensor (no host sync)."""
    predicted = (out.squeeze(1) > 0).long() if loss == "bce" else out.argmax(1)
    return (predicted == y).sum()
