"""Commands that do not train import no torch, so they answer at once (docs/performance.md, "Start-up"), and
`--help` and `--version` do not build the config schema either.

Each command runs in a fresh interpreter (this one has torch loaded already), which then reports
whether `torch` is among its modules. The folders they read are written by hand: no run trains.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_mnist import make_set

ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI in-process, then writes the exit code and whether torch was imported to argv[1].
PROBE = """
import json, sys
from pathlib import Path
from gdtrain.cli import app
try:
    app(sys.argv[2:], prog_name="gdtrain")
    code = 0
except SystemExit as stop:
    code = stop.code or 0
Path(sys.argv[1]).write_text(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def imports_torch(*args: str | Path, tmp_path: Path) -> tuple[int, bool, str]:
    """(exit code, whether torch was imported, stdout) of `gdtrain ARGS` in a fresh interpreter."""
    report = tmp_path / "probe.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, report, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert report.exists(), done.stderr
    found = json.loads(report.read_text())
    return found["code"], found["torch"], done.stdout + done.stderr


def finished_run(folder: Path, lr: float, seed: int, accuracy: float) -> None:
    """A run folder as `gdtrain run` leaves it, written by hand."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        f"experiment: {{name: hand, seed: {seed}}}\noptimizer: {{name: sgd, lr: {lr}}}\n"
        "train: {loss: cross_entropy}\n"
    )
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 10, "epoch": 1, "accuracy/val": accuracy}) + "\n")
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "status": "finished",
                "final": {"accuracy/val": accuracy},
                "wall_seconds": 1.0,
                "samples_per_second": 100.0,
            }
        )
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["list"],
        ["run", "--help"],
        ["study", "--help"],
        ["check", "configs/mnist_adam.yaml", "--set", "data.root=/nonexistent"],
    ],
)
def test_commands_that_do_not_train_import_no_torch(args, tmp_path):
    code, torch_imported, out = imports_torch(*args, tmp_path=tmp_path)
    assert code == 0 and out.strip(), out
    assert not torch_imported, f"gdtrain {' '.join(args)} imported torch"


# Runs `gdtrain ARGS` as the console script does, then prints which of the heavy modules were imported.
HEAVY = """
import sys
from gdtrain.cli import main
sys.argv = ["gdtrain", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("imported:", sorted(m for m in ("torch", "gdtrain.core.config", "pydantic") if m in sys.modules))
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_import_neither_the_config_schema_nor_torch(args):
    """pydantic building the config schema is most of a slow start (benchmarks/startup.py); --help needs none of it."""
    done = subprocess.run([sys.executable, "-c", HEAVY, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "imported: []", done.stdout


def test_the_heavy_module_probe_sees_the_config_schema_when_a_command_loads_a_config():
    """The probe above can fail: `check` builds the schema."""
    done = subprocess.run(
        [sys.executable, "-c", HEAVY, "check", "configs/smoke.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    # and torch: check measures the optimizer's state by building it (training/memory.py probe_state)
    assert done.stdout.splitlines()[-1] == "imported: ['gdtrain.core.config', 'pydantic', 'torch']", done.stdout


def test_check_of_an_image_set_reads_headers_without_torch(tmp_path):
    make_set(tmp_path)
    code, torch_imported, out = imports_torch(
        "check", "configs/mnist_adam.yaml", "--set", f"data.root={tmp_path}", tmp_path=tmp_path
    )
    assert code == 0 and "memory" in out.lower(), out
    assert not torch_imported


def test_compare_imports_no_torch(tmp_path):
    for k, (lr, accuracy) in enumerate([(0.1, 0.9), (0.1, 0.92), (0.01, 0.5)]):
        finished_run(tmp_path / "hand" / f"sgd-lr{lr}-20261125-12000{k}", lr, k, accuracy)
    for fmt in ("table", "csv"):
        code, torch_imported, out = imports_torch("compare", tmp_path / "hand", "--format", fmt, tmp_path=tmp_path)
        assert code == 0 and "0.1" in out and "0.01" in out, out
        assert not torch_imported


def test_data_download_of_files_in_place_imports_no_torch(tmp_path):
    make_set(tmp_path)
    code, torch_imported, out = imports_torch("data", "download", "mnist", "--root", tmp_path, tmp_path=tmp_path)
    assert code == 0 and "4 files" in out, out
    assert not torch_imported


def test_a_command_that_trains_does_import_torch(tmp_path):
    """The probe sees torch when it is there: the tests above can fail."""
    code, torch_imported, _ = imports_torch(
        "run", "configs/smoke.yaml", "--runs-dir", tmp_path, "--quiet", tmp_path=tmp_path
    )
    assert code == 0 and torch_imported
