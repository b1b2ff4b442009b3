"""gdtrain from Python (a notebook, a script): run a config, a sweep or a study, and read run folders
back as rows. A thin layer over what the commands call, so a run, its folder and its numbers are the
command's; a mistake raises `UserError` carrying the one line the command would print. docs/python.md.

    import gdtrain
    result = gdtrain.run("configs/synthetic_moons_mlp.yaml", overrides=["optimizer.lr=0.003"])
    result.final["accuracy/val"], result.run_dir
    gdtrain.rows("runs/synthetic_moons")          # one dict per run folder
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdtrain.core import folders, runs
from gdtrain.core.errors import UserError

Say = Callable[..., None]


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Says nothing."""


def _printer(verbose: bool) -> Say:
    """typer.echo's signature over print (stderr for err=True), or silence."""
    import sys

    if not verbose:
        return _quiet
    return lambda message="", err=False, **_: print(message, file=sys.stderr if err else sys.stdout)


@dataclass(frozen=True)
class RunResult:
    """One run as its folder records it: where, how it ended, its last and best logged values."""

    run_dir: Path
    status: str  # finished, diverged, interrupted, failed, skipped, ... (docs/runs.md)
    final: dict[str, float]  # every tag's last logged value: loss/train, accuracy/val, accuracy/test, ...
    best: dict[str, float]  # the best validation values and the steps they came at
    summary: dict[str, Any] = field(repr=False)  # summary.json as written (empty while the run has none)


@dataclass(frozen=True)
class StudyResult:
    """A study's answer: its folder, its verdict in words, results.json, and the command's exit status."""

    folder: Path
    status: int  # 0: the verdict is written; else as the command exits (1: a run did not end, 128 + signal)
    verdict: list[str]  # the lines `gdtrain study` prints
    results: dict[str, Any] = field(repr=False)  # results.json (empty when there is none)


def _result(run_dir: Path | str | None, status: str) -> RunResult:
    if run_dir is None:
        return RunResult(Path(), status, {}, {}, {})
    run = folders.read_run(Path(run_dir))
    summary = run.summary
    return RunResult(Path(run_dir), status, dict(summary.get("final") or {}), dict(summary.get("best") or {}), summary)


@contextlib.contextmanager
def _invoked(call: str) -> Iterator[None]:
    """Record `call` (gdtrain.run(...)) as the command in the provenance of the runs it starts."""
    runs.INVOKED.append(call)
    try:
        yield
    finally:
        runs.INVOKED.pop()


def _call(function: str, *args: Any, **kwargs: Any) -> str:
    shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items() if v not in (None, (), [], False)]
    return f"gdtrain.{function}({', '.join(shown)})"


def _whole(name: str, value: int | None, least: int = 1) -> None:
    """The command's own range checks on a count (its --seeds, --jobs, --batch-runs)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise UserError(f"{name}: must be a whole number >= {least}, got {value!r}")


def _file(path: Any, what: str) -> Path:
    if not isinstance(path, (str, Path)):
        raise UserError(f"{what}: give the path of a YAML file, got {type(path).__name__}")
    return Path(path)


def _config(config: str | Path | dict[str, Any], overrides: Sequence[str]) -> Any:
    """A validated Config from a file or a document, with `key.path=value` overrides applied."""
    from gdtrain.core.config import apply_overrides, load_config, validate

    if isinstance(config, dict):
        return validate(apply_overrides(copy.deepcopy(config), list(overrides)), "config")
    return load_config(Path(config), list(overrides))


def run(
    config: str | Path | dict[str, Any],
    overrides: Sequence[str] = (),
    runs_dir: str | Path = "runs",
    name: str | None = None,
    verbose: bool = False,
) -> RunResult:
    """Train one config (a YAML file or the same document as a dict) into a new run folder under
    `runs_dir`, as `gdtrain run` does; its result. `verbose` prints the command's lines (no bar)."""
    from gdtrain.training import closing, recipe

    cfg = _config(config, overrides)
    say = _printer(verbose)
    shown = config if not isinstance(config, dict) else "{...}"
    with _invoked(_call("run", str(shown), overrides=list(overrides), runs_dir=str(runs_dir), name=name)):
        run_dir, outcome = recipe.run(cfg, Path(runs_dir), name, quiet=True, say=say)
    closing.ending(run_dir, outcome, cfg, say)  # finished / diverged / interrupted, as the command says it
    if outcome.status == "interrupted":  # Ctrl-C (a notebook's interrupt): the checkpoint is kept
        raise KeyboardInterrupt
    return _result(run_dir, outcome.status)


