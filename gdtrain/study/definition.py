"""What a study was run with, and what changed since: study.json in its folder.

A study writes its resolved definition when it starts: the study file's keys after `--set`, the
metrics it resolved, and the base config as validated (every default filled in, the optimizer and
the run seed left out: the study sets them per point). On `--resume` the runner compares the stored
definition with the current one and says in one line what changed (`seeds 5 → 8`,
`optimizers[momentum].lr.log_uniform [0.001, 1.0] → [0.001, 0.1]`). Nothing here decides which runs are
reused: that is the sweep's rule (same name, same config), which the runner counts. Torch-free.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from gdtrain.core.config import to_dict, validate
from gdtrain.core.runs import write_json_atomic
from gdtrain.study.spec import Study, tuning_points

DEFINITION = "study.json"
SHOWN = 4  # changes named in the one line; the rest are counted


def resolved(study: Study) -> dict[str, Any]:
    """The study as it runs: its keys after --set, its metrics, and the validated base config."""
    _, _, doc = tuning_points(study, 1)[0]
    base = to_dict(validate(copy.deepcopy(doc), study.source))
    base.pop("optimizer")  # each arm's, from `optimizers`
    for key in ("name", "seed"):  # study.name, and each point's seed
        base["experiment"].pop(key, None)
    base["data"].pop("root", None)  # where the files are found, not what the study is
    spec = study.spec.model_dump(mode="json")
    return spec | {"base": base, "select": study.select, "report": study.report}


def read(folder: Path) -> dict[str, Any] | None:
    """The definition stored in `folder`; None when there is none or it does not read as one."""
    try:
        data = json.loads((folder / DEFINITION).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("base"), dict) and isinstance(data["base"].get("data"), dict):
        data["base"]["data"].pop("root", None)  # recorded (as null) by studies before `resolved` left it out
    return data


def write(folder: Path, definition: dict[str, Any]) -> None:
    """Store the definition, whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / DEFINITION, definition)


def changes(old: Any, new: Any, path: str = "") -> list[str]:
    """`seeds 5 → 8`, one per changed value, by dotted path; mappings and lists of mappings
    (`optimizers`) are followed key by key and entry by entry, other values shown whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            line
            for key in [*old, *(k for k in new if k not in old)]
            for line in changes(old.get(key, _NONE), new.get(key, _NONE), f"{path}.{key}" if path else key)
        ]
    if isinstance(old, list) and isinstance(new, list) and any(isinstance(v, dict) for v in old + new):
        padded = max(len(old), len(new))
        return [
            line
            for i in range(padded)
            for line in changes(
                old[i] if i < len(old) else _NONE, new[i] if i < len(new) else _NONE, _entry(path, i, old, new)
            )
        ]
    return [] if old == new else [f"{path} {_shown(old)} → {_shown(new)}"]


_NONE = object()  # a key or entry one side does not have


def _entry(path: str, i: int, old: list[Any], new: list[Any]) -> str:
    """`optimizers[2]`, or `optimizers[rmsprop]` where the entry has a label or a name (the new side's first)."""
    entry = new[i] if i < len(new) else old[i]
    name = entry.get("label", entry.get("name")) if isinstance(entry, dict) else None
    return f"{path}[{name}]" if isinstance(name, str) else f"{path}[{i}]"


def _shown(value: Any) -> str:
    if value is _NONE:
        return "(none)"
    return value if isinstance(value, str) else json.dumps(value)


def announcement(name: str, changed: list[str], reused: int, to_run: int, waiting: int) -> str:
    """`study quick: changed since it last ran: seeds 5 → 8; reusing 28 of 40 runs (12 to run)`;
    `waiting`: reruns of settings that trials still to run will choose."""
    shown = ", ".join(changed[:SHOWN]) + (f" and {len(changed) - SHOWN} more" if len(changed) > SHOWN else "")
    later = f"; {waiting} reruns depend on what the new trials choose" if waiting else ""
    total = reused + to_run + waiting
    return (
        f"study {name}: changed since it last ran: {shown}; reusing {reused} of {total} runs ({to_run} to run{later})"
    )
