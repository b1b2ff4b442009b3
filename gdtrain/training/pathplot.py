"""Pictures of optimizer paths: each path over the function's contour (its curve, in 1-D), beside f per step.

matplotlib is the optional `plot` extra (gdtrain/core/plotting.py); descent.py checks for it before it
creates a run folder, then renders the figure with plotting.render.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gdtrain.components.functions import Objective
from gdtrain.core import plotting

GRID = 300  # contour samples per axis
MARKED_STEPS = 60  # paths with at most this many steps show a dot per step
WIDEST = 3.0  # the window widens to show the path, up to this many times its size (divergence leaves it)


@dataclass(frozen=True)
class Trace:
    """One optimizer's path, as drawn: label, the points and f at each of them."""

    label: str  # legend text, e.g. "adam lr 0.1"
    points: Tensor  # (steps + 1, D) float64, the start first
    values: Tensor  # (steps + 1,) f(points)
    note: str = ""  # e.g. "diverged at step 7"
    family: str = ""  # the optimizer's name: its colour in every picture (plotting.label_styles)


def _window(objective: Objective, traces: list[Trace]) -> tuple[Tensor, Tensor]:
    """(lo, hi) per axis: the function's window, widened around its centre to show the start and the
    paths that did not diverge, by at most WIDEST times (a path that runs far away leaves the frame)."""
    x_lo, x_hi, y_lo, y_hi = objective.window
    dim = traces[0].points.shape[1]
    lo, hi = torch.tensor([x_lo, y_lo][:dim]), torch.tensor([x_hi, y_hi][:dim])
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    cap = torch.maximum(WIDEST * half, (traces[0].points[0] - centre).abs())
    for trace in traces:
        points = trace.points if not trace.note else trace.points[:1]
        reach = (points - centre).abs().amax(0)  # (D,)
        half = torch.maximum(half, 1.08 * torch.minimum(reach, cap))
    return centre - half, centre + half


def _levels(objective: Objective, z: Tensor) -> np.ndarray:
    """Contour levels: log-spaced for flat-floored valleys, else evenly spaced rings for a quadratic."""
    top = float(z.max())
    if objective.log_levels:
        return np.geomspace(max(top * 1e-7, 1e-3), top, objective.levels)
    return np.linspace(0.0, top**0.5, objective.levels + 1)[1:] ** 2


def _draw_landscape(ax: Any, objective: Objective, lo: Tensor, hi: Tensor) -> None:
    """The function's curve (1-D) or filled contour (2-D), and its minimum."""
    from matplotlib.colors import LogNorm

    star = {"marker": "*", "ms": 18, "color": "gold", "mec": "black", "ls": "none", "zorder": 2, "label": "minimum"}
    if len(lo) == 1:
        grid = torch.linspace(float(lo[0]), float(hi[0]), GRID, dtype=torch.float64)
        curve = objective.f(grid[None])  # (GRID,)
        ax.plot(grid, curve, color="0.3", lw=1.5, zorder=1)
        ax.plot(objective.minimum[0], 0.0, **star)
        top = float(curve.max())
        ax.set(xlabel="x", ylabel="f(x)", xlim=(float(lo[0]), float(hi[0])), ylim=(-0.05 * top, 1.05 * top))
        return
    xs = torch.linspace(float(lo[0]), float(hi[0]), GRID, dtype=torch.float64)
    ys = torch.linspace(float(lo[1]), float(hi[1]), GRID, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")  # (H, W) each, y down the rows
    z = objective.f(torch.stack([gx, gy]))  # (H, W)
    levels = _levels(objective, z)
    norm = LogNorm(levels[0], levels[-1]) if objective.log_levels else None
    ax.contourf(gx, gy, z, levels=levels, cmap="Greys", norm=norm, alpha=0.35, extend="both", zorder=0)
    ax.contour(gx, gy, z, levels=levels, colors="0.5", linewidths=0.5, norm=norm, zorder=1)
    ax.plot(*objective.minimum, **star)
    ax.set(xlabel="x", ylabel="y", xlim=(float(lo[0]), float(hi[0])), ylim=(float(lo[1]), float(hi[1])))
    ax.set_aspect("equal", adjustable="box")


def draw(objective: Objective, traces: list[Trace], subtitle: str) -> Any:
    """A matplotlib Figure: paths over the landscape on the left, f(x) per step (log scale) on the right."""
    from matplotlib import patheffects
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    dim = traces[0].points.shape[1]
    figure = Figure(figsize=(13, 6.6))  # fixed margins: constrained layout would double the drawing time
    figure.subplots_adjust(left=0.06, right=0.98, top=0.85, bottom=0.21, wspace=0.18)
    left, right = figure.subplots(1, 2, width_ratios=[1.25, 1])
    lo, hi = _window(objective, traces)
    _draw_landscape(left, objective, lo, hi)
    # a white edge makes paths stand out on a contour; on a 1-D curve it would hide the curve
    halo = [patheffects.withStroke(linewidth=3.5, foreground="white", alpha=0.8)] if dim == 2 else []
    looks = plotting.label_styles({trace.label: trace.family or trace.label for trace in traces})
    for trace in traces:
        style = {
            "color": looks[trace.label]["color"],
            "ls": looks[trace.label]["ls"],
            "lw": 1.8,
            "ms": 3.5,
            "marker": looks[trace.label]["marker"] if len(trace.points) <= MARKED_STEPS + 1 else None,
        }
        # a 1-D path is drawn on the curve: (x_k, f(x_k))
        xs, ys = trace.points[:, 0], (trace.values if dim == 1 else trace.points[:, 1])
        left.plot(xs, ys, zorder=3, path_effects=halo, **style)
        left.plot(xs[-1], ys[-1], "s", color=style["color"], mec="black", ms=7, zorder=4)
        note = f", {trace.note}" if trace.note else ""
        label = f"{trace.label}: f = {float(trace.values[-1]):.3g}{note}"
        right.plot(torch.arange(len(trace.values)), trace.values.clamp(1e-200, 1e200), label=label, **style)
    start = (float(traces[0].points[0, 0]), float(traces[0].values[0] if dim == 1 else traces[0].points[0, 1]))
    left.plot(*start, "o", ms=11, color="black", mec="white", mew=1.5, ls="none", zorder=6, label="start")
    left.plot([], [], "s", color="0.7", mec="black", ms=7, ls="none", label="end of a path")
    left.set_title("path", fontsize=11)
    right.set_yscale("log")
    if any(trace.note for trace in traces):  # a diverged curve leaves the top; the others stay readable
        finished = [float(trace.values.max()) for trace in traces if not trace.note]
        lowest = min(float(trace.values.clamp_min(1e-200).min()) for trace in traces)
        right.set_ylim(lowest / 10, 1e3 * max(finished or [float(traces[0].values[0])]))
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set(xlabel="step", ylabel="f(x)")
    right.set_title("f(x) per step (log scale)", fontsize=11)
    right.grid(True, which="major", alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    figure.legend(
        more_handles + handles,
        more_labels + labels,
        loc="lower center",
        fontsize=10,
        frameon=False,
        ncols=min(len(traces) + 3, 4),
    )
    figure.suptitle(f"{objective.title}: {objective.formulas[dim]}\n{subtitle}", fontsize=12)
    return figure