def sweep(
    config: str | Path,
    grid: dict[str, Sequence[Any]] | None = None,
    seeds: int | None = None,
    overrides: Sequence[str] = (),
    runs_dir: str | Path = "runs",
    jobs: int = 1,
    batch_runs: int | None = None,
    resume: bool = False,
    verbose: bool = False,
) -> list[RunResult]:
    """Run a config file's grid (its `grid:` section and `grid`: {key.path: values}) over `seeds`, as
    `gdtrain sweep` does (stacked where runs fit together, `jobs` at once); one result per point."""
    from gdtrain.execution import options
    from gdtrain.execution import sweep as sweeping

    _whole("seeds", seeds)
    _whole("jobs", jobs)
    _whole("batch_runs", batch_runs)
    execution = options.execution(jobs, batch_runs, None, None, None, None, resume)
    say = _printer(verbose)
    path, options_ = _file(config, "sweep"), _grid_options(grid)
    call = _call("sweep", str(path), grid=grid, seeds=seeds, overrides=list(overrides), runs_dir=str(runs_dir))
    with _invoked(call):
        status, results = sweeping.sweep_file(path, options_, seeds, list(overrides), Path(runs_dir), execution, say)
    if status >= 128:  # a signal (Ctrl-C, a notebook's interrupt): the runs keep checkpoints; resume=True goes on
        raise KeyboardInterrupt
    return [_result(r.run_dir, r.status) for r in results]


def _grid_options(grid: dict[str, Sequence[Any]] | None) -> list[str]:
    """{"optimizer.lr": [0.1, 0.01]} as the command's --grid options (JSON is YAML: values keep their types)."""
    options = []
    for key, values in (grid or {}).items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise UserError(f"grid {key}: give a list of values, e.g. {{'{key}': [0.1, 0.01]}}")
        options.append(f"{key}=" + ",".join(json.dumps(v) for v in values))
    return options


def run_study(
    study_file: str | Path,
    overrides: Sequence[str] = (),
    runs_dir: str | Path = "runs",
    resume: bool = False,
    jobs: int = 1,
    batch_runs: int | None = None,
    verbose: bool = False,
) -> StudyResult:
    """Tune, rerun and judge every optimizer of a study file, as `gdtrain study` does; its verdict."""
    from gdtrain.execution import options
    from gdtrain.study import runner, spec
    from gdtrain.study.report import verdict_lines

    _whole("jobs", jobs)
    _whole("batch_runs", batch_runs)
    execution = options.execution(jobs, batch_runs, None, None, None, None, resume)
    path = _file(study_file, "run_study")
    planned = spec.load_study(path, list(overrides))
    with _invoked(_call("run_study", str(path), overrides=list(overrides), runs_dir=str(runs_dir), resume=resume)):
        folder, results, code = runner.run_study(planned, Path(runs_dir), execution, _printer(verbose))
    if code >= 128:  # a signal: every run is kept; resume=True goes on
        raise KeyboardInterrupt
    if results is None:
        return StudyResult(folder, code, [], {})
    lines = [line.replace("**", "") for line in verdict_lines(results)]
    saved = folder / "results.json"
    return StudyResult(folder, 0, lines, json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {})


def rows(folder: str | Path) -> list[dict[str, Any]]:
    """Every run folder under `folder`, one dict each: `run_dir`, `status`, the flat config
    (`optimizer.lr`, ...), each final value as `final/<tag>` and each best as `best/<tag>`. Nothing is
    left out or merged: compare's table is `gdtrain compare`."""
    table = []
    for run in folders.read_runs(Path(folder)):
        final = run.summary.get("final") or {}
        best = run.summary.get("best") or {}
        table.append(
            {"run_dir": str(run.path), "status": run.status}
            | dict(run.config)
            | {f"final/{tag}": value for tag, value in final.items()}
            | {f"best/{tag}": value for tag, value in best.items()}
        )
    return table


def frame(folder: str | Path) -> Any:
    """rows(folder) as a pandas DataFrame (pandas is not a dependency of gdtrain: install it to use this)."""
    try:
        import pandas
    except ImportError:
        raise UserError("gdtrain.frame needs pandas, which is not installed; pip install pandas") from None
    return pandas.DataFrame(rows(folder))
