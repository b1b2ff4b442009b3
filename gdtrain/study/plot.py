"""A study's four figures (matplotlib, the optional `plot` extra: gdtrain/core/plotting.py).

One colour per optimizer in every figure, in the order of the study file, so a reader matches
them at a glance; diverged trials are drawn as crosses at the bottom of the lr plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdtrain.core import metrics
from gdtrain.core.folders import read_run
from gdtrain.core.plotting import colour, draw_band, figure, save
from gdtrain.study.verdict import StudyResults


def _colours(results: StudyResults) -> dict[str, Any]:
    return {label: colour(i) for i, label in enumerate(results.optimizers)}


def draw_all(folder: Path, results: StudyResults) -> list[str]:
    """lr_sensitivity.png, budget_curve.png, reruns.png and final_per_seed.png; their names."""
    colours = _colours(results)
    drawn = []
    for name, draw in (
        ("lr_sensitivity.png", _lr),
        ("budget_curve.png", _budget),
        ("reruns.png", _reruns),
        ("final_per_seed.png", _per_seed),
    ):
        save(draw(results, colours), folder / name, "free some space, then gdtrain study --resume")
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
            ax.plot(*zip(*ok), marker="o", ms=4, lw=1.4, color=colours[label], label=label)
        if bad:
            ax.scatter(
                bad,
                [floor] * len(bad),
                marker="x",
                s=40,
                color=colours[label],
                label=f"{label}: diverged" if not ok else None,
            )
        chosen = [t for t in trials if t.name in e.chosen_trials]
        if chosen:
            at = [(t.lr, t.select_value) for t in chosen]
            ax.scatter(*zip(*at), s=120, facecolors="none", edgecolors=colours[label], lw=1.5)
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
            ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, lw=1.6, color=colours[label], label=label)
    ax.set(
        xlabel="tuning trials k",
        ylabel=f"expected best {results.setup.select}",
        title="Budget curve: expected best after k trials (Dodge et al. 2019)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig


def _reruns(results: StudyResults, colours: dict[str, Any]) -> Any:
    fig = figure(12, 4.2)
    left, right = fig.subplots(1, 2)
    select = results.setup.select
    for label, e in results.optimizers.items():
        runs = [read_run(Path(p)) for p in e.reruns.run_dirs if p is not None]
        for ax, tag, x_of in ((left, "loss/train", 0), (right, select, 1)):
            curves = [c for run in runs if (c := [(point[x_of], point[2]) for point in run.curve(tag)])]
            draw_band(ax, curves, colours[label], f"{label} (n={len(curves)})")
    left.set(xlabel="step", ylabel="loss/train", yscale="log", title="Reruns: training loss (mean, min-max band)")
    right.set(xlabel="epoch", ylabel=select, title=f"Reruns: {select} (mean, min-max band)")
    right.xaxis.get_major_locator().set_params(integer=True)  # whole epochs
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
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
        ax.scatter([i + j for j in jitter], values, color=colours[label], s=22, zorder=3)
        if (s := r.summary) is not None:
            bar = ax.errorbar(
                [i + 0.3],
                [s.mean],
                yerr=[[s.mean - s.ci[0]], [s.ci[1] - s.mean]],
                fmt="D",
                color=colours[label],
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
