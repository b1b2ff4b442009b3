"""A study's four figures (matplotlib, the optional `plot` extra: gdtrain/core/plotting.py).

Each optimizer has its colour (its optimizer's hue, as in every picture gdtrain draws), marker and
line style (plotting.label_styles), so lines drawn over each other stay apart; the reruns are small
multiples, one column per optimizer with the others' means in grey behind. Diverged trials are
drawn as crosses at the bottom of the lr plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdtrain.core import metrics
from gdtrain.core.folders import read_run
from gdtrain.core.plotting import draw_band, figure, label_styles, save
from gdtrain.study.verdict import StudyResults


def styles(results: StudyResults) -> dict[str, dict[str, Any]]:
    """Each optimizer's colour, marker and line style: by its optimizer's name and its label."""
    families = {}
    for label, e in results.optimizers.items():
        trials = [t for tuning in e.tunings for t in tuning.trials]
        families[label] = str(trials[0].optimizer.get("name", label)) if trials else label
    return label_styles(families)


def draw_all(folder: Path, results: StudyResults) -> list[str]:
    """lr_sensitivity.png, budget_curve.png, reruns.png and final_per_seed.png; their names."""
    colours = styles(results)
    drawn = []
    for name, draw in (
        ("lr_sensitivity.png", _lr),
        ("budget_curve.png", _budget),
        ("reruns.png", _reruns),
        ("final_per_seed.png", _per_seed),
    ):
        save(draw(results, colours), folder / name, None)  # a failure is the report's one line (report.write)
        drawn.append(name)
    return drawn


def _lr(results: StudyResults, colours: dict[str, Any]) -> Any:
    fig = figure(7, 4.2)
    ax = fig.subplots()
    select = results.setup.select
    trials = [t for e in results.optimizers.values() for t in e.trials]
    values = [t.select_value for t in trials if t.select_value is not None]
    floor = metrics.worst_of(select)(values) if values else 0.0
    for label, e in results.optimizers.items():
        trials = sorted(e.trials, key=lambda t: t.lr)
        ok = [(t.lr, t.select_value) for t in trials if t.select_value is not None]
        bad = [t.lr for t in trials if t.select_value is None]
        if ok:
            ax.plot(*zip(*ok), ms=4, lw=1.4, label=label, **colours[label])
        if bad:
            ax.scatter(
                bad,
                [floor] * len(bad),
                marker="x",
                s=40,
                color=colours[label]["color"],
                label=f"{label}: diverged" if not ok else None,
            )
        chosen = [t for t in trials if t.name in e.chosen_trials]
        if chosen:
            at = [(t.lr, t.select_value) for t in chosen]
            ax.scatter(*zip(*at), s=120, facecolors="none", edgecolors=colours[label]["color"], lw=1.5)
    ax.set_xscale("log")
    ax.set(
        xlabel="lr (log scale)",
        ylabel=f"{select} (final)",
        title="lr sensitivity: every tuning trial (circled: chosen; x: diverged)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig


def _budget(results: StudyResults, colours: dict[str, Any]) -> Any:
    fig = figure(7, 4.2)
    ax = fig.subplots()
    for label, e in results.optimizers.items():
        curve = e.budget_curve
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, ms=3, lw=1.6, label=label, **colours[label])
    ax.set(
        xlabel="tuning trials k",
        ylabel=f"expected best {results.setup.select}",
        title="Budget curve: expected best after k trials (Dodge et al. 2019)",
    )
    ax.xaxis.get_major_locator().set_params(integer=True)  # whole numbers of trials
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig


def _reruns(results: StudyResults, colours: dict[str, Any]) -> Any:
    """Small multiples: a column per optimizer, its reruns' training loss above and the select metric
    below (mean and min-max band), with every other optimizer's mean in grey behind it."""
    select = results.setup.select
    labels = list(results.optimizers)
    curves: dict[tuple[str, str], list[list[tuple[float, float]]]] = {}
    for label, e in results.optimizers.items():
        runs = [read_run(Path(p)) for p in e.reruns.run_dirs if p is not None]
        for tag, x_of in (("loss/train", 0), (select, 1)):
            curves[label, tag] = [c for run in runs if (c := [(point[x_of], point[2]) for point in run.curve(tag)])]
    fig = figure(1.2 + 2.4 * len(labels), 5.6)
    grid = fig.subplots(2, len(labels), sharex="row", sharey="row", squeeze=False)
    for column, label in enumerate(labels):
        for row, tag in enumerate(("loss/train", select)):
            ax = grid[row][column]
            for other in labels:
                if other != label and curves[other, tag]:
                    draw_band(ax, curves[other, tag], "0.82", "", band_too=False)
            draw_band(ax, curves[label, tag], colours[label]["color"], f"n={len(curves[label, tag])}")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(label, color=colours[label]["color"], fontsize=10, fontweight="bold")
                ax.set_yscale("log")
            if column == 0:
                ax.set_ylabel(tag)
            ax.set_xlabel("step" if row == 0 else "epoch")
        grid[1][column].xaxis.get_major_locator().set_params(integer=True)  # whole epochs
    fig.suptitle(f"Reruns: training loss and {select} (mean, min-max band; grey: the other optimizers' means)")
    return fig


def _per_seed(results: StudyResults, colours: dict[str, Any]) -> Any:
    order = results.ranked
    fig = figure(max(5, 1.1 * len(order) + 2), 4.2)
    ax = fig.subplots()
    for i, label in enumerate(order):
        r = results.optimizers[label].reruns
        values = r.finished  # a diverged rerun has no value to draw: the tick label counts them
        n = len(values)
        step = min(0.06, 0.5 / max(n, 1))  # spread equal values apart, deterministically, within the column
        jitter = [(k - (n - 1) / 2) * step for k in range(n)]
        ax.scatter([i + j for j in jitter], values, color=colours[label]["color"], s=22, zorder=3)
        if (s := r.summary) is not None:
            bar = ax.errorbar(
                [i + 0.3],
                [s.mean],
                yerr=[[s.mean - s.ci[0]], [s.ci[1] - s.mean]],
                fmt="D",
                color=colours[label]["color"],
                ms=5,
                capsize=4,
            )
            if not s.reliable:  # dashed: its coverage is not measured to hold (the tick label says why)
                bar[2][0].set_linestyle("--")
    summaries = [results.optimizers[label].reruns.summary for label in order]
    reasons = {s.unreliable for s in summaries if s is not None}
    every = len(reasons) == 1 and None not in reasons  # one reason for all: said once, in the title
    ticks = []
    for label, s in zip(order, summaries):
        e = results.optimizers[label]
        lost = f", {e.reruns.diverged} diverged" if e.reruns.diverged else ""
        unsure = "\nunreliable CI" if s is not None and not s.reliable and not every else ""
        ticks.append(f"{label}\n(group {e.group}{lost}){unsure}")
    ax.set_xticks(range(len(order)), ticks, fontsize=8)
    report = results.setup.report
    over = " over the repeats" if results.setup.repeats >= 2 else ""
    title = f"{report} per rerun ({metrics.direction(report)} is better); diamond: mean, 95% CI{over}"
    if every:
        title += f"\n(dashed: every CI unreliable, {next(iter(reasons))})"
    ax.set(ylabel=report, title=title)
    ax.grid(alpha=0.3, axis="y")
    return fig
