"""Sweeps: the cross product of a grid of config values, one run per point, into one experiment.

A grid comes from `--grid key.path=v1,v2` options or from a `grid:` section in the config file
(`grid: {optimizer.name: [sgd, adam], optimizer.lr: [0.1, 0.01]}`); `--seeds N` adds the
seeds base..base+N-1. Every point is validated before the first run starts, and named by what
tells it apart from the others (gdtrain/core/names.py: `sgd lr=0.05 mom=0.9 s1`, run folder
`sgd-lr0.05-mom0.9-s1-<time>`); the sweep's manifest.json lists its runs (gdtrain/core/manifest.py).
Runs go one after the other in this process, or N at a time in worker processes (`--jobs N`,
gdtrain/execution/workers.py), each worker with its share of the CPU threads, or as submitit jobs, on this
machine or Slurm's (`--executor`, gdtrain/execution/executors.py). A run that diverges or fails
is recorded and the sweep goes on; a signal stops it: the running points save a checkpoint, no
other point starts, and `--resume` continues the interrupted points from their checkpoints and
runs the rest.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gdtrain.core import names, runs
from gdtrain.core.config import Config, apply_overrides, look_beside, read_config, to_dict, validate
from gdtrain.core.errors import UserError
from gdtrain.core.manifest import MANIFEST, Manifest
from gdtrain.core.signals import Guard
from gdtrain.core.yamlio import parse_value
from gdtrain.execution import groups
from gdtrain.execution.executors import run_units
from gdtrain.execution.options import Execution, continue_command
from gdtrain.execution.units import attempt
from gdtrain.execution.workers import run_parallel
from gdtrain.training import board
from gdtrain.training.tasks import Result, Task, Watch


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its name, the overrides that make it, and its validated config."""

    name: str  # its run folder's name without the time: what tells it apart, e.g. adam-lr0.01-s1 (core/names.py)
    raw: dict[str, Any]  # the config document with the point's overrides applied
    config: Config
    label: str = ""  # the same as compare and the plots show it, e.g. `adam lr=0.01 s1`; the name when empty


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
    # `key:` with nothing after it is an empty value; a `null` inside a list is a value (grad_clip: [null, 1.0]).
    values = values if isinstance(values, list) else [] if values is None else [values]
    if not values:
        raise UserError(f"{where}: an empty value; give one or more values separated by commas, e.g. 0.1,0.01")
    try:  # each point's values travel as JSON (expand's overrides)
        json.dumps(values, allow_nan=False)
    except (TypeError, ValueError):
        raise UserError(f"{where}: values must be finite numbers, strings, lists or mappings, got {values!r}") from None
    return values


def expand(path: Path, grid_options: list[str], seeds: int | None, overrides: list[str]) -> list[Point]:
    """Every point of the sweep, validated; a bad key or value anywhere stops it before any run."""
    raw = read_config(path)
    section = _grid_section(raw.pop("grid", None), path)
    grid = {key: _values(values, f"{path}: grid.{key}") for key, values in section.items()}
    grid.update(parse_grid(grid_options))
    if seeds is not None:
        doc = apply_overrides(copy.deepcopy(raw), list(overrides))
        look_beside(path, doc)
        base = validate(doc, str(path)).experiment.seed
        grid["experiment.seed"] = list(range(base, base + seeds))
    if not grid:
        raise UserError(f"{path}: nothing to sweep; add --grid key.path=v1,v2 or a grid: section")
    made = []
    for values in itertools.product(*grid.values()):
        sets = list(overrides) + [f"{key}={json.dumps(value)}" for key, value in zip(grid, values)]
        doc = apply_overrides(copy.deepcopy(raw), sets)
        look_beside(path, doc)  # a grid or --set value naming module:Class looks beside the sweep file
        made.append((doc, validate(copy.deepcopy(doc), str(path))))
    configs = [runs.flatten(to_dict(config)) for _, config in made]
    parts = names.parts(configs)
    points = [Point(names.folder(p), doc, config, names.label(p)) for p, (doc, config) in zip(parts, made)]
    seen: dict[str, Point] = {}
    for point in points:
        if point.name in seen:
            raise UserError(
                f"{path}: two points of the grid would share the run name {point.name!r}; give each key distinct values"
            )
        seen[point.name] = point
    return points


