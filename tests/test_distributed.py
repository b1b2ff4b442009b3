"""Several processes, one run: DistributedDataParallel through torchrun, with gloo on this CPU.

Processes are started with tests/prochelp.py: each in a session of its own, killed with everything
it started (torchrun's workers included) when its test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gdtrain.cli import app
from gdtrain.core.runs import run_folders
from prochelp import Launch, launched, tagged

# 192 training samples in batches of 25: the last batch of each epoch (17) splits 8 / 9.
EXPERIMENT = """\
experiment: {name: ddp, seed: 1}
data: {name: blobs, n_samples: 240, n_classes: 3, n_features: 4}
model: {name: mlp, hidden_sizes: [16]}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
schedule: {name: step, step_size: 1, gamma: 0.5, warmup_steps: 4}
train: {epochs: 3, batch_size: 25, loss: cross_entropy, log_every: 3, checkpoint_every: 10}
"""
# 125,000 steps: still training long after any test has given up waiting for it to stop.
LONG = """\
experiment: {name: long, seed: 0}
data: {name: blobs, n_samples: 2000, n_classes: 3, n_features: 2}
model: {name: mlp, hidden_sizes: [16]}
optimizer: {name: adam, lr: 0.01}
train: {epochs: 1000, batch_size: 16, loss: cross_entropy, log_every: 5}
"""
PROBE = Path(__file__).with_name("ddp_probe.py")
TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2")


def gdtrain(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    with launched("-m", "gdtrain", *args) as launch:
        done = launch.finish()
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def wait_until(ready: Callable[[], bool], launch: Launch, what: str, timeout: float = 300) -> None:
    """Poll until `ready()`; fail with the launcher's output if it exits first or it never comes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if launch.process.poll() is not None:
            done = launch.finish()
            pytest.fail(f"exited {done.returncode} before {what}:\n{done.stderr[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.2)


def summary(runs_dir: Path) -> dict:
    """summary.json of the one run under runs_dir."""
    (run_dir,) = (p.parent for p in runs_dir.glob("*/*/config.yaml"))
    return json.loads((run_dir / "summary.json").read_text()) | {"run_dir": str(run_dir)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The experiment in one process and in two."""
    root = tmp_path_factory.mktemp("ddp")
    config = root / "ddp.yaml"
    config.write_text(EXPERIMENT)
    gdtrain("run", config, "--runs-dir", root / "one", "--quiet")
    gdtrain("run", config, "--runs-dir", root / "two", "--quiet", "--nproc", "2")
    return {"config": config, **{n: run_folders(root / n / "ddp")[0] for n in ("one", "two")}}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


def test_two_processes_reach_the_single_process_parameters(runs):
    one, two = weights(runs["one"]), weights(runs["two"])
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)
    summary = json.loads((runs["two"] / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 24  # the global batch is the config's


def test_validation_and_train_loss_are_the_global_figures(runs):
    lines = {
        n: [json.loads(line) for line in (runs[n] / "metrics.jsonl").read_text().splitlines()] for n in ("one", "two")
    }
    assert [sorted(m) for m in lines["one"]] == [sorted(m) for m in lines["two"]]
    for a, b in zip(lines["one"], lines["two"]):
        for tag in a:
            assert b[tag] == pytest.approx(a[tag], rel=1e-5, abs=1e-7), tag


def test_only_rank_zero_writes(runs):
    assert len(run_folders(runs["two"].parent)) == 1
    assert len(list(runs["two"].glob("events.out.tfevents.*"))) == 1


def test_resume_under_ddp_continues_exactly(runs, tmp_path):
    gdtrain("run", runs["config"], "--runs-dir", tmp_path, "--quiet", "--nproc", "2")
    run_dir = run_folders(tmp_path / "ddp")[0]
    for name in ("summary.json", "model.pt", "checkpoints/best.pt", "checkpoints/step-000000020.pt"):
        (run_dir / name).unlink()  # as if killed just after step 16's checkpoint
    state = torch.load(run_dir / "checkpoints" / "step-000000016.pt", weights_only=True)
    assert isinstance(state["rng"], list) and len(state["rng"]) == 2  # each rank's RNGs
    refused = CliRunner().invoke(app, ["resume", str(run_dir)])  # one process for a two-process run
    assert refused.exit_code == 2 and "resume it with as many (gdtrain resume --nproc 2" in refused.stderr
    gdtrain("resume", run_dir, "--quiet", "--nproc", "2")
    assert (run_dir / "metrics.jsonl").read_text() == (runs["two"] / "metrics.jsonl").read_text()
    resumed, reference = weights(run_dir), weights(runs["two"])
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_a_batch_too_small_to_share_is_refused_before_launching(runs, tmp_path):
    result = CliRunner().invoke(
        app, ["run", str(runs["config"]), "--runs-dir", str(tmp_path), "--nproc", "4", "--set", "train.batch_size=3"]
    )
    assert result.exit_code == 2 and "cannot be shared by 4 processes" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_with_nccl(runs, tmp_path):
    gdtrain("run", runs["config"], "--runs-dir", tmp_path, "--quiet", "--nproc", "2", "--device", "cuda")
    run_dir = run_folders(tmp_path / "ddp")[0]
    for name, value in weights(run_dir).items():
        torch.testing.assert_close(value, weights(runs["one"])[name], rtol=1e-4, atol=1e-5)


def test_no_ddp_wrapper_outlives_the_process_group(runs, tmp_path):
    # Freed after destroy_process_group(), DDP's Reducer can hang the rank at exit (pytorch#56297).
    with launched(
        *TORCHRUN, PROBE, "run", runs["config"], "--runs-dir", tmp_path, "--quiet", env={"PROBE": "teardown"}
    ) as launch:
        done = launch.finish()
    reports = sorted(line for line in done.stdout.splitlines() if "alive at destroy_process_group" in line)
    assert reports == [f"rank {r}: DDP wrappers alive at destroy_process_group: 0" for r in (0, 1)], done.stdout


def test_a_signal_during_the_stop_agreement_is_kept_for_the_next(runs, tmp_path):
    # Rank 0's SIGINT lands while the ranks agree at step 3, after its "no signal" went out.
    with launched(
        *TORCHRUN, PROBE, "run", runs["config"], "--runs-dir", tmp_path, "--quiet", env={"PROBE": "late-signal"}
    ) as launch:
        done = launch.finish()
    result = summary(tmp_path)
    assert result["status"] == "interrupted" and result["signal"] == signal.SIGINT, done.stderr[-3000:]
    assert result["steps"] == 6  # the next agreement


def test_a_signal_at_an_epoch_end_checkpoint_waits_for_the_next_agreement(runs, tmp_path):
    # Rank 1's SIGTERM lands during the epoch-end checkpoint (step 8), after the ranks agreed to go
    # on: rank 1 alone must not stop there, or rank 0 trains into a collective rank 1 never joins.
    with launched(
        *TORCHRUN, PROBE, "run", runs["config"], "--runs-dir", tmp_path, "--quiet", env={"PROBE": "checkpoint-signal"}
    ) as launch:
        done = launch.finish(timeout=240)
    result = summary(tmp_path)
    assert result["status"] == "interrupted" and result["signal"] == signal.SIGTERM, done.stderr[-3000:]
    assert result["steps"] == 11  # the next log point: 8 + log_every


def test_a_second_signal_while_the_ranks_leave_is_recorded(runs, tmp_path):
    # Training has stopped on SIGINT; rank 0 gets SIGTERM on its way out, before summary.json.
    with launched(
        *TORCHRUN, PROBE, "run", runs["config"], "--runs-dir", tmp_path, "--quiet", env={"PROBE": "second-signal"}
    ) as launch:
        done = launch.finish()
    assert "error: stopped at once by a second interrupt" in done.stderr, done.stderr[-3000:]
    result = summary(tmp_path)
    assert result["status"] == "interrupted" and result["resume"] == f"gdtrain resume --nproc 2 {result['run_dir']}"


def training(runs_dir: Path) -> Callable[[], bool]:
    """True once the run under runs_dir has logged its first point."""
    return lambda: any(p.stat().st_size for p in runs_dir.glob("*/*/metrics.jsonl"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_launcher_stops_every_rank_with_a_checkpoint(tmp_path, sig):
    config = tmp_path / "long.yaml"
    config.write_text(LONG)
    with launched("-m", "gdtrain", "run", config, "--nproc", "2", "--runs-dir", tmp_path / "runs", "--quiet") as launch:
        wait_until(training(tmp_path / "runs"), launch, "first log point")
        os.kill(launch.process.pid, sig)
        done = launch.finish(timeout=180)
        left = tagged(launch.tag)  # the launcher waits for its workers before it exits
    result = summary(tmp_path / "runs")
    assert done.returncode == 128 + sig, done.stderr[-3000:]
    assert not left
    assert result["status"] == "interrupted" and result["signal"] == sig
    assert f"continue with: gdtrain resume --nproc 2 {result['run_dir']}" in done.stderr
    assert any((Path(result["run_dir"]) / "checkpoints").glob("step-*.pt"))


def test_a_signal_to_one_rank_stops_the_run_and_the_launcher_says_so(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(LONG)
    with launched("-m", "gdtrain", "run", config, "--nproc", "2", "--runs-dir", tmp_path / "runs", "--quiet") as launch:
        wait_until(training(tmp_path / "runs"), launch, "first log point")
        os.kill(launch.ranks()[1], signal.SIGTERM)  # as a scheduler would, to one process
        done = launch.finish(timeout=180)
    assert done.returncode == 143, done.stderr[-3000:]
    assert "ChildFailedError" not in done.stderr and "failed (exitcode" not in done.stderr
    result = summary(tmp_path / "runs")
    assert result["status"] == "interrupted" and result["signal"] == signal.SIGTERM


def test_workers_do_not_outlive_a_killed_launcher(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(LONG)
    with launched("-m", "gdtrain", "run", config, "--nproc", "2", "--runs-dir", tmp_path / "runs", "--quiet") as launch:
        wait_until(training(tmp_path / "runs"), launch, "first log point")
        assert len(launch.ranks()) == 2
        os.kill(launch.process.pid, signal.SIGKILL)
        launch.process.wait()
        deadline = time.monotonic() + 180
        while tagged(launch.tag) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not tagged(launch.tag), "the workers train on without their launcher"
        output = launch.output(launch.err)  # the workers' too: they inherited the launcher's stderr
    # The kernel's SIGTERM on the parent's death is a signal like any: a checkpoint, then exit.
    result = summary(tmp_path / "runs")
    assert result["status"] == "interrupted" and result["signal"] == signal.SIGTERM, output[-3000:]


def test_the_parent_death_signal_twice_is_still_one_stop_with_a_checkpoint(tmp_path):
    # The kernel may send it once per dying thread of the launcher (see signals.die_with_parent).
    config = tmp_path / "long.yaml"
    config.write_text(LONG)
    with launched("-m", "gdtrain", "run", config, "--nproc", "2", "--runs-dir", tmp_path / "runs", "--quiet") as launch:
        wait_until(training(tmp_path / "runs"), launch, "first log point")
        ranks = launch.ranks()
        for pid in ranks.values():
            os.kill(pid, signal.SIGHUP)
        time.sleep(0.2)  # two deliveries, not one pending signal
        for pid in ranks.values():
            with contextlib.suppress(ProcessLookupError):  # stopped already
                os.kill(pid, signal.SIGHUP)
        done = launch.finish(timeout=180)
    assert done.returncode == 143, done.stderr[-3000:]
    result = summary(tmp_path / "runs")
    assert result["status"] == "interrupted" and result["signal"] == signal.SIGTERM, done.stderr[-3000:]


PARENT_DIES_TWICE = """
import signal, sys
from gdtrain.core import signals
signals.die_with_parent(None)
died = signal.getsignal(signal.SIGHUP)
stop = signals.Stop()
with signals.stop_on_signals(stop):
    died(signal.SIGHUP, None)  # the second parent-death signal comes before the first call has
    died(signal.SIGHUP, None)  # set SIGHUP aside: only the first call counts
    for _ in range(1000):  # the SIGTERMs are handled between bytecodes
        pass
print(stop.signal)
"""


def test_a_second_parent_death_signal_inside_the_handler_is_not_a_second_stop():
    # Seen once in 10 kills of a launcher: the kernel's second SIGHUP came in before the first
    # handler had set SIGHUP aside, the handler ran twice, and the second SIGTERM stopped the rank
    # at once, without its checkpoint.
    done = subprocess.run([sys.executable, "-c", PARENT_DIES_TWICE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(int(signal.SIGTERM))


def test_a_runs_folder_that_is_a_file_is_one_error_line_under_two_processes(runs, tmp_path):
    (tmp_path / "file").write_text("")
    done = gdtrain("run", runs["config"], "--runs-dir", tmp_path / "file", "--nproc", "2", check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if "error" in line.lower()] == [
        f"error: {tmp_path / 'file' / 'ddp'}: cannot create the run folder (Not a directory); "
        "choose a writable folder with --runs-dir"
    ]


def test_an_error_every_rank_meets_is_one_error_line(runs):
    done = gdtrain("resume", runs["two"], "--nproc", "2", check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert [line for line in done.stderr.splitlines() if "error" in line.lower()] == [
        f"error: {runs['two']}: already finished; nothing to resume "
        f"(gdtrain run {runs['two'] / 'config.yaml'} starts anew)"
    ]
