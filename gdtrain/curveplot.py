"""`gdtrain compare --plot`: the training loss and the compared metric of every row, overlaid.

matplotlib is an optional extra (`pip install 'gdtrain[plot]'`), imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdtrain.compare import Row, lower_is_better
from gdtrain.errors import UserError


def require_matplotlib() -> None:
    """Raise a UserError naming the extra to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--plot needs matplotlib, which is not installed; pip install 'gdtrain[plot]' "
                        "(or matplotlib), or leave out --plot") from None


def _band(curves: list[list[tuple[float, float]]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """x, mean, min and max over the curves, at the x values every curve has."""
    shared = sorted(set.intersection(*(set(x for x, _ in c) for c in curves)))
    at = [dict(c) for c in curves]
    values = [[a[x] for a in at] for x in shared]
    return shared, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def _draw(ax: Any, curves: list[list[tuple[float, float]]], colour: str, label: str, marker: str | None) -> None:
    """One line for one run; for seeds, their mean with a band from the lowest to the highest."""
    curves = [c for c in curves if c]
    if not curves:
        return
    x, mean, low, high = _band(curves)
    ax.plot(x, mean, color=colour, lw=1.6, marker=marker, markersize=3, label=label)
    if len(curves) > 1:
        ax.fill_between(x, low, high, color=colour, alpha=0.15, lw=0)


def plot(rows: list[Row], metric: str, title: str, path: Path) -> None:
    """Two panels, one colour per row: loss/train per step, the metric per epoch; seeds as mean and band."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(12, 5 + 0.2 * ((len(rows) + 1) // 2)), layout="constrained")
    loss_ax, metric_ax = figure.subplots(1, 2)
    per_epoch = metric != "loss/train"
    for i, row in enumerate(rows):
        colour = f"C{i % 10}"
        finals = [f.final for f in row.figures if f.final is not None]
        label = row.label + (f" ({row.status})" if row.status != "finished" else "")
        label += f": {sum(finals) / len(finals):.4g}" if finals else ""
        label += f" ({len(row.runs)} seeds)" if len(row.runs) > 1 else ""
        _draw(loss_ax, [[(s, v) for s, _, v in run.curve("loss/train")] for run in row.runs], colour, label, None)
        points = [[(e if per_epoch else s, v) for s, e, v in run.curve(metric)] for run in row.runs]
        short = per_epoch and max((len(p) for p in points), default=0) <= 30
        _draw(metric_ax, points, colour, label, "o" if short else None)
    loss_ax.set(xlabel="optimizer step", ylabel="training loss (mean over log_every steps)", title="loss/train")
    loss_ax.set_yscale("log")
    metric_ax.set(xlabel="epoch" if per_epoch else "optimizer step", ylabel=metric,
                  title=f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)")
    if per_epoch:
        metric_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if lower_is_better(metric):
        metric_ax.set_yscale("log")
    for ax in (loss_ax, metric_ax):
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = metric_ax.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=2 if len(rows) > 3 else 1, fontsize="small",
                  title=f"final {metric} (mean over seeds; band: lowest to highest seed), best first")
    figure.suptitle(title)
    try:
        figure.savefig(path, dpi=110)
    except OSError as err:
        raise UserError(f"{path}: cannot write the plot ({err.strerror or err}); choose another --plot path") from None
