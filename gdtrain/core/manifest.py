"""A sweep's or study's membership: manifest.json in its experiment folder, so compare shows its runs.

    {"kind": "sweep", "id": "...", "command": "gdtrain sweep sweeps/synthetic_optimizers.yaml",
     "started": "20261125-132134",
     "points": [{"name": "adam-lr0.005-s0", "label": "adam lr=0.005 s0"}, ...],
     "runs": [{"run": "adam-lr0.005-s0-20261125-132140", "label": "adam lr=0.005 s0", "status": "finished"}, ...]}

A sweep or study writes it before its first run and rewrites it (whole, atomically, from its one
process) as each run ends or is found done (--resume): `runs` are its members. A folder named
`<point name>-<time>` with a time from `started` on is a member too, listed or not: a run still
training, or cut short with the sweep by kill -9. Any other run folder beside them (a `gdtrain run`
of the same config, `make demo`, an earlier sweep) is not part of it: compare lists it apart.
A new sweep or study in the folder replaces the manifest; one that finds its manifest replaced by
another's stops writing it. Torch-free.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from gdtrain.core.errors import UserError
from gdtrain.core.runs import STAMP, command, write_json_atomic

MANIFEST = "manifest.json"


class Manifest:
    """The manifest of one sweep or study, which this process alone writes."""

    def __init__(self, folder: Path, kind: str) -> None:
        """An empty manifest for a `kind` (sweep or study) in the experiment folder `folder`; written by plan()."""
        self.path = folder / MANIFEST
        self.data: dict[str, Any] = {
            "kind": kind,
            "id": uuid.uuid4().hex,
            "command": command(),
            "started": datetime.now().strftime("%Y%m%d-%H%M%S"),
            "points": [],
            "runs": [],
        }
        self.taken = False  # another sweep's manifest has replaced this one

    def plan(self, points: list[tuple[str, str]]) -> None:
        """Set the planned points, (name, label) each, and write the manifest; a UserError if it cannot be."""
        labels = dict(points)
        self.data["points"] = [{"name": name, "label": text} for name, text in points]
        for run in self.data["runs"]:  # a study's labels change when its reruns join its trials
            run["label"] = labels.get(run["point"], run["label"])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write()
        except OSError as err:
            raise UserError(
                f"{self.path}: cannot write the {self.data['kind']}'s manifest "
                f"({err.strerror or err}); choose a writable folder with --runs-dir"
            ) from None

    def record(self, run_dir: str | Path, point: str, status: str) -> None:
        """Add (or update) a member run folder and its status; a failed write is a warning, not a stop."""
        name = Path(run_dir).name
        label = next((p["label"] for p in self.data["points"] if p["name"] == point), point)
        self.data["runs"] = [r for r in self.data["runs"] if r["run"] != name]
        self.data["runs"].append({"run": name, "point": point, "label": label, "status": status})
        if self.taken:
            return
        current = read(self.path.parent)
        if current is not None and current.get("id") != self.data["id"]:
            self.taken = True
            sys.stderr.write(
                f"warning: {self.path} now belongs to another sweep or study (started "
                f"{current.get('started')}); this one no longer records its runs there\n"
            )
            return
        try:
            self._write()
        except OSError as err:
            sys.stderr.write(f"warning: {self.path}: cannot record {name} ({err.strerror or err})\n")

    def _write(self) -> None:
        write_json_atomic(self.path, self.data)


def read(folder: Path) -> dict[str, Any] | None:
    """The manifest of `folder`; None when there is none, or it does not read as one."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(data, dict)
        and isinstance(data.get("runs"), list)
        and isinstance(data.get("points"), list)
        and all(isinstance(r, dict) and isinstance(r.get("run"), str) for r in data["runs"])
        and all(isinstance(p, dict) and isinstance(p.get("name"), str) for p in data["points"])
        and isinstance(data.get("started"), str)
    )
    return data if ok else None


def is_member(data: dict[str, Any], run_dir: Path) -> bool:
    """Whether a run folder belongs to the manifest's sweep or study: listed, or named by one of its
    points with a time from its start on (a run in progress, or cut short)."""
    if run_dir.name in {r["run"] for r in data["runs"]}:
        return True
    for point in data["points"]:
        stamp = run_dir.name[len(point["name"]) :]
        if run_dir.name.startswith(point["name"]) and re.fullmatch(STAMP, stamp) and stamp[1:16] >= data["started"]:
            return True
    return False


def split(folder: Path, run_dirs: list[Path]) -> tuple[dict[str, Any] | None, list[Path], list[Path]]:
    """(manifest, members, others) of the run folders directly in `folder`, by its manifest; without
    one, every run folder is a member."""
    data = read(folder)
    if data is None:
        return None, list(run_dirs), []
    inside = [p for p in run_dirs if p.parent == folder]
    members = [p for p in inside if is_member(data, p)]
    return data, members, [p for p in run_dirs if p not in members]


def describe(data: dict[str, Any]) -> str:
    """`the sweep of 20261125-132134 (manifest.json)`: which sweep or study a manifest is."""
    kind = data.get("kind") if data.get("kind") in ("sweep", "study") else "sweep"
    return f"the {kind} of {data['started']} ({MANIFEST})"
