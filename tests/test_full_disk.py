"""A full disk, for real: a small tmpfs (when this machine lets the tests mount one) and a per-file
size limit (RLIMIT_FSIZE, anywhere). Full at the start leaves no run folder; full mid-run stops
with one line, no traceback and no half-written file, and the run resumes once there is room."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from clihelp import gdtrain, one_error, write
from gdtrain.core import runs
from gdtrain.training import checkpoints

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"

# A checkpoint (weights and Adam's two moments) of ~830 kB and a model.pt of ~280 kB, while
# config.yaml, metrics.jsonl and the event file stay a few kB: the checkpoints fill the disk.
BIG = """\
experiment: {name: big, seed: 0}
data: {name: blobs, n_samples: 400, n_classes: 4, n_features: 8}
model: {name: mlp, hidden_sizes: [256, 256]}
optimizer: {name: adam, lr: 0.001}
train: {epochs: 3, batch_size: 50, loss: cross_entropy, log_every: 8}
"""


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs of a given size (`512k`); skips where mounting is not allowed (not root)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root; the RLIMIT_FSIZE tests cover a full disk here")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the RLIMIT_FSIZE tests cover it")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path) -> None:
    """Write zeros until the disk refuses another byte."""
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(4096))
        except OSError as err:
            assert err.errno == errno.ENOSPC


def files(folder: Path) -> list[str]:
    """Every file below `folder`, relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_disk_full_at_the_start_leaves_no_run_folder(small_disk, tmp_path):
    disk = small_disk("256k")
    (disk / "runs").mkdir()
    fill(disk)
    line = one_error(gdtrain("run", SMOKE, "--runs-dir", disk / "runs", "--quiet"))
    assert "No space left on device" in line and str(disk / "runs") in line
    assert list((disk / "runs").glob("*/*")) == []  # no run folder: nothing resume could mistake for a run


def test_disk_full_at_a_checkpoint_stops_cleanly_then_resumes_once_there_is_room(small_disk, tmp_path):
    disk = small_disk("1536k")  # best.pt and the first checkpoint fit, the second checkpoint does not
    line = one_error(gdtrain("run", write(tmp_path, BIG), "--runs-dir", disk, "--quiet"))
    assert "No space left on device" in line and "gdtrain resume" in line
    (run_dir,) = runs.run_folders(disk / "big")
    assert not [f for f in files(run_dir) if f.endswith(".tmp")]  # every temporary file removed
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    latest = checkpoints.Checkpoints(run_dir, 2, {}).latest()
    assert checkpoints.load(latest)["progress"]["outcome"]["steps"] == 7  # epoch 1 (320 samples, batches of 50), whole
    subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)  # room again
    result = gdtrain("resume", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_disk_full_at_model_pt_leaves_no_partial_file(small_disk, tmp_path):
    disk = small_disk("512k")  # best.pt (~280 kB) fits at the end, model.pt beside it does not
    config = write(tmp_path, BIG.replace("epochs: 3", "epochs: 1"))
    line = one_error(gdtrain("run", config, "--runs-dir", disk, "--quiet"))
    assert "No space left on device" in line
    (run_dir,) = runs.run_folders(disk / "big")
    assert files(run_dir) == sorted(
        [
            "checkpoints/best.pt",
            "config.yaml",
            "metrics.jsonl",
            "summary.json",
            ".lock",
            *(p.name for p in run_dir.glob("events.out.tfevents.*")),
        ]
    )
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text('{"status": "interrupted"}')

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", full)
    with pytest.raises(OSError):
        runs.write_json_atomic(target, {"status": "finished"})
    assert files(tmp_path) == ["summary.json"]
    assert target.read_text() == '{"status": "interrupted"}'  # the old one, whole


def test_saving_to_a_full_disk_is_an_oserror_and_leaves_nothing(small_disk):
    disk = small_disk("64k")
    fill(disk)
    with pytest.raises(OSError) as raised:
        checkpoints.save_atomic({"w": torch.zeros(100_000)}, disk / "model.pt")
    assert raised.value.errno == errno.ENOSPC
    assert files(disk) == ["filler"]


def limited(limit: int) -> None:
    """In the child before exec: files stop growing at `limit` bytes; a write past it is then an
    OSError (EFBIG) instead of SIGXFSZ killing the process (an ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def gdtrain_limited(limit: int, *args: str | Path) -> subprocess.CompletedProcess:
    """gdtrain in its own process group, with writes past `limit` bytes per file failing."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gdtrain", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: limited(limit),
    )
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_a_config_that_cannot_be_written_leaves_no_run_folder(tmp_path):
    done = gdtrain_limited(600, "run", SMOKE, "--runs-dir", tmp_path / "runs", "--quiet")  # config.yaml is ~1.5 kB
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1, done.stderr
    assert "File too large" in done.stderr
    assert list((tmp_path / "runs").glob("*/*")) == []


def test_a_checkpoint_that_cannot_be_written_stops_with_one_line(tmp_path):
    done = gdtrain_limited(200_000, "run", write(tmp_path, BIG), "--runs-dir", tmp_path / "runs", "--quiet")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1, done.stderr
    assert "File too large" in done.stderr and "gdtrain resume" in done.stderr
    (run_dir,) = runs.run_folders(tmp_path / "runs" / "big")
    assert not [f for f in files(run_dir) if f.endswith(".tmp") or f.startswith("checkpoints/step-")]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("limit", [600, 8_000], ids=["config.yaml", "path.png"])
def test_a_function_run_that_cannot_write_stops_with_one_line(tmp_path, limit):
    pytest.importorskip("matplotlib.font_manager")  # builds its font cache here, not in the limited process
    path_config = SMOKE.parent / "path_quadratic_sgd.yaml"  # config.yaml ~0.8 kB, path.png ~70 kB
    done = gdtrain_limited(limit, "run", path_config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1, done.stderr
    assert "File too large" in done.stderr
    if limit == 600:
        assert list((tmp_path / "runs").glob("*/*")) == []
    else:
        (run_dir,) = runs.run_folders(tmp_path / "runs" / "path_quadratic")
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
