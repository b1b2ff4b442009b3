"""Test functions for drawing optimizer paths: formula, known minimum and a window to plot them in.

Each `f` takes x of shape (D, ...) and sums over the first axis, so the same code scores one point
(D,) → () in the descent loop and a grid (D, H, W) → (H, W) for the contour plot. All minima are
f = 0 with a zero gradient (tests/test_descent.py checks both).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Objective:
    """One test function and how to picture it."""

    title: str  # for the figure title
    formulas: dict[int, str]  # matplotlib mathtext per dimension the function is defined in
    f: Callable[[Tensor], Tensor]  # (D, ...) → (...)
    minimum: tuple[float, float]  # where f = 0; a 1-D function uses the first coordinate
    window: tuple[float, float, float, float]  # x_lo, x_hi, y_lo, y_hi: the plot before the path widens it
    log_levels: bool  # contour levels spaced in log f: the valley floor of Rosenbrock and Beale is flat
    levels: int = 22  # contour lines; Rastrigin's bumps need few to stay readable


def _quadratic(x: Tensor) -> Tensor:
    return (x**2).sum(0)


def _ill_conditioned(x: Tensor) -> Tensor:
    return x[0] ** 2 + 10 * x[1] ** 2  # Hessian diag(2, 20): condition number 10


def _rosenbrock(x: Tensor) -> Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def _rastrigin(x: Tensor) -> Tensor:
    return 10 * len(x) + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(0)


def _beale(x: Tensor) -> Tensor:
    a, b = x[0], x[1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


FUNCTIONS: dict[str, Objective] = {
    "quadratic": Objective(
        "Quadratic",
        {1: r"$f(x) = x^2$", 2: r"$f(x, y) = x^2 + y^2$"},
        _quadratic,
        (0.0, 0.0),
        (-3.0, 3.0, -3.0, 3.0),
        log_levels=False,
    ),
    "ill_conditioned": Objective(
        "Ill-conditioned quadratic",
        {2: r"$f(x, y) = x^2 + 10\,y^2$"},
        _ill_conditioned,
        (0.0, 0.0),
        (-10.0, 10.0, -4.0, 4.0),
        log_levels=False,
    ),
    "rosenbrock": Objective(
        "Rosenbrock",
        {2: r"$f(x, y) = (1 - x)^2 + 100\,(y - x^2)^2$"},
        _rosenbrock,
        (1.0, 1.0),
        (-2.0, 2.0, -1.0, 3.0),
        log_levels=True,
    ),
    "rastrigin": Objective(
        "Rastrigin",
        {2: r"$f(x, y) = 20 + x^2 + y^2 - 10\cos 2\pi x - 10\cos 2\pi y$"},
        _rastrigin,
        (0.0, 0.0),
        (-3.0, 3.0, -3.0, 3.0),
        log_levels=False,
        levels=9,
    ),
    "beale": Objective(
        "Beale",
        {2: r"$f(x, y) = (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2$"},
        _beale,
        (3.0, 0.5),
        (-4.5, 4.5, -4.5, 4.5),
        log_levels=True,
    ),
}
