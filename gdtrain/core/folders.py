"""Run folders read back: each one's status, flat config, summary and logged curves.

A run folder is one that holds config.yaml, or is named like one (`<name>-YYYYmmdd-HHMMSS`);
folders whose name starts with `_` or `.` (gdtrain's aggregate folders, e.g. `_groups/`) and
what is inside them are never runs. A folder with a sweep's or study's manifest.json owns the runs
it lists (gdtrain/core/manifest.py). Reading never fails on a run: a missing or unreadable piece
makes it `unfinished` or `corrupt`. What writes these folders is gdtrain/core/runs.py; what reads
them for a table, a board or a verdict starts here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdtrain.core import manifest
from gdtrain.core.errors import UserError
from gdtrain.core.runs import RUN_FOLDER, flatten, read_summary
from gdtrain.core.runs import status as run_status
from gdtrain.core.yamlio import load_yaml


@dataclass
class Run:
    """One run folder as read back: status, flat config, summary and logged curves."""

    path: Path
    status: str  # finished | diverged | failed | interrupted | unfinished | corrupt
    config: dict[str, Any] = field(default_factory=dict)  # flat: {"optimizer.lr": 0.01, ...}
    summary: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, one dict per line

    def curve(self, tag: str) -> list[tuple[int, int, float]]:
        """(step, epoch, value) for every logged point of `tag`."""
        return [(r["step"], r["epoch"], v) for r in self.rows if (v := number(r.get(tag))) is not None]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as one dict per line. A last line cut short (a crash mid-write) is left out;
    any other unreadable line makes the file unusable: no rows rather than wrong ones."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            if number == len(lines):
                break  # cut short by a crash mid-write
            return []
        counts = [row.get(key) for key in ("step", "epoch")] if isinstance(row, dict) else [None]
        if not all(type(n) is int and 0 <= n < 2**63 for n in counts):
            return []
        rows.append(row)
    return rows


def read_run(path: Path) -> Run:
    """One run folder; a missing or unreadable piece makes it unfinished or corrupt, never an error."""
    try:
        config = flatten(load_yaml(path / "config.yaml") or {})
    except (UserError, AttributeError):
        return Run(path, "corrupt")
    return Run(path, run_status(path), config, read_summary(path) or {}, read_rows(path / "metrics.jsonl"))


def read_runs(root: Path) -> list[Run]:
    """Every run folder at or below `root`, in path order: each folder with a config.yaml, and each
    folder named like a run folder without one (a crash before it was written: corrupt)."""
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; give a runs folder, e.g. runs/<experiment>")
    found = {p.parent for p in root.rglob("config.yaml")}
    found |= {p for p in root.rglob("*") if RUN_FOLDER.fullmatch(p.name) and p.is_dir()}
    runs = [read_run(p) for p in sorted(found) if not _aside(p, root)]
    if not runs:
        raise UserError(
            f"{root}: no run folders in it (a run folder holds config.yaml); runs are in runs/<experiment>/"
        )
    return runs


def _aside(path: Path, root: Path) -> bool:
    """Whether `path` is, or is inside, a folder below `root` whose name starts with `_` or `.`:
    never a run's (names of runs and experiments start with a letter or digit, config.check_name)."""
    return any(part.startswith(("_", ".")) for part in path.relative_to(root).parts)


def members(root: Path, runs: list[Run]) -> tuple[dict[str, Any] | None, list[Run], list[Run]]:
    """(manifest, its runs, the others) when `root` holds a sweep's or study's manifest.json;
    (None, runs, []) without one."""
    data, inside, _ = manifest.split(root, [run.path for run in runs])
    return data, [run for run in runs if run.path in inside], [run for run in runs if run.path not in inside]


def number(value: Any) -> float | None:
    """A logged or summary figure as a float; None for what a foreign or hand-edited file may hold
    instead (a string, a bool, a JSON integer too big for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None
