"""Which way a metric improves, decided once for compare, a study's choice and verdict, and every figure.

A run logs `loss/<split>`, `accuracy/<split>`, `lr`, `grad_norm` and, on the function problem, its
coordinates. Losses go down and accuracies go up. The other tags have no better direction; compare
ranks them like an accuracy, higher first, as it always has, and a study accepts only losses and
accuracies (study/spec.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Pick = Callable[..., Any]  # the builtin max or min: (values, key=...) -> the value picked


def higher_is_better(metric: str) -> bool:
    """Whether a higher value of `metric` is the better one: every tag but a loss."""
    return not metric.startswith("loss")


def direction(metric: str) -> str:
    """ "higher" or "lower", as "{metric} ({direction} is better)" reads."""
    return "higher" if higher_is_better(metric) else "lower"


def best_of(metric: str) -> Pick:
    """max or min: the one that picks the best value of `metric` (the first among equals)."""
    return max if higher_is_better(metric) else min


def worst_of(metric: str) -> Pick:
    """min or max: the one that picks the worst value of `metric` (the first among equals)."""
    return min if higher_is_better(metric) else max


def reaches(metric: str, value: float, target: float) -> bool:
    """Whether `value` has reached `target`: at or above it when higher is better, at or below it otherwise."""
    return value >= target if higher_is_better(metric) else value <= target


def bounds(metric: str) -> tuple[float, float]:
    """The values `metric` can take: an accuracy lies in [0, 1], a loss is not negative (the losses
    gdtrain logs: mse, cross-entropy, bce); an interval of a mean is clipped to them."""
    if metric.startswith("accuracy"):
        return (0.0, 1.0)
    return (0.0, math.inf) if metric.startswith("loss") else (-math.inf, math.inf)


def improves(metric: str, value: float, best: float | None) -> bool:
    """Whether `value` is strictly better than `best` (None: nothing yet, so any value is)."""
    if best is None:
        return True
    return value > best if higher_is_better(metric) else value < best
