"""Run folders: the one place that knows their name, how one is opened, and how one says it is done.

A run folder, `<runs-dir>/<experiment>/<run name>-YYYYmmdd-HHMMSS[-k]`, holds config.yaml (the
resolved config with provenance), TensorBoard event files, metrics.jsonl and, written last and
atomically, summary.json, whose `status` says how it ended: a folder without it is unfinished.
One process at a time writes it: the one holding the flock on its .lock file, which names it.
Everything here is torch-free, so the commands that only read runs start at once.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from gdtrain import __version__
from gdtrain.core import optimizers as registry
from gdtrain.core.config import Config, check_name, load_config, recorded_roots, to_dict
from gdtrain.core.errors import UserError
from gdtrain.core.yamlio import dump_yaml

if TYPE_CHECKING:
    import torch

STAMP = r"-\d{8}-\d{6}(-\d+)?"  # what new_run_dir adds to a run's name: -YYYYmmdd-HHMMSS[-k]
RUN_FOLDER = re.compile(".+" + STAMP)
RESULTS = ("finished", "diverged")  # statuses whose figures are results: rerunning gives the same
STATUSES = (*RESULTS, "interrupted", "failed")  # what summary.json can say; no summary: unfinished
EPOCH_TAG_SUFFIXES = ("/val", "/test")  # metrics.jsonl tags logged once per epoch: their x axis is the epoch


def run_name(config: Config, given: str | None = None) -> str:
    """The name a run's folder starts with: --name, else experiment.run_name, else `<optimizer>-lr<lr>`."""
    if given is not None:
        try:
            check_name(given)
        except ValueError as err:
            raise UserError(f"--name: {err}") from None
    optimizer = registry.display_name(config.optimizer.name)  # a folder name holds no ':'
    return given or config.experiment.run_name or f"{optimizer}-lr{config.optimizer.lr:g}"


def new_run_dir(runs_dir: Path, experiment: str, run_name: str) -> Path:
    """Create `runs_dir/experiment/run_name-YYYYmmdd-HHMMSS[-k]`, never reusing a folder."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    parent = runs_dir / experiment
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for k in range(1000):
            path = parent / (f"{run_name}-{stamp}" + (f"-{k}" if k else ""))
            try:
                path.mkdir()
                return path
            except FileExistsError:  # another run started in the same second
                continue
    except OSError as err:
        raise UserError(
            f"{parent}: cannot create the run folder ({err.strerror or err}); choose a writable folder with --runs-dir"
        ) from None
    raise UserError(f"{parent}: too many runs named {run_name!r} this second; use --name")


def _git_commit() -> tuple[str | None, bool]:
    """(commit, dirty) of the checkout gdtrain runs from, or (None, False) outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit, bool(status.strip())


INVOKED: list[str] = []  # how gdtrain was called from Python (api.py), innermost last; empty: the command line


def command() -> str:
    """What started this: the command line, or the Python call (gdtrain.run(...)) when one is running."""
    return INVOKED[-1] if INVOKED else shlex.join(["gdtrain", *sys.argv[1:]])


