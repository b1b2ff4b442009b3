"""One sweep or study at a time writes an experiment folder (real processes): a second one is refused
in one line naming the owner's PID, exit 2, before it trains or writes anything; the owner's kill -9
frees the folder for --resume. A sweep stopped by a mistake before its first run leaves no folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

from clihelp import gdtrain, one_error
from prochelp import launched

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
PATIENCE = 300  # seconds, on 2 shared cores


def test_a_second_sweep_into_a_folder_a_sweep_owns_is_refused_and_the_owner_s_kill_frees_it(tmp_path):
    runs = tmp_path / "runs"
    args = ["sweep", SMOKE, "--grid", "optimizer.lr=0.01,0.02", "--set", "train.epochs=100000", "--runs-dir", runs]
    with launched("-m", "gdtrain", *args) as first:
        lock = runs / ".smoke.lock"
        deadline = time.monotonic() + PATIENCE
        while not list(runs.glob("smoke/*/checkpoints/step-*.pt")):  # training, the folder owned
            assert first.process.poll() is None and time.monotonic() < deadline, first.output(first.err)
            time.sleep(0.05)
        before = sorted(p.name for p in (runs / "smoke").iterdir())
        manifest = (runs / "smoke" / "manifest.json").read_text()
        for again in (args, [*args, "--resume"]):
            line = one_error(gdtrain(*again))
            assert f"(process {first.process.pid}, see {lock}) is writing it" in line, line
        assert sorted(p.name for p in (runs / "smoke").iterdir()) == before  # nothing trained, nothing written
        assert (runs / "smoke" / "manifest.json").read_text() == manifest
        first.kill()  # kill -9 of the whole group: the kernel drops the lock
    resumed = gdtrain(*args[:-4], "--set", "train.epochs=2", "--runs-dir", runs, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((runs / "smoke" / "manifest.json").read_text())["runs"]


def test_a_study_into_a_folder_a_study_owns_is_refused(tmp_path):
    from test_study import small

    runs = tmp_path / "runs"
    base = {"data": {"name": "moons", "n_samples": 200}, "train": {"epochs": 100000, "loss": "bce"}}
    path = small(tmp_path, base=base)
    with launched("-m", "gdtrain", "study", path, "--runs-dir", runs) as first:
        deadline = time.monotonic() + PATIENCE
        while not list(runs.glob("small/*/checkpoints/step-*.pt")):
            assert first.process.poll() is None and time.monotonic() < deadline, first.output(first.err)
            time.sleep(0.05)
        line = one_error(gdtrain("study", path, "--runs-dir", runs, "--resume"))
        assert f"(process {first.process.pid}, see {runs / '.small.lock'}) is writing it" in line


def test_a_sweep_refused_by_the_memory_check_leaves_no_folder(tmp_path):
    result = gdtrain(
        "sweep", SMOKE, "--grid", "optimizer.lr=0.01,0.02", "--set", "data.n_samples=3000000000", "--runs-dir", tmp_path
    )
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "smoke").exists(), list((tmp_path / "smoke").rglob("*"))
