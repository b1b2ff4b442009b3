"""`gdtrain compare`: the runs under a folder read back, filtered and checked, then said as a table,
the run folders set apart from it, and a plot.

A sweep's or study's folder compares the runs its manifest.json lists (gdtrain/core/manifest.py);
the others are listed after the table, and `everything` (--all) takes them in. A metric no run
logged is an error that names the ones they did; a finished run without it is left out with a
note. Notes, and the title and plot lines beside a csv or json table, go to stderr, so stdout
stays the table alone for a machine to read. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gdtrain.core import folders
from gdtrain.core.errors import UserError
from gdtrain.core.folders import Run
from gdtrain.core.manifest import describe
from gdtrain.report import compare, table

MACHINE = ("csv", "json")  # formats whose stdout a program reads: nothing else goes there


def compare_folder(
    folder: Path,
    metric: str | None,
    target: float | None,
    per_run: bool,
    fmt: str,
    plot: Path | None,
    everything: bool,
    say: Callable[..., None],
) -> None:
    """Tabulate the runs under `folder` by `metric`, best first, in `fmt`, and plot them to `plot`;
    `say` prints (typer.echo's signature)."""
    if plot is not None:
        from gdtrain.core.plotting import require_matplotlib

        require_matplotlib("--plot")
    runs = folders.read_runs(folder)
    manifest, others = None, []
    if not everything:
        manifest, runs, others = folders.members(folder, runs)
        if manifest is not None and not runs:
            raise UserError(
                f"{folder}: none of its run folders is part of {describe(manifest)} yet; "
                f"--all compares every run folder in it"
            )
    metric = metric or compare.default_metric(runs)
    runs = with_metric(runs, metric, folder, say)
    rows = compare.group(runs, metric, target, per_run)
    if not per_run:
        rows = compare.rank(rows, metric)
    records = table.table(rows)
    for line in table.title(records, metric, target):
        say(line, err=fmt != "table")
    say(table.render(records, fmt, target))
    if others and manifest is not None:
        set_apart(others, manifest, folder, fmt, say)
    if plot is not None:
        from gdtrain.report.curveplot import plot as draw

        ranked = [row for row in rows if row.status in compare.RANKED]  # the others have no figures
        draw(ranked, metric, f"{folder}: {len(ranked)} configurations, {sum(len(r.runs) for r in ranked)} runs", plot)
        say(f"plot: {plot}", err=fmt != "table")


def with_metric(runs: list[Run], metric: str, folder: Path, say: Callable[..., None]) -> list[Run]:
    """The runs that logged `metric`: an error when none did, a note on each finished run left out."""
    logged = {tag for run in runs for row in run.rows for tag in row} - {"step", "epoch"}
    if metric not in logged:
        raise UserError(
            f"--metric {metric}: no run under {folder} logged it; logged: {', '.join(sorted(logged)) or 'nothing'}"
        )
    lacking = [run for run in runs if run.status == "finished" and not run.curve(metric)]
    for run in lacking:
        its = ", ".join(sorted({tag for row in run.rows for tag in row} - {"step", "epoch"}))
        say(f"note: {run.path} has no {metric} (it logged {its}); left out", err=True)
    return [run for run in runs if run not in lacking]


def set_apart(others: list[Run], manifest: dict[str, Any], folder: Path, fmt: str, say: Callable[..., None]) -> None:
    """The run folders beside a sweep's or study's that its manifest does not list: after the table
    (text and markdown), on stderr for csv and json."""
    machine = fmt in MACHINE
    if not machine:
        say("")
    say(f"Not part of {describe(manifest)}, so not in the table; --all includes them:", err=machine)
    for run in others:
        say(f"{'- ' if fmt == 'markdown' else '  '}{run.path.relative_to(folder)}  {run.status}", err=machine)
