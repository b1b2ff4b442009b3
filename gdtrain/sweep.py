"""Sweeps: the cross product of a grid of config values, one run per point, into one experiment.

A grid comes from `--grid key.path=v1,v2` options or from a `grid:` section in the config file
(`grid: {optimizer.name: [sgd, adam], optimizer.lr: [0.1, 0.01]}`); `--seeds N` adds the
seeds base..base+N-1. Every point is validated before the first run starts. Runs go one after
the other in this process, or N at a time in worker processes (`--jobs N`), each worker with
its share of the CPU threads. A run that diverges or fails is recorded and the sweep goes on.
"""

from __future__ import annotations

import copy
import glob
import itertools
import json
import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdtrain.config import Config, apply_overrides, load_config, read_config, validate
from gdtrain.errors import UserError
from gdtrain.yamlio import parse_value

DONE = ("finished", "diverged")  # statuses --resume keeps: rerunning gives the same result


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its name, the overrides that make it, and its validated config."""

    name: str  # the values that differ between points, e.g. optimizer=adam,lr=0.01,seed=1
    raw: dict[str, Any]  # the config document with the point's overrides applied
    config: Config


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`optimizer.lr=0.1,0.01` → {"optimizer.lr": [0.1, 0.01]}; values are read as YAML."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not all(key.split(".")):
            raise UserError(f"--grid {item!r}: expected key.path=v1,v2,..., e.g. --grid optimizer.lr=0.1,0.01")
        values = parse_value(f"[{text}]", f"--grid {key}")  # a YAML flow list: [64, 64] stays a list
        grid[key] = _values(values, f"--grid {key}")
    return grid


def _values(values: Any, where: str) -> list[Any]:
    values = values if isinstance(values, list) else [values]
    if not values or any(v is None for v in values):
        raise UserError(f"{where}: an empty value; give one or more values separated by commas, e.g. 0.1,0.01")
    try:  # each point's values travel as JSON (expand's overrides)
        json.dumps(values, allow_nan=False)
    except (TypeError, ValueError):
        raise UserError(f"{where}: values must be finite numbers, strings, lists or mappings, got {values!r}") from None
    return values


def short_names(keys: list[str]) -> dict[str, str]:
    """How each varying key reads in a run name: `lr`, `seed`, `optimizer.name`; full when two clash."""
    shorts = {key: "seed" if key == "experiment.seed" else key if key.endswith(".name") else key.split(".")[-1]
              for key in keys}
    counts = Counter(shorts.values())
    return {key: short if counts[short] == 1 else key for key, short in shorts.items()}


def _label(value: Any) -> str:
    """A value as it reads in a run name: 0.01, adam, 16-16, sgd+lr=0.1; only folder-safe characters."""
    if isinstance(value, dict):  # a whole section: its name, then its other settings
        parts = [_label(value["name"])] if "name" in value else []
        return "+".join(parts + [f"{_label(k)}={_label(v)}" for k, v in value.items() if k != "name"])
    text = format(value, "g") if isinstance(value, float) else json.dumps(value) if isinstance(value, list) else str(value)
    text = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._=+-]+", "-", text))  # '..' would fail runs.check_name mid-sweep
    return text.strip("-") or "x"


def expand(path: Path, grid_options: list[str], seeds: int | None, overrides: list[str]) -> list[Point]:
    """Every point of the sweep, validated; a bad key or value anywhere stops it before any run."""
    raw = read_config(path)
    grid = {key: _values(values, f"{path}: grid.{key}") for key, values in _grid_section(raw.pop("grid", None), path).items()}
    grid.update(parse_grid(grid_options))
    if seeds is not None:
        base = validate(apply_overrides(copy.deepcopy(raw), list(overrides)), str(path)).experiment.seed
        grid["experiment.seed"] = list(range(base, base + seeds))
    if not grid:
        raise UserError(f"{path}: nothing to sweep; add --grid key.path=v1,v2 or a grid: section")
    varying = short_names([key for key, values in grid.items() if len(values) > 1])
    points = []
    for values in itertools.product(*grid.values()):
        chosen = dict(zip(grid, values))
        sets = list(overrides) + [f"{key}={json.dumps(value)}" for key, value in chosen.items()]
        doc = apply_overrides(copy.deepcopy(raw), sets)
        config = validate(copy.deepcopy(doc), str(path))
        name = ",".join(f"{short}={_label(chosen[key])}" for key, short in varying.items())
        points.append(Point(name[:100].rstrip(",") or "point", doc, config))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: the grid gives two points the same run name; give each key distinct values")
    return points


def _grid_section(section: Any, path: Path) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict) or not all(isinstance(k, str) for k in section):
        raise UserError(f"{path}: grid: must map dotted keys to lists of values, e.g. optimizer.lr: [0.1, 0.01]")
    return section


def finished_run(runs_dir: Path, config: Config, name: str) -> Path | None:
    """A run folder named `name` with this resolved config whose summary says it is done."""
    folder = runs_dir / config.experiment.name
    pattern = re.compile(re.escape(name) + r"-\d{8}-\d{6}(-\d+)?")
    for run_dir in sorted(folder.glob(f"{glob.escape(name)}-*")) if folder.is_dir() else []:
        if not pattern.fullmatch(run_dir.name):
            continue
        try:
            status = json.loads((run_dir / "summary.json").read_text())["status"]
            same = load_config(run_dir / "config.yaml") == config
        except (OSError, ValueError, KeyError, TypeError, UserError):
            continue
        if status in DONE and same:
            return run_dir
    return None


@dataclass
class Result:
    """What became of one point."""

    name: str
    status: str  # finished | diverged | failed | skipped
    run_dir: str | None = None
    final: dict[str, float] | None = None
    error: str | None = None
    seconds: float = 0.0


def run_point(raw: dict[str, Any], name: str, runs_dir: str) -> Result:
    """Train one point in this process; any exception becomes a failed result."""
    from gdtrain import recipe

    started = time.perf_counter()
    try:
        config = validate(raw, name)
        run_dir, outcome = recipe.run(config, Path(runs_dir), name, quiet=True)
    except UserError:
        raise
    except Exception as err:  # a crash in one run must not stop the sweep
        return Result(name, "failed", error=f"{type(err).__name__}: {err}", seconds=time.perf_counter() - started)
    return Result(name, outcome.status, str(run_dir), outcome.final, seconds=time.perf_counter() - started)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_sweep(points: list[Point], runs_dir: Path, jobs: int, resume: bool, report: Callable[[Result], None]) -> list[Result]:
    """Run the points (skipping finished ones with `resume`), `jobs` at a time; report each result."""
    results: list[Result] = []
    todo = []
    for point in points:
        done = finished_run(runs_dir, point.config, point.name) if resume else None
        if done is not None:
            results.append(Result(point.name, "skipped", str(done)))
            report(results[-1])
        else:
            todo.append(point)
    for result in _execute(todo, runs_dir, jobs):
        results.append(result)
        report(result)
    return results


def _execute(todo: list[Point], runs_dir: Path, jobs: int) -> Iterator[Result]:
    if jobs == 1 or len(todo) <= 1:
        for point in todo:
            result = run_point(point.raw, point.name, str(runs_dir))
            yield result
            if result.status == "interrupted":  # Ctrl-C stops the sweep, not just this run
                return
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)  # jobs × threads ≤ cores: no oversubscription
    context = multiprocessing.get_context("spawn")  # fork after torch's thread pools start can hang
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(run_point, p.raw, p.name, str(runs_dir)): p for p in todo}
        for future in as_completed(futures):
            try:
                yield future.result()
            except UserError:
                pool.shutdown(cancel_futures=True)
                raise
            except Exception as err:  # the worker process itself died
                yield Result(futures[future].name, "failed", error=f"{type(err).__name__}: {err}")
