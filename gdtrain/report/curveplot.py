"""`gdtrain compare --plot`: the training loss and the compared metric of every row, overlaid.

Colours follow the optimizer: one hue per optimizer name, a shade per configuration within it,
lighter to darker by lr (plotting.shades); the legend gives each row's label (names.py), lr included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdtrain.core import metrics
from gdtrain.core.plotting import draw_band, figure, save, shades
from gdtrain.report.compare import Row


def row_colours(rows: list[Row]) -> list[Any]:
    """Each row's colour: its optimizer's hue, shaded by lr, then label."""
    configs = [row.runs[0].config for row in rows]
    lrs = [lr if isinstance(lr := c.get("optimizer.lr"), (int, float)) else 0.0 for c in configs]
    return shades([str(c.get("optimizer.name", "")) for c in configs], [(lr, row.label) for lr, row in zip(lrs, rows)])


def plot(rows: list[Row], metric: str, title: str, path: Path) -> None:
    """Two panels, one colour per row: loss/train per step, the metric per epoch; seeds as mean and band."""
    from matplotlib.ticker import MaxNLocator

    fig = figure(12, 5 + 0.2 * ((len(rows) + 1) // 2))
    loss_ax, metric_ax = fig.subplots(1, 2)
    per_epoch = metric != "loss/train"
    colours = row_colours(rows)
    for row, colour in zip(rows, colours):
        finals = [f.final for f in row.figures if f.final is not None]
        label = row.label + (f" ({row.status})" if row.status != "finished" else "")
        label += f" ({row.diverged}/{len(row.runs)} diverged)" if row.status == "finished" and row.diverged else ""
        label += f": {sum(finals) / len(finals):.4g}" if finals else ""
        label += f" ({len(row.runs)} seeds)" if len(row.runs) > 1 else ""
        draw_band(loss_ax, [[(s, v) for s, _, v in run.curve("loss/train")] for run in row.runs], colour, label)
        points = [[(e if per_epoch else s, v) for s, e, v in run.curve(metric)] for run in row.runs]
        short = per_epoch and max((len(p) for p in points), default=0) <= 30
        draw_band(metric_ax, points, colour, label, "o" if short else None)
    loss_ax.set(xlabel="optimizer step", ylabel="training loss (mean over log_every steps)", title="loss/train")
    loss_ax.set_yscale("log")
    metric_ax.set(
        xlabel="epoch" if per_epoch else "optimizer step",
        ylabel=metric,
        title=f"{metric} ({metrics.direction(metric)} is better)",
    )
    if per_epoch:
        metric_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not metrics.higher_is_better(metric):
        metric_ax.set_yscale("log")
    for ax in (loss_ax, metric_ax):
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = metric_ax.get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=2 if len(rows) > 3 else 1,
        fontsize="small",
        title=f"final {metric} (mean over seeds; band: lowest to highest seed), best first",
    )
    fig.suptitle(title)
    save(fig, path, "choose another --plot path")
