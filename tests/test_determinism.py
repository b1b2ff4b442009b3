"""Same config + seed + device → same numbers: two processes give byte-identical metric files and
equal weights; `train.deterministic` sets torch's flags and, on the CPU, changes no number."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gdtrain.core.config import load_config
from gdtrain.core.folders import read_rows
from gdtrain.core.runs import run_folders
from gdtrain.training import recipe
from gdtrain.training.determinism import set_determinism

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def start_run(runs_dir: Path, *args: str) -> subprocess.Popen:
    """`python -m gdtrain run configs/smoke.yaml` in a process of its own."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gdtrain",
            "run",
            str(SMOKE),
            "--runs-dir",
            str(runs_dir),
            "--device",
            "cpu",
            "--quiet",
            *args,
        ],
        cwd=runs_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_folder(runs_dir: Path) -> Path:
    (folder,) = run_folders(runs_dir / "smoke")
    return folder


def test_two_processes_give_the_same_metrics_and_weights(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [start_run(r) for r in runs]  # side by side: 2 cores, and scheduling must not matter
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    first, second = (run_folder(r) for r in runs)
    metrics = (first / "metrics.jsonl").read_bytes()
    assert metrics.count(b"\n") > 3 and metrics == (second / "metrics.jsonl").read_bytes()
    a, b = (torch.load(f / "model.pt", weights_only=True) for f in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def restore_determinism(monkeypatch):
    """Leave torch's global flags and the environment as they were (other tests share the process)."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2:]


def test_set_determinism_sets_and_clears_the_flags(restore_determinism):
    set_determinism(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()  # an op without a deterministic kernel raises
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    set_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_an_explicit_cublas_setting_is_kept(restore_determinism, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the other value torch accepts: less memory
    set_determinism(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_deterministic_mode_changes_no_number_on_the_cpu(tmp_path, restore_determinism):
    rows = {}
    for on in (False, True):
        config = load_config(SMOKE, ["train.device=cpu", f"train.deterministic={str(on).lower()}"])
        assert config.train.deterministic is on
        set_determinism(config.train.deterministic)  # what recipe.run does once it is wired in
        run_dir, outcome = recipe.run(config, tmp_path / str(on), quiet=True)
        assert outcome.status == "finished"
        rows[on] = read_rows(run_dir / "metrics.jsonl")
    assert len(rows[True]) > 3 and rows[True] == rows[False]
