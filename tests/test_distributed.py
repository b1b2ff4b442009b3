"""Several processes, one run: DistributedDataParallel through torchrun, with gloo on this CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gdtrain.cli import app

# 192 training samples in batches of 25: the last batch of each epoch (17) splits 8 / 9.
EXPERIMENT = """\
experiment: {name: ddp, seed: 1}
data: {name: blobs, n_samples: 240, n_classes: 3, n_features: 4}
model: {name: mlp, hidden_sizes: [16]}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
schedule: {name: step, step_size: 1, gamma: 0.5, warmup_steps: 4}
train: {epochs: 3, batch_size: 25, loss: cross_entropy, log_every: 3, checkpoint_every: 10}
"""


def gdtrain(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "gdtrain", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The experiment in one process and in two."""
    root = tmp_path_factory.mktemp("ddp")
    config = root / "ddp.yaml"
    config.write_text(EXPERIMENT)
    gdtrain("run", config, "--runs-dir", root / "one", "--quiet")
    gdtrain("run", config, "--runs-dir", root / "two", "--quiet", "--nproc", "2")
    return {"config": config, **{n: next((root / n / "ddp").iterdir()) for n in ("one", "two")}}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


def test_two_processes_reach_the_single_process_parameters(runs):
    one, two = weights(runs["one"]), weights(runs["two"])
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)
    summary = json.loads((runs["two"] / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 24  # the global batch is the config's


def test_validation_and_train_loss_are_the_global_figures(runs):
    lines = {n: [json.loads(line) for line in (runs[n] / "metrics.jsonl").read_text().splitlines()] for n in ("one", "two")}
    assert [sorted(m) for m in lines["one"]] == [sorted(m) for m in lines["two"]]
    for a, b in zip(lines["one"], lines["two"]):
        for tag in a:
            assert b[tag] == pytest.approx(a[tag], rel=1e-5, abs=1e-7), tag


def test_only_rank_zero_writes(runs):
    assert len(list(runs["two"].parent.iterdir())) == 1
    assert len(list(runs["two"].glob("events.out.tfevents.*"))) == 1


def test_resume_under_ddp_continues_exactly(runs, tmp_path):
    gdtrain("run", runs["config"], "--runs-dir", tmp_path, "--quiet", "--nproc", "2")
    run_dir = next((tmp_path / "ddp").iterdir())
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
    result = CliRunner().invoke(app, ["run", str(runs["config"]), "--runs-dir", str(tmp_path), "--nproc", "4",
                                      "--set", "train.batch_size=3"])
    assert result.exit_code == 2 and "cannot be shared by 4 processes" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_with_nccl(runs, tmp_path):
    gdtrain("run", runs["config"], "--runs-dir", tmp_path, "--quiet", "--nproc", "2", "--device", "cuda")
    run_dir = next((tmp_path / "ddp").iterdir())
    for name, value in weights(run_dir).items():
        torch.testing.assert_close(value, weights(runs["one"])[name], rtol=1e-4, atol=1e-5)
