"""Compare runs: read every run folder under a path and group them into rows by configuration.

A run folder is one that holds config.yaml, or is named like one (`<name>-YYYYmmdd-HHMMSS`);
folders whose name starts with `_` or `.` (gdtrain's aggregate folders, e.g. `_groups/`) and
what is inside them are never runs. A folder with a sweep's or study's manifest.json compares
that sweep's runs; the others in it are set apart (gdtrain/core/manifest.py). A run's status comes
from summary.json (finished, diverged, failed, interrupted); without one, or with one that does
not parse, or without config.yaml, the run is `unfinished` or `corrupt`. Only finished and
diverged runs are ranked by their figures; the others are listed below them without figures: a
run cut short is not a result. Runs whose configs differ only in the seed are one configuration,
labelled by gdtrain/core/names.py (`sgd lr=0.05 mom=0.9`), shown as mean ± std over its seeds.
gdtrain/report/table.py renders the rows.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass

from gdtrain.core import metrics, names
from gdtrain.core.folders import Run
from gdtrain.core.runs import RESULTS

RANKED = RESULTS  # runs whose figures are results; diverging is one


def default_metric(runs: list[Run]) -> str:
    """accuracy/val when any run logged it, else loss/val, else loss/train."""
    logged = {tag for run in runs for row in run.rows for tag in row}
    return next((tag for tag in ("accuracy/val", "loss/val") if tag in logged), "loss/train")


@dataclass
class Figures:
    """One run's figures for the metric."""

    final: float | None
    best: float | None
    best_epoch: int | None
    steps_to_target: int | None


def figures(run: Run, metric: str, target: float | None) -> Figures:
    """Final, best (and its epoch) and the first step that reached `target`, from the logged curve."""
    curve = [(s, e, v) for s, e, v in run.curve(metric) if math.isfinite(v)]
    if not curve:
        return Figures(None, None, None, None)
    best = metrics.best_of(metric)(curve, key=lambda point: point[2])
    reached = None
    if target is not None:
        reached = next((s for s, _, v in curve if metrics.reaches(metric, v, target)), None)
    return Figures(curve[-1][2], best[2], best[1], reached)


@dataclass
class Row:
    """A table row: one configuration (its seeds pooled) in one status."""

    label: str  # the values that tell this configuration apart
    runs: list[Run]
    figures: list[Figures]
    status: str
    group: str | None = None  # letters from rank(): rows sharing one show no detectable difference; None: not compared
    beats: list[str] | None = None  # the labels of the rows this row detectably beats; None: not compared
    ci: tuple[float, float] | None = None  # 95% bootstrap CI of the mean final metric over seeds


def group(runs: list[Run], metric: str, target: float | None, per_run: bool) -> list[Row]:
    """Rows of finished and diverged runs sorted by the metric, best first, then the other rows
    without figures; runs that differ only in the seed share a row. Labels: gdtrain/core/names.py,
    over these runs (a run without a readable config: its folder's name)."""
    texts = names.labels([run.config for run in runs], seeds=per_run)
    if per_run:  # one row per run: where two runs read alike (the same config and seed), their folders tell them apart
        counts = Counter(texts)
        texts = [text if counts[text] == 1 else "" for text in texts]
    buckets: dict[tuple[str, str], tuple[str, list[Run]]] = {}
    for run, text in zip(runs, texts):
        text = text or run.path.name
        buckets.setdefault((str(run.path) if per_run else text, run.status), (text, []))[1].append(run)
    rows = []
    for (_, status), (text, members) in buckets.items():
        shown = [figures(r, metric, target) if status in RANKED else Figures(None, None, None, None) for r in members]
        rows.append(Row(text, members, shown, status))
    sign = -1 if metrics.higher_is_better(metric) else 1
    rows.sort(
        key=lambda row: (
            row.status not in RANKED,
            _mean([f.final for f in row.figures]) is None,
            sign * (_mean([f.final for f in row.figures]) or 0.0),
        )
    )
    return rows


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def rank(rows: list[Row], metric: str) -> list[Row]:
    """With two or more seeds per configuration, what stats says instead of a bare ranking: each
    finished row's letters (rows sharing one show no detectable difference; every claim of the
    table together at 5% family-wise), the rows it beats and the 95% CI of its mean, set on the row;
    rows in the order of their means, which ranks nothing the letters do not. Rows with one seed
    are not compared (group None)."""
    compared = [row for row in rows if row.status == "finished" and len(_known(row)) >= 2]
    if not compared:
        return rows
    from gdtrain.report import stats  # scipy, a second to import: only when there are seeds to compare

    up = metrics.higher_is_better(metric)
    pairs = stats.compare_all({row.label: _known(row) for row in compared}, up)  # Holm over every pair
    ordered = sorted(compared, key=lambda row: (-1 if up else 1) * statistics.fmean(_known(row)))  # best mean first
    marks = stats.letters([row.label for row in ordered], pairs)
    for row in compared:
        row.group, row.beats = marks[row.label], stats.beats(row.label, pairs)
        row.ci = stats.mean_interval(_known(row), metrics.bounds(metric))
    return ordered + [row for row in rows if row not in compared]


def _known(row: Row) -> list[float]:
    return [f.final for f in row.figures if f.final is not None]
