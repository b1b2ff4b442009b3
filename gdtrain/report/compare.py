"""Compare runs: read every run folder under a path and group them into rows by configuration.

A run folder is one that holds config.yaml, or is named like one (`<name>-YYYYmmdd-HHMMSS`);
folders whose name starts with `_` or `.` (gdtrain's aggregate folders, e.g. `_groups/`) and
what is inside them are never runs. A folder with a sweep's or study's manifest.json compares
that sweep's runs; the others in it are set apart (gdtrain/core/manifest.py). A run's status comes
from summary.json (finished, diverged, failed, interrupted); without one, or with one that does
not parse, or without config.yaml, the run is `unfinished` or `corrupt`. Runs whose configs differ
only in the seed are one configuration, labelled by gdtrain/core/names.py (`sgd lr=0.05 mom=0.9`).
Its finished and diverged runs share one row, which says how many diverged and shows mean ± std
over the finished ones; the others are listed below without figures: a run cut short is not a result.
Divergence has one rule, as in a study: a diverged run ranks below every finished run and ties with
the other diverged ones (no number is imputed for it), so a configuration that diverges on some
seeds ranks below what its survivors alone would say, and one whose every seed diverged ranks last.
gdtrain/report/table.py renders the rows.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from gdtrain.core import metrics, names
from gdtrain.core.folders import Run
from gdtrain.core.runs import RESULTS

RANKED = RESULTS  # the statuses that are results, ranked; a row of them says how many diverged


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
    """A table row: one configuration (its seeds pooled), its finished and diverged runs together,
    or its runs cut short in one status."""

    label: str  # the values that tell this configuration apart
    runs: list[Run]
    figures: list[Figures]  # one per run; a diverged or cut-short run's are None: no result to show
    status: str  # finished (one run did at least), diverged (every run did), or the cut-short one
    group: str | None = None  # letters from rank(): rows sharing one show no detectable difference; None: not compared
    beats: list[str] | None = None  # the labels of the rows this row detectably beats; None: not compared
    ci: tuple[float, float] | None = None  # 95% t interval of the mean final metric over the finished seeds
    ci_unreliable: str | None = None  # why that interval is not to be trusted (stats.unreliable); None: it is
    repeats: int = 0  # runs left out: each repeated a configuration and seed that another run of the row has

    @property
    def diverged(self) -> int:
        """How many of the row's runs diverged."""
        return sum(run.status == "diverged" for run in self.runs)


def group(runs: list[Run], metric: str, target: float | None, per_run: bool) -> list[Row]:
    """Rows of finished and diverged runs (runs that differ only in the seed share one), those with a
    finished run by its mean, best first, then those whose every run diverged, then the other rows
    without figures. Labels: gdtrain/core/names.py, over these runs (a run without a readable
    config: its folder's name)."""
    texts = names.labels([run.config for run in runs], seeds=per_run)
    if per_run:  # one row per run: where two runs read alike (the same config and seed), their folders tell them apart
        counts = Counter(texts)
        texts = [text if counts[text] == 1 else "" for text in texts]
    buckets: dict[tuple[str, str], tuple[str, list[Run]]] = {}
    for run, text in zip(runs, texts):
        text = text or run.path.name
        kind = "result" if run.status in RANKED else run.status
        buckets.setdefault((str(run.path) if per_run else text, kind), (text, []))[1].append(run)
    rows = []
    for (_, kind), (text, runs_of_row) in buckets.items():
        members = runs_of_row if per_run else once_per_seed(runs_of_row)
        none = Figures(None, None, None, None)
        shown = [figures(r, metric, target) if r.status == "finished" else none for r in members]
        if kind == "result":
            kind = "finished" if any(r.status == "finished" for r in members) else "diverged"
        rows.append(Row(text, members, shown, kind, repeats=len(runs_of_row) - len(members)))
    sign = -1 if metrics.higher_is_better(metric) else 1
    rows.sort(
        key=lambda row: (
            row.status not in RANKED,
            _mean([f.final for f in row.figures]) is None,
            sign * (_mean([f.final for f in row.figures]) or 0.0),
        )
    )
    return rows


def once_per_seed(runs: list[Run]) -> list[Run]:
    """One run per configuration and seed: a repeat of the same config and seed is the same
    observation again, not another seed; of the repeats, the newest finished one (else the newest)."""
    newest: dict[Any, Run] = {}
    for run in runs:
        # the run's name names one run only; a run whose config does not read is its own observation
        key = tuple(sorted((k, repr(v)) for k, v in run.config.items() if k != "experiment.run_name")) or run.path
        kept = newest.get(key)
        if kept is None or (run.status == "finished", run.path.name) > (kept.status == "finished", kept.path.name):
            newest[key] = run
    kept_ids = {id(run) for run in newest.values()}
    return [run for run in runs if id(run) in kept_ids]


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def rank(rows: list[Row], metric: str) -> list[Row]:
    """With two or more seeds per configuration, what stats says instead of a bare ranking: each
    compared row's letters (rows sharing one show no detectable difference; every claim of the
    table together at 5% family-wise), the rows it beats and the 95% CI of its finished seeds' mean,
    set on the row. A diverged run enters the tests as the worst value there is, below every finished
    run and tied with the other diverged ones. Rows in stats.ranking's order (by mean pooled rank,
    never above a row that beats them), then the rows with one run, not compared (group None)."""
    compared = [row for row in rows if row.status in RANKED and len(_values(row, metric)) >= 2]
    if not compared:
        return rows
    from gdtrain.report import stats  # scipy, a second to import: only when there are seeds to compare

    up = metrics.higher_is_better(metric)
    samples = {row.label: _values(row, metric) for row in compared}
    pairs = stats.compare_all(samples, up)  # Holm over every pair
    order = stats.ranking(samples, pairs, up)
    marks = stats.letters(order, pairs)
    for row in compared:
        row.group, row.beats = marks[row.label], stats.beats(row.label, pairs)
        finished = _known(row)
        row.ci = stats.mean_interval(finished, metrics.bounds(metric)) if len(finished) >= 2 else None
        row.ci_unreliable = stats.unreliable(finished, "finished seeds") if row.ci else None
    by_label = {row.label: row for row in compared}
    return [by_label[label] for label in order] + [row for row in rows if row not in compared]


def _known(row: Row) -> list[float]:
    return [f.final for f in row.figures if f.final is not None]


def _values(row: Row, metric: str) -> list[float]:
    """The row's sample for the tests: its finished runs' final values, and each diverged run as the
    worst value there is (-inf, or +inf where lower is better)."""
    worst = -math.inf if metrics.higher_is_better(metric) else math.inf
    return _known(row) + [worst] * row.diverged