def _grid_section(section: Any, path: Path) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict) or not all(isinstance(k, str) for k in section):
        raise UserError(f"{path}: grid: must map dotted keys to lists of values, e.g. optimizer.lr: [0.1, 0.01]")
    return section


def sweep_file(
    config: Path,
    grid: list[str],
    seeds: int | None,
    overrides: list[str],
    runs_dir: Path,
    execution: Execution,
    say: Callable[..., None],
) -> tuple[int, list[Result]]:
    """`gdtrain sweep`: expand the file's grid, run its points as `execution` says, and say each
    result and the closing counts through `say` (typer.echo's signature); the exit status and the
    points' results."""
    points = expand(config, grid, seeds, overrides)
    folder = runs_dir / points[0].config.experiment.name
    with owning(runs_dir, folder.name, "sweep"):
        manifest = Manifest(folder, "sweep")
        manifest.plan([(point.name, point.label) for point in points])
        say(f"sweep: {len(points)} runs into {folder}/" + execution.described(folder))
        counter = iter(range(1, len(points) + 1))
        labels = {point.name: point.label for point in points}

        def report(result: Result) -> None:
            shown = ", ".join(
                f"{t} {v:.4g}" for t, v in (result.final or {}).items() if t.endswith("/val") or t.startswith("line/")
            )
            kept = f"checkpoint in {result.run_dir}" if result.status == "interrupted" and result.run_dir else ""
            detail = result.error or kept or shown or result.run_dir or ""
            say(
                f"[{next(counter)}/{len(points)}] {labels[result.name]}: {result.status}"
                + (f" ({result.seconds:.1f} s)" if result.seconds else "")
                + (f"  {detail}" if detail else "")
            )

        results, stopped_by = run_sweep(points, runs_dir, execution, report, manifest, say)
        again = continue_command("sweep", config, runs_dir, overrides, execution, grid, seeds)
        line, status = ending(results, stopped_by, folder, again)
        say(line)
        return status, results


@contextlib.contextmanager
def owning(runs_dir: Path, experiment: str, kind: str, *files: str) -> Iterator[None]:
    """A sweep or study (`kind`) owns its experiment folder while it runs (runs.lock_experiment); a
    mistake (a UserError: the memory check, a file that does not read) that stops it before any run
    folder exists in it removes its manifest (and `files`) again, and the folder when it made it."""
    folder = runs_dir / experiment
    with contextlib.closing(runs.lock_experiment(runs_dir, experiment, kind)):
        existed = folder.exists()
        try:
            yield
        except UserError:
            if not runs.run_folders(folder):
                for name in (MANIFEST, *files):
                    (folder / name).unlink(missing_ok=True)
                if not existed:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            raise


def ending(results: list[Result], stopped_by: int | None, folder: Path, again: str) -> tuple[str, int]:
    """A sweep's last line, its counts and what to do next, and its exit status: 128 + the signal
    that stopped it, 1 when a point failed, else 0."""
    counts = Counter(result.status for result in results)
    if stopped_by is not None:
        shown = ", ".join(f"{counts[s]} {s}" for s in ("finished", "diverged", "failed", "interrupted", "not started"))
        skipped = f", {counts['skipped']} skipped" if counts["skipped"] else ""
        return (
            f"sweep stopped by {signal.Signals(stopped_by).name}: {len(results)} points: {shown}{skipped}; "
            f"continue with: {again}"
        ), 128 + stopped_by
    shown = ", ".join(
        f"{counts[s]} {s}" for s in ("finished", "diverged", "failed", "skipped") if counts[s] or s == "failed"
    )
    failed = f"; run the failed ones again: {again}" if counts["failed"] else ""
    status = 1 if counts["failed"] else 0
    return f"sweep done: {len(results)} runs: {shown}; compare them: gdtrain compare {folder}{failed}", status