def provenance(device: torch.device, seed: int) -> dict[str, Any]:
    """What is needed to reproduce a run besides its config: versions, device, commit, command."""
    import torch  # only a run that trains asks, and it has torch loaded already

    commit, dirty = _git_commit()
    return {
        "seed": seed,
        "gdtrain": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),  # fitted to the free cores (gdtrain/training/device.py)
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "git_commit": commit,
        "git_dirty": dirty,
        "command": command(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


LOCK_FILE = ".lock"  # in the run folder; holds its owner's PID


def lock_run(run_dir: Path) -> BinaryIO:
    """Own `run_dir` until the returned file is closed; a UserError naming the PID of another owner."""
    path = run_dir / LOCK_FILE
    return _lock(
        path,
        lambda owner: (
            f"{run_dir}: in use by process {owner} (see {path}); wait for it to end, or stop it "
            "first: one process at a time trains a run folder"
        ),
    )


def lock_experiment(runs_dir: Path, experiment: str, kind: str) -> BinaryIO:
    """Own the experiment folder `runs_dir/experiment` for a sweep or study (`kind`) until the returned
    file is closed; a UserError naming the PID of the one that owns it. The lock file sits beside the
    folder, so a sweep refused before its first run leaves no folder."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f".{experiment}.lock"
    return _lock(
        path,
        lambda owner: (
            f"{runs_dir / experiment}: a sweep or study (process {owner}, see {path}) is writing it; "
            f"wait for it to end or stop it, or give this {kind} another folder (--runs-dir): two at once would "
            "train every point twice"
        ),
    )


def _lock(path: Path, busy: Callable[[str], str]) -> BinaryIO:
    """An exclusive flock on `path`, which then holds this PID; a UserError `busy(owner's PID)` when
    another process holds it."""
    # The kernel drops a flock when the process ends, however it ends, so a kill -9 leaves no stale
    # lock. A lock file that cannot be written is an OSError.
    # No O_TRUNC: while another process owns the file, its PID must stay readable. The file is
    # never removed: a process that opened it just before a removal would lock a file nobody sees.
    lock = open(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b", buffering=0)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = lock.read(32).split(b"\n")[0].decode("ascii", "replace").strip() or "unknown"
        lock.close()
        raise UserError(busy(owner)) from None
    except OSError as err:  # a filesystem without locks (some network mounts): go on, unguarded
        sys.stderr.write(
            f"warning: {path}: cannot lock ({err.strerror or err}); nothing stops a second process "
            "from writing the same folder\n"
        )
    try:  # written before the old end is cut, so a reader always finds a whole PID on the first line
        lock.write(f"{os.getpid()}\n".encode())
        lock.truncate()
    except OSError:
        lock.close()
        raise
    return lock


def create_run(runs_dir: Path, config: Config, name: str, meta: dict[str, Any]) -> tuple[Path, BinaryIO]:
    """A new folder for a run of `config` named `name` (see run_name), owned by this process
    (lock_run), with its config.yaml; no folder is left if that cannot be written."""
    # A folder left with an empty config.yaml would read as a run: an empty config is valid, and
    # resume would train the default experiment in it.
    config_yaml = dump_yaml(to_dict(config))
    run_dir = new_run_dir(runs_dir, config.experiment.name, name)
    lock = None
    try:
        lock = lock_run(run_dir)  # a new folder: nobody else can own it
        write_config(run_dir, config_yaml, meta)
    except OSError as err:
        if lock is not None:
            lock.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        raise UserError(
            f"{run_dir.parent}: cannot write a run's config.yaml ({err.strerror or err}); no run "
            "folder was kept: free some space or choose another --runs-dir"
        ) from None
    return run_dir, lock


def write_config(run_dir: Path, config_yaml: str, meta: dict[str, Any]) -> None:
    """config.yaml: provenance as comments, then the resolved config (runnable as it is); atomically."""
    header = "".join(f"# {key}: {value}\n" for key, value in meta.items())
    rerun = f"# rerun: gdtrain run {run_dir / 'config.yaml'}\n"
    write_atomic(run_dir / "config.yaml", (header + rerun + config_yaml).encode("utf-8"))


def load_run_config(run_dir: Path) -> Config:
    """A run folder's config.yaml, validated; a `module:Class` it names is looked for where the run found it."""
    # The header (write_config) records the class's file: from another folder, resume and evaluate
    # find the module there (config.look_beside); gone, the one line says where to put it.
    try:
        return load_config(run_dir / "config.yaml")
    except UserError as err:
        missing = recorded_roots(run_dir / "config.yaml")[1]
        if not missing:
            raise
        raise UserError(
            f"{run_dir}: this run imported {', '.join(missing)}, which is gone; run from the folder that "
            "holds the module now, or put that folder on PYTHONPATH"
        ) from err


def write_atomic(path: Path, data: bytes | memoryview, fsync: bool = False) -> None:
    """Write `data` beside `path` and rename it over `path`, so readers see the old or the new file whole."""
    # On failure (a full disk) the temporary file goes too: no empty or half-written file is left.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file, flushed to disk, renamed over `path` (see write_atomic)."""
    write_atomic(path, (json.dumps(data, indent=2, allow_nan=True) + "\n").encode("utf-8"), fsync=True)


def resume_command(run_dir: Path, nproc: int = 1) -> str:
    """`gdtrain resume [--nproc N] RUN`: a run resumes with the processes it was started with."""
    return f"gdtrain resume {f'--nproc {nproc} ' if nproc > 1 else ''}{run_dir}"


SUMMARY = "summary.json"  # written last, atomically: its status says how the run ended


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """summary.json, whole or not at all: from then on the run reads as ended (its `status`)."""
    write_json_atomic(run_dir / SUMMARY, summary)


def reopen(run_dir: Path) -> None:
    """Remove summary.json of a run that trains on (resume): it is unfinished again until it ends."""
    (run_dir / SUMMARY).unlink(missing_ok=True)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """summary.json as a dict with a string `status`; None when there is none or it does not read as one."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and isinstance(summary.get("status"), str) else None


def status(run_dir: Path) -> str:
    """How the run ended (STATUSES), from summary.json; `unfinished` without one, `corrupt` when it
    does not read."""
    summary = read_summary(run_dir)
    if summary is not None:
        return summary["status"]
    return "corrupt" if (run_dir / SUMMARY).exists() else "unfinished"


def record_failure(run_dir: Path, err: BaseException, meta: dict[str, Any], resume: str | None = None) -> None:
    """summary.json for a run stopped by an exception (a Ctrl-C: interrupted; else failed), when the
    disk still takes it; `resume` is the command that continues it."""
    status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
    record = {"status": status, "error": f"{type(err).__name__}: {err}"} | ({"resume": resume} if resume else {})
    try:
        write_summary(run_dir, record | {"environment": meta})
    except OSError:  # a full disk: the error the caller raises says why
        pass


def run_folders(folder: Path) -> list[Path]:
    """The run folders directly in an experiment folder, in name order: each folder with a config.yaml
    or a run folder's name (what TensorBoard's aggregates beside them, gdtrain/training/board.py, never have)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and ((p / "config.yaml").is_file() or RUN_FOLDER.fullmatch(p.name))
    )


def runs_named(runs_dir: Path, experiment: str, name: str) -> list[Path]:
    """The run folders of `experiment` made for the run name `name`, oldest first."""
    folder = runs_dir / experiment
    found = folder.glob(f"{glob.escape(name)}-*") if folder.is_dir() else []
    return sorted(p for p in found if re.fullmatch(re.escape(name) + STAMP, p.name))


def previous_runs(runs_dir: Path, config: Config, name: str) -> list[tuple[Path, str]]:
    """The runs named `name` with this very resolved config, and their status (STATUSES, `unfinished`
    without a summary: killed, or still training); oldest first."""
    runs = []
    for run_dir in runs_named(runs_dir, config.experiment.name, name):
        try:
            same = load_config(run_dir / "config.yaml") == config
        except UserError:  # a config.yaml that no longer reads (or none): not this config
            continue
        if same:
            runs.append((run_dir, status(run_dir)))
    return runs


def finished_run(runs_dir: Path, config: Config, name: str) -> Path | None:
    """A run named `name` with this resolved config whose result is in (RESULTS); None if there is none."""
    return next((run_dir for run_dir, status in previous_runs(runs_dir, config, name) if status in RESULTS), None)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 0.1}} → {'optimizer.lr': 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
