"""One process at a time owns a run folder: a second `gdtrain resume` is refused in one line that
names the owner's PID, and changes nothing. Real processes: the owner is frozen with SIGSTOP, so
the folder cannot change under the comparison, then killed with SIGKILL, which leaves no stale lock."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clihelp import gdtrain, one_error, write
from gdtrain.core import runs
from gdtrain.core.errors import UserError

# Minutes of training: the owner is frozen and killed long before it could finish.
LONG = """\
experiment: {name: owned, seed: 0}
data: {name: blobs, n_samples: 2000, n_classes: 4, n_features: 8}
model: {name: mlp, hidden_sizes: [32]}
optimizer: {name: adam, lr: 0.003}
train: {epochs: 1000, batch_size: 8, loss: cross_entropy, log_every: 25, checkpoint_every: 50}
"""


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen]]:
    """Starts `python -m gdtrain ARGS` in its own process group; kills every group at the end."""
    started: list[subprocess.Popen] = []

    def start(*args: str | Path) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "gdtrain", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the group: torchrun's ranks too, if any
        except ProcessLookupError:
            pass
        process.communicate()


def wait_until(check: Callable[[], bool], owner: subprocess.Popen, timeout: float = 180) -> None:
    """Poll `check` while `owner` runs."""
    deadline = time.monotonic() + timeout
    while not check():
        assert owner.poll() is None, owner.communicate()
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


def lock_pid(run_dir: Path) -> int | None:
    """The PID in the run folder's lock file, or None."""
    try:
        return int((run_dir / runs.LOCK_FILE).read_text().split("\n")[0])
    except (OSError, ValueError):
        return None


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file below `folder`: size, modification time and content hash."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in files
    }


def refused_by(owner: subprocess.Popen, run_dir: Path, start: Callable[..., subprocess.Popen]) -> None:
    """With `owner` frozen: a second resume, as a process and in-process with --nproc 2, is refused
    in one line naming the owner's PID, and the folder is byte for byte as it was."""
    os.killpg(owner.pid, signal.SIGSTOP)  # the lock stays held; nothing in the folder changes
    before = snapshot(run_dir)
    second = start("resume", run_dir, "--quiet")
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 2, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error: ") and f"in use by process {owner.pid} " in stderr
    launcher = one_error(gdtrain("resume", run_dir, "--nproc", "2", "--quiet"))  # refused before torchrun starts
    assert f"in use by process {owner.pid} " in launcher
    assert snapshot(run_dir) == before  # no event file, metrics line or summary change


def test_a_second_resume_is_refused_and_a_killed_owner_leaves_no_lock(tmp_path, processes):
    config = write(tmp_path, LONG)
    trainer = processes("run", config, "--runs-dir", tmp_path / "runs", "--quiet")
    wait_until(lambda: any(tmp_path.glob("runs/owned/*/checkpoints/step-*.pt")), trainer)
    (run_dir,) = runs.run_folders(tmp_path / "runs" / "owned")
    assert lock_pid(run_dir) == trainer.pid  # `gdtrain run` owns its folder from the start
    refused_by(trainer, run_dir, processes)

    os.killpg(trainer.pid, signal.SIGKILL)  # no handler, no goodbye: the kernel drops the lock
    trainer.communicate()
    resumed = processes("resume", run_dir, "--quiet")
    wait_until(lambda: lock_pid(run_dir) == resumed.pid, resumed)  # it took the lock over
    refused_by(resumed, run_dir, processes)


def test_a_lock_is_held_per_open_and_released_on_close(tmp_path):
    held = runs.lock_run(tmp_path)
    with pytest.raises(UserError, match=f"in use by process {os.getpid()} "):
        runs.lock_run(tmp_path)  # flock belongs to the open file, so even this process is refused
    held.close()
    runs.lock_run(tmp_path).close()
