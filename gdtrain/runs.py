"""Run folders: where a run writes, what it records about itself, and how it says it is done.

A run folder holds config.yaml (resolved config with provenance), TensorBoard event files,
metrics.jsonl and, written last and atomically, summary.json: a folder without it is unfinished.
One process at a time writes it: the one holding the flock on its .lock file, which names it.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from gdtrain import __version__
from gdtrain.errors import UserError


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
            f"{parent}: cannot create the run folder ({err.strerror or err}); "
            "choose a writable folder with --runs-dir"
        ) from None
    raise UserError(f"{parent}: too many runs named {run_name!r} this second; use --name")


def _git_commit() -> tuple[str | None, bool]:
    """(commit, dirty) of the checkout gdtrain runs from, or (None, False) outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit, bool(status.strip())


def provenance(device: torch.device, seed: int) -> dict[str, Any]:
    """What is needed to reproduce a run besides its config: versions, device, commit, command."""
    commit, dirty = _git_commit()
    return {
        "seed": seed,
        "gdtrain": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "git_commit": commit,
        "git_dirty": dirty,
        "command": shlex.join(["gdtrain", *sys.argv[1:]]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


LOCK_FILE = ".lock"  # in the run folder; holds its owner's PID


def lock_run(run_dir: Path) -> BinaryIO:
    """Own `run_dir` until the returned file is closed; a UserError naming the PID of another owner."""
    # An exclusive flock on .lock, which then holds this PID: the kernel drops it when the process
    # ends, however it ends, so a kill -9 leaves no stale lock. A .lock that cannot be written is an OSError.
    path = run_dir / LOCK_FILE
    # No O_TRUNC: while another process owns the folder, its PID must stay readable. The file is
    # never removed: a process that opened it just before a removal would lock a file nobody sees.
    lock = open(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b", buffering=0)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = lock.read(32).split(b"\n")[0].decode("ascii", "replace").strip() or "unknown"
        lock.close()
        raise UserError(f"{run_dir}: in use by process {owner} (see {path}); wait for it to end, or stop it "
                        "first: one process at a time trains a run folder") from None
    except OSError as err:  # a filesystem without locks (some network mounts): train, unguarded
        sys.stderr.write(f"warning: {path}: cannot lock ({err.strerror or err}); nothing stops a second process "
                         "from writing this run folder\n")
    try:  # written before the old end is cut, so a reader always finds a whole PID on the first line
        lock.write(f"{os.getpid()}\n".encode())
        lock.truncate()
    except OSError:
        lock.close()
        raise
    return lock


def create_run(runs_dir: Path, experiment: str, run_name: str, config_yaml: str,
               meta: dict[str, Any]) -> tuple[Path, BinaryIO]:
    """A new run folder, owned by this process (lock_run), with its config.yaml; no folder if that fails."""
    # A folder left with an empty config.yaml would read as a run: an empty config is valid, and
    # resume would train the default experiment in it.
    run_dir = new_run_dir(runs_dir, experiment, run_name)
    lock = None
    try:
        lock = lock_run(run_dir)  # a new folder: nobody else can own it
        write_config(run_dir, config_yaml, meta)
    except OSError as err:
        if lock is not None:
            lock.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        raise UserError(f"{run_dir.parent}: cannot write a run's config.yaml ({err.strerror or err}); no run "
                        "folder was kept: free some space or choose another --runs-dir") from None
    return run_dir, lock


def write_config(run_dir: Path, config_yaml: str, meta: dict[str, Any]) -> None:
    """config.yaml: provenance as comments, then the resolved config (runnable as it is); atomically."""
    header = "".join(f"# {key}: {value}\n" for key, value in meta.items())
    rerun = f"# rerun: gdtrain run {run_dir / 'config.yaml'}\n"
    write_atomic(run_dir / "config.yaml", (header + rerun + config_yaml).encode("utf-8"))


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


def _hparam_value(value: Any) -> int | float | str | bool:
    """HParams take numbers, strings and booleans only."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


EPOCH_TAG_SUFFIXES = ("/val", "/test")  # evaluation tags: one point per epoch, x = epoch


class Tracker:
    """Sends each logged point to TensorBoard and to metrics.jsonl in the run folder."""

    def __init__(self, run_dir: Path, resume_at: int | None = None) -> None:
        """A new tracker; with `resume_at` (a checkpoint's metrics.jsonl length) one that continues
        it: points logged after the checkpoint are dropped and the event files are rebuilt from
        metrics.jsonl, so TensorBoard shows each step once (only the points' wall times change)."""
        metrics = run_dir / "metrics.jsonl"
        replay: list[dict[str, Any]] = []
        if resume_at is not None:
            with open(metrics, "r+b") as f:
                f.truncate(resume_at)
            replay = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line]
            for old in run_dir.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(log_dir=str(run_dir))
        for line in replay:
            step, epoch = line.pop("step"), line.pop("epoch")
            for tag, value in line.items():
                self.writer.add_scalar(tag, value, epoch if tag.endswith(EPOCH_TAG_SUFFIXES) else step)
        self.lines = open(metrics, "a", encoding="utf-8")

    def log_step(self, values: dict[str, float], step: int, epoch: int) -> None:
        """Per-step values; TensorBoard's x axis is the optimizer step."""
        assert not any(tag.endswith(EPOCH_TAG_SUFFIXES) for tag in values), values
        self._log(values, step, step, epoch)

    def log_epoch(self, values: dict[str, float], step: int, epoch: int) -> None:
        """Per-epoch values (…/val, …/test); TensorBoard's x axis is the epoch, so batch sizes compare."""
        assert all(tag.endswith(EPOCH_TAG_SUFFIXES) for tag in values), values
        self._log(values, epoch, step, epoch)

    def _log(self, values: dict[str, float], x: int, step: int, epoch: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, x)
        self.lines.write(json.dumps({"step": step, "epoch": epoch, **values}) + "\n")

    def log_hparams(self, flat_config: dict[str, Any], metric_tags: list[str]) -> None:
        """HParams in this run's own event file (add_hparams would make a sub-run)."""
        values = {key: _hparam_value(v) for key, v in flat_config.items()}
        for summary in hparams(values, {tag: 0.0 for tag in metric_tags}):
            self.writer.file_writer.add_summary(summary)

    def flush(self) -> int:
        """Push everything logged so far to disk; the byte length of metrics.jsonl."""
        self.writer.flush()
        self.lines.flush()
        return self.lines.tell()

    def close(self) -> None:
        """Flush and close both outputs."""
        self.writer.close()
        self.lines.close()


class NullTracker:
    """What ranks other than 0 log to: nothing (rank 0 writes the run folder)."""

    def log_step(self, values: dict[str, float], step: int, epoch: int) -> None:
        """Nothing."""

    def log_epoch(self, values: dict[str, float], step: int, epoch: int) -> None:
        """Nothing."""

    def log_hparams(self, flat_config: dict[str, Any], metric_tags: list[str]) -> None:
        """Nothing."""

    def flush(self) -> int:
        """Nothing to flush."""
        return 0

    def close(self) -> None:
        """Nothing to close."""


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 0.1}} → {'optimizer.lr': 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