def run_sweep(
    points: list[Point],
    runs_dir: Path,
    execution: Execution,
    report: Callable[[Result], None],
    manifest: Manifest | None = None,
    say: Callable[[str], None] = lambda line: None,
    title: str = "",
) -> tuple[list[Result], int | None]:
    """Run the points as `execution` says: compatible points stacked `batch_runs` at most (None: as
    many as fit; gdtrain/execution/groups.py), `jobs` groups at a time, in this process, in worker
    processes or as submitit jobs; with `resume` skip finished points and continue interrupted ones.
    Report each result and record its run folder in `manifest`; then TensorBoard's groups
    (board.write_groups), also after a signal. Returns every point's result and the signal that
    stopped the sweep, if any. A stacked group trained in this process shows a progress bar in a
    terminal (`title` first: a study's phase) and reports each member as it ends."""
    jobs, options = execution.jobs, execution.job_options
    results: list[Result] = []
    tasks = []

    def record(result: Result) -> None:
        if manifest is not None and result.run_dir is not None:
            manifest.record(result.run_dir, result.name, runs.status(Path(result.run_dir)))

    for point in points:
        before = runs.previous_runs(runs_dir, point.config, point.name) if execution.resume else []
        done = next((run_dir for run_dir, status in before if status in runs.RESULTS), None)
        if done is not None:
            results.append(Result(point.name, "skipped", str(done)))
            record(results[-1])
            report(results[-1])
            continue
        # interrupted, or killed (no summary): continued from its newest checkpoint when it has one
        paused = next(
            (str(run_dir) for run_dir, status in reversed(before) if status in ("interrupted", "unfinished")), None
        )
        tasks.append(Task(point.raw, point.name, str(runs_dir), point.config.experiment.name, paused))
    units = groups.plan(tasks, execution.batch_runs, jobs) if tasks else []
    if any(task.stacked for unit in units for task in unit):
        sizes = ", ".join(str(len(unit)) for unit in units)
        say(
            f"stacked: {len(tasks)} runs train as {len(units)} group(s) of {sizes} runs "
            "(--batch-runs 1 trains each alone)"
        )
    parallel = jobs > 1 and len(units) > 1
    guard = Guard(
        message="stopping the sweep: the running points save a checkpoint and stop, no other point "
        "starts (again to stop them at once)"
        if parallel or options is not None
        else "stopping the sweep: no other point starts"
    )
    announced: set[str] = set()  # members reported as they ended, in this process

    def watch(k: int) -> Watch:
        def ended(result: Result) -> None:
            announced.add(result.name)
            with tqdm.external_write_mode():  # the line above the bar, not through it
                report(result)

        group = f"group {k}/{len(units)}" if len(units) > 1 else "group"
        return Watch(f"{title}: {group}" if title else group, ended)

    with guard.installed():
        position = {task.name: i for i, task in enumerate(tasks)}
        if options is not None:
            ended = run_units(units, options, jobs, guard)
        else:
            ended = run_parallel(units, jobs, guard) if parallel else _in_turn(units, guard, watch)
        for done in ended:
            for result in sorted(done, key=lambda r: position[r.name]):  # a group's in the grid's order
                results.append(result)
                record(result)
                if result.status != "not started" and result.name not in announced:
                    report(result)
                if result.status == "interrupted" and guard.signal is None:  # a signal to one run stops the sweep
                    guard.stop(result.signal or signal.SIGINT)
        for folder in sorted({runs_dir / point.config.experiment.name for point in points}):
            if folder.is_dir():  # TensorBoard: one line per configuration, from whatever finished
                board.write_groups(folder)
    ran = {result.name for result in results}
    return results + [Result(task.name, "not started") for task in tasks if task.name not in ran], guard.signal


def _in_turn(units: list[list[Task]], guard: Guard, watch: Callable[[int], Watch]) -> Iterator[list[Result]]:
    """The groups one after the other in this process, until a signal: each group's results."""
    for k, unit in enumerate(units, 1):
        if guard.signal is not None:
            return
        yield attempt(unit, guard, watch(k))
