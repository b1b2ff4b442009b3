"""The compare table in four formats: aligned text and markdown to read, csv and json for programs.

csv and json hold every column, each per-seed figure as its mean and `<column> std`, and nothing
else on stdout. The text and markdown tables fit in 100 columns for a sweep like
sweeps/synthetic_optimizers.yaml: the row's label already says the optimizer and the lr, so they
get no columns of their own; a column with the same value in every row (batch, seeds, status,
group) is said once above the table instead; with seeds compared, a mean comes with its 95% CI
(marked `unreliable`, and `95% CI reliable` false in csv and json, below 5 finished seeds or with
no spread: stats.unreliable) and its letters (group), and json rows say which rows each one beats
(its ± std is in csv and json); the best value and its epoch share a column. `diverged` counts a
row's diverged runs (`2/5`; a number beside `seeds` in csv and json); the figures are its finished
runs'; with no run diverged the column is left out and the title says so. Wall time, which
includes a process's start-up (the first run in each sweep worker pays it), is in csv and json
only. samples/s counts training steps only and leaves out the first epoch of each process that
trained the run (summary.json); `*` marks a rate that includes it: a run that had no other epoch,
or one written before summary.json said so (no samples_per_second_with_first_epoch).
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
import textwrap
from typing import Any

from gdtrain.core import metrics
from gdtrain.core.folders import number
from gdtrain.report.compare import RANKED, Row

COLUMNS = (
    "run",
    "optimizer",
    "lr",
    "batch",
    "seeds",
    "diverged",
    "final",
    "best",
    "best epoch",
    "steps to target",
    "wall s",
    "samples/s",
    "status",
)  # csv and json; with seeds compared, also group, 95% CI and whether that CI is reliable
STATS = ("final", "best", "best epoch", "steps to target", "wall s", "samples/s")  # a value per seed
CONSTANT = ("group", "batch", "seeds", "diverged", "status")  # left out of the text table when every row has one value
WIDTH = 100


def table(rows: list[Row]) -> list[dict[str, Any]]:
    """One record per row with COLUMNS for keys; the STATS columns hold one value per run (None: none)."""
    records = []
    for row in rows:
        first = row.runs[0].config
        timed = [r.summary if row.status in RANKED else {} for r in row.runs]  # a cut-short run's times are no result
        records.append(
            {
                "run": row.label,
                "optimizer": first.get("optimizer.name"),
                "lr": first.get("optimizer.lr"),
                "batch": row.runs[0].summary.get("batch_size", first.get("train.batch_size")),
                "seeds": len(row.runs),
                "diverged": row.diverged if row.status in RANKED else None,  # a cut-short run is no result
                "final": [f.final for f in row.figures],
                "best": [f.best for f in row.figures],
                "best epoch": [f.best_epoch for f in row.figures],
                "steps to target": [f.steps_to_target for f in row.figures],
                "wall s": [number(summary.get("wall_seconds")) for summary in timed],
                "samples/s": [number(summary.get("samples_per_second")) for summary in timed],
                # runs from before samples/s left the first epoch out have no flag: theirs includes it
                "with first epoch": [
                    summary.get("samples_per_second_with_first_epoch", True) is not False
                    for summary in timed
                    if number(summary.get("samples_per_second")) is not None
                ],
                "stacked with": [stacked_with(summary) for summary in timed],
                "repeats merged": row.repeats,
                "status": row.status,
                "group": row.group,
                "beats": row.beats,
                "95% CI": row.ci,
                "95% CI reliable": None if row.ci is None else row.ci_unreliable is None,
                "95% CI unreliable": row.ci_unreliable,  # why not, in the title
            }
        )
    return records


def stacked_with(summary: dict[str, Any]) -> int | None:
    """How many runs trained at once with this one (a stacked group's size), None for a run alone."""
    environment = summary.get("environment") if isinstance(summary.get("environment"), dict) else {}
    size = environment.get("stacked_runs")
    if size is None and isinstance(environment.get("stacked"), str):  # runs from before stacked_runs
        found = re.match(r"trained stacked with (\d+) runs", environment["stacked"])
        size = int(found.group(1)) if found else None
    return size if isinstance(size, int) and size > 1 else None


def _show(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _stat(values: list[Any], digits: int = 4) -> str:
    """`0.9712 ± 0.0021` over seeds, `0.9712` for one, `-` for none."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    if len(known) == 1:
        return f"{known[0]:.{digits}g}"
    return f"{statistics.fmean(known):.{digits}g} ± {statistics.stdev(known):.2g}"


def _mean(values: list[Any], spec: str) -> str:
    known = [v for v in values if v is not None]
    return "-" if not known else format(statistics.fmean(known), spec)


def _cell(record: dict[str, Any], column: str, target: float | None, mark: bool = True) -> str:
    if (
        column == "95% CI"
    ):  # `mark`: say in the cell that the CI is unreliable (not when the title says so of every row)
        ci = record["95% CI"]
        unsure = " unreliable" if mark and record["95% CI unreliable"] else ""
        return "-" if ci is None else f"{ci[0]:.4g}-{ci[1]:.4g}{unsure}"
    if column == "final":  # with a CI beside it, the mean alone
        return _mean(record["final"], ".4g") if record["95% CI"] is not None else _stat(record["final"])
    if column == "best (epoch)":
        best = _mean(record["best"], ".4g")
        return best if best == "-" else f"{best} ({_mean(record['best epoch'], '.3g')})"
    if column == "steps to target":
        value = record[column]
        hits = [v for v in value if v is not None]
        if target is None:
            return "-"
        return (
            "never"
            if not hits
            else f"{statistics.fmean(hits):.0f}" + (f" ({len(hits)}/{len(value)})" if len(value) > 1 else "")
        )
    if column == "diverged":
        value = record["diverged"]
        return "-" if value is None else f"{value}/{record['seeds']}"
    if column == "samples/s":
        sizes = sorted({n for n in record["stacked with"] if n is not None})
        together = "" if not sizes else f" (x{sizes[0]})" if len(sizes) == 1 else f" (x{sizes[0]}-{sizes[-1]})"
        return _mean(record["samples/s"], ",.0f") + ("*" if any(record["with first epoch"]) else "") + together
    value = record[column]
    return "-" if value is None else _show(value)


def display(records: list[dict[str, Any]], target: float | None) -> tuple[list[str], dict[str, str]]:
    """The text and markdown table's columns, and the columns left out for having one value in every
    row (column → that value)."""
    compared = any(r["group"] is not None for r in records)
    shown = (["group"] if compared else []) + ["run", "batch", "seeds"] + (["diverged"] if _diverged(records) else [])
    shown += ["final"] + (["95% CI"] if compared else [])
    shown += ["best (epoch)"] + (["steps to target"] if target is not None else []) + ["samples/s", "status"]
    same = {}
    if len(records) > 1:
        for column in CONSTANT:
            values = {_cell(r, column, target) for r in records}
            if column in shown and len(values) == 1:
                same[column] = values.pop()
    return [c for c in shown if c not in same], same


def _every_ci_unreliable(records: list[dict[str, Any]]) -> bool:
    return all(r["95% CI unreliable"] for r in records if r["95% CI"] is not None)


def _diverged(records: list[dict[str, Any]]) -> bool:
    return any(r["diverged"] for r in records)


def title(records: list[dict[str, Any]], metric: str, target: float | None) -> list[str]:
    """What the table shows, in lines of at most WIDTH: the metric and its direction, how groups are
    judged, how a diverged run is read, the columns with one value in every row, what samples/s counts."""
    compared = any(r["group"] is not None for r in records)
    _, same = display(records, target)
    seeds = f"mean of {same['seeds']} seeds" if "seeds" in same else "mean over seeds"
    if _diverged(records):
        seeds = "mean over the finished seeds"
    said = [
        f"{metric} ({metrics.direction(metric)} is better): final value"
        + (f", {seeds} with its 95% t interval" if compared else "")
        + "; best first."
    ]
    if compared:
        said += [
            "group: rows that share a letter show no detectable difference; rows that share none differ "
            "(two-sided exact tests, Holm: every claim together at 5% family-wise).",
        ]
    reasons = sorted({r["95% CI unreliable"] for r in records if r["95% CI unreliable"]})
    if reasons:
        said.append(
            ("Every row's 95% CI is unreliable" if _every_ci_unreliable(records) else "unreliable: a 95% CI")
            + f" ({', '.join(reasons)}): its coverage was measured to hold from 5 finished seeds with some spread."
        )
    if _diverged(records):
        said.append(
            "diverged: a row's runs whose loss became NaN or infinite; each ranks below every finished run "
            "and ties with the other diverged ones, and the figures are the finished runs'."
        )
    every = {"group": "group {}", "batch": "batch {}", "seeds": "{} seeds", "diverged": "{} diverged", "status": "{}"}
    note = (
        ("Every row: " + ", ".join(every[c].format(v) for c, v in same.items()).replace(" 1 seeds", " 1 run") + ". ")
        if same
        else ""
    )
    star = any(any(r["with first epoch"]) for r in records)
    said.append(
        note
        + ("" if _diverged(records) or not any(r["diverged"] is not None for r in records) else "No run diverged. ")
        + "samples/s: training steps after each process's first epoch"
        + (" (*: with it: a run of one epoch, or one from before gdtrain left it out)." if star else ".")
    )
    if any(any(r["stacked with"]) for r in records):
        said.append(
            "(xN): a run trained stacked, N runs at once: its own samples/s while the group trained, which "
            "then did N times as many; a rate of its group, not of a run alone, so not to be compared "
            "across groups or with runs alone."
        )
    merged = sum(r["repeats merged"] for r in records)
    if merged:
        said.append(
            f"Repeats merged: {merged} run folder(s) repeat the configuration and seed of another run in "
            "their row, the same observation again; each configuration and seed counts once (its newest "
            "finished run)."
        )
    return [line for sentence in said for line in textwrap.wrap(sentence, WIDTH, break_on_hyphens=False)]


def _numbers(record: dict[str, Any]) -> dict[str, Any]:
    """For csv and json: each STATS column as its mean, plus `<column> std` when there are seeds."""
    flat: dict[str, Any] = {}
    for column in (*COLUMNS, "group", "beats", "95% CI", "95% CI reliable"):
        value = record[column]
        if column not in STATS:
            flat[column] = value
            continue
        known = [v for v in value if v is not None]
        flat[column] = statistics.fmean(known) if known else None
        flat[f"{column} std"] = statistics.stdev(known) if len(known) > 1 else None
    flat["reached target"] = sum(v is not None for v in record["steps to target"])
    flat["samples/s with first epoch"] = sum(record["with first epoch"])  # runs whose rate includes it
    flat["stacked with"] = max((n for n in record["stacked with"] if n is not None), default=None)  # group size
    flat["repeats merged"] = record["repeats merged"]
    return flat


def render(records: list[dict[str, Any]], fmt: str, target: float | None) -> str:
    """The table as aligned text, markdown, csv or json (no title: see title())."""
    if fmt in ("json", "csv"):
        flat = [_numbers(r) for r in records]
        if fmt == "json":
            return json.dumps(flat, indent=2)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(flat[0]) if flat else list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: "; ".join(v) if isinstance(v, list) else v for k, v in row.items()} for row in flat])
        return out.getvalue().rstrip("\n")
    shown, _ = display(records, target)
    header = [f"steps to {target:g}" if c == "steps to target" else c for c in shown]
    mark = not _every_ci_unreliable(records)  # else the title says it once
    cells = [header] + [[_cell(r, c, target, mark) for c in shown] for r in records]
    if fmt == "markdown":
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        lines.insert(1, "|" + "|".join("---" for _ in shown) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(shown))]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in cells)
