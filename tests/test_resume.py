"""Runs that survive: checkpoints, exact resume after a real kill, signals, bad checkpoints, evaluate."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clihelp import gdtrain, one_error
from gdtrain.core.config import validate
from gdtrain.core.runs import run_folders
from gdtrain.training import checkpoints, recipe

# Mid-epoch checkpoints (every 70 steps, 250 steps an epoch), dropout, warm-up and a step
# schedule: every piece of state a resume has to restore.
EXPERIMENT = """\
experiment: {name: survive, seed: 3}
data: {name: blobs, n_samples: 2500, n_classes: 4, n_features: 8}
model: {name: mlp, hidden_sizes: [32], dropout: 0.2}
optimizer: {name: adam, lr: 0.003}
schedule: {name: step, step_size: 1, gamma: 0.7, warmup_steps: 25}
train: {epochs: 4, batch_size: 8, loss: cross_entropy, log_every: 7, checkpoint_every: 70, keep_last: 3}
"""


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "survive.yaml"
    path.write_text(EXPERIMENT)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The same experiment, never stopped: the reference every resumed run must equal."""
    root = tmp_path_factory.mktemp("full")
    path = root / "survive.yaml"
    path.write_text(EXPERIMENT)
    result = gdtrain("run", path, "--runs-dir", root / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    (run_dir,) = run_folders(root / "runs" / "survive")
    return run_dir


def start(config_file: Path, runs: Path) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "gdtrain", "run", str(config_file), "--runs-dir", str(runs), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_checkpoint(runs: Path, process: subprocess.Popen, timeout: float = 120) -> Path:
    """The run folder, once its first mid-epoch checkpoint exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(runs.glob("survive/*/checkpoints/step-*.pt"))
        if found:
            return found[0].parents[1]
        assert process.poll() is None, process.communicate()
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared")


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Same logged values, same TensorBoard scalars (each step once), same final parameters."""
    assert (resumed / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    final, expected = (torch.load(d / "model.pt", weights_only=True) for d in (resumed, reference))
    assert all(torch.equal(final[k], expected[k]) for k in expected)

    def scalars(run_dir: Path) -> dict:
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        events.Reload()
        return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    assert scalars(resumed) == scalars(reference)
    summary, reference_summary = (json.loads((d / "summary.json").read_text()) for d in (resumed, reference))
    assert summary["status"] == "finished"
    assert summary["final"] == reference_summary["final"] and summary["best"] == reference_summary["best"]
    assert (summary["steps"], summary["samples"]) == (reference_summary["steps"], reference_summary["samples"])


def test_killed_mid_epoch_then_resumed_equals_the_uninterrupted_run(config_file, tmp_path, uninterrupted):
    process = start(config_file, tmp_path / "runs")
    run_dir = wait_for_checkpoint(tmp_path / "runs", process)
    process.kill()  # SIGKILL: no handler, no goodbye
    process.wait()
    assert not (run_dir / "summary.json").exists()  # visibly unfinished
    step = int(checkpoints.Checkpoints(run_dir, 3, {}).latest().stem.split("-")[1])
    assert 0 < step < 1000 and step % 250 != 0  # mid-epoch
    result = gdtrain("resume", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (  # where it continues, before it trains: 250 steps an epoch
        f"resuming {run_dir} at epoch {step // 250 + 1}/4, its step {step % 250}, step {step} overall "
        f"(checkpoint step-{step:09d}.pt)"
    )
    assert_same_run(run_dir, uninterrupted)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_checkpoints_marks_interrupted_and_resumes_exactly(config_file, tmp_path, uninterrupted, sig, code):
    process = start(config_file, tmp_path / "runs")
    run_dir = wait_for_checkpoint(tmp_path / "runs", process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"gdtrain resume {run_dir}" in stderr.splitlines()[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["resume"] == f"gdtrain resume {run_dir}"
    assert Path(summary["checkpoint"]).exists()
    assert gdtrain("resume", run_dir, "--quiet").exit_code == 0
    assert_same_run(run_dir, uninterrupted)


def test_checkpoints_keep_the_last_few_and_the_best(uninterrupted):
    files = sorted(p.name for p in (uninterrupted / "checkpoints").iterdir())
    assert files == ["best.pt", "step-000000840.pt", "step-000000910.pt", "step-000000980.pt"]  # keep_last 3
    best = torch.load(uninterrupted / "checkpoints" / "best.pt", weights_only=True)
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert best["epoch"] == summary["best"]["loss/val_epoch"] and best["loss/val"] == summary["best"]["loss/val"]


def test_evaluate_reports_best_and_last(uninterrupted):
    summary = json.loads((uninterrupted / "summary.json").read_text())
    last = gdtrain("evaluate", uninterrupted)
    assert last.exit_code == 0, last.output
    assert f"loss/val {summary['final']['loss/val']:.4f}" in last.stdout
    best = gdtrain("evaluate", uninterrupted, "--checkpoint", "best")
    assert f"loss/val {summary['best']['loss/val']:.4f}" in best.stdout and "best.pt" in best.stdout


@pytest.fixture
def interrupted(tmp_path) -> Path:
    """A run folder with checkpoints and no summary, as a kill leaves it (made in-process, fast)."""
    raw = yaml.safe_load(EXPERIMENT)
    del raw["train"]["epochs"]
    raw["train"]["max_steps"] = 150
    run_dir, _ = recipe.run(validate(raw, "test"), tmp_path / "runs", quiet=True)
    (run_dir / "summary.json").unlink()
    (run_dir / "model.pt").unlink()
    return run_dir


def test_resume_refuses_a_corrupt_checkpoint(interrupted):
    latest = checkpoints.Checkpoints(interrupted, 3, {}).latest()
    latest.write_bytes(latest.read_bytes()[:300])
    line = one_error(gdtrain("resume", interrupted))
    assert str(latest) in line and "not a readable gdtrain checkpoint" in line


def test_resume_refuses_a_checkpoint_of_another_config(interrupted):
    config = interrupted / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.003", "lr: 0.01"))
    line = one_error(gdtrain("resume", interrupted))
    assert "written by a different config" in line and "optimizer.lr: 0.003 in the checkpoint, 0.01 now" in line


def test_loading_never_runs_code_from_a_checkpoint(interrupted, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    latest = checkpoints.Checkpoints(interrupted, 3, {}).latest()
    latest.write_bytes(pickle.dumps({"config": "{}", "model": Exploit()}))
    line = one_error(gdtrain("resume", interrupted))
    assert str(latest) in line
    assert not marker.exists()


def test_resume_of_a_finished_run_or_a_non_run_folder(uninterrupted, tmp_path):
    assert "already finished" in one_error(gdtrain("resume", uninterrupted))
    assert "not a run folder" in one_error(gdtrain("resume", tmp_path))
    assert "not a run folder" in one_error(gdtrain("evaluate", tmp_path))


def test_disk_full_while_training_stops_cleanly_and_keeps_what_was_written(config_file, tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def fill_up(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", fill_up)
    line = one_error(gdtrain("run", config_file, "--runs-dir", tmp_path / "runs", "--quiet"))
    assert "No space left on device" in line and "gdtrain resume" in line
    (run_dir,) = run_folders(tmp_path / "runs" / "survive")
    monkeypatch.undo()
    kept = checkpoints.Checkpoints(run_dir, 3, {}).latest()
    assert checkpoints.load(kept)["progress"]["outcome"]["steps"] > 0  # the last good checkpoint reads
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # no half-written file left
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert gdtrain("resume", run_dir, "--quiet").exit_code == 0  # and it carries on once there is room
