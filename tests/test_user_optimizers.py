"""A user's own optimizer class (`name: "module:Class"`) beside its config: found from any folder in
`run`, `sweep` and `study`, its settings checked against its signature (one line, exit 2, no run
folder), its origin in the run's provenance, `check` naming the module; Schedule-Free's train/eval
modes at the right moments, resumed exactly."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from clihelp import gdtrain, one_error, write
from gdtrain.core.config import load_config
from gdtrain.core.runs import run_folders
from gdtrain.training import recipe
from prochelp import launched

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "signsgd.py"
TINY = """\
experiment: {{name: mine, seed: 0}}
data: {{name: blobs, n_samples: 120, n_classes: 3, n_features: 2}}
model: {{name: mlp, hidden_sizes: [8]}}
optimizer: {optimizer}
train: {{epochs: 2, batch_size: 16, loss: cross_entropy, log_every: 4}}
"""


LENIENT = """\
import torch


class Lenient(torch.optim.SGD):  # checks nothing of its own
    def __init__(self, params, lr=0.1, sizes: tuple[float, ...] = (1.0, 2.0)):
        super().__init__(params, lr=abs(lr) or 0.1)
"""
NAMED = LENIENT.replace("Lenient", "Named").replace("sizes: tuple[float, ...] = (1.0, 2.0)", "name: str = 'x'")
STUMBLES = (
    LENIENT.replace("Lenient", "Stumbles")
    + """
    def step(self, closure=None):
        raise RuntimeError("boom")
"""
)


def module_beside(folder: Path, source: str = "") -> str:
    """A module of a name no other test uses, in `folder`: the example's SignSGD unless `source` says otherwise."""
    name = f"mine_{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source or EXAMPLE.read_text())
    return name


def config_beside(folder: Path, optimizer: str) -> Path:
    return write(folder, TINY.format(optimizer=optimizer), "mine.yaml")


def python(*args: str | Path, cwd: Path, timeout: float = 300):
    """`python *args` in `cwd`, in a session of its own, killed with its process group at the end."""
    with launched(*args, cwd=cwd) as launch:
        return launch.finish(timeout)


def test_the_example_trains_from_another_folder_and_records_its_origin(tmp_path):
    config = ROOT / "examples" / "signsgd.yaml"
    checked = python("-m", "gdtrain", "check", config, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert f"# imports signsgd from {EXAMPLE}" in checked.stdout.splitlines()
    done = python("-m", "gdtrain", "run", config, "--runs-dir", tmp_path / "runs", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = run_folders(tmp_path / "runs" / "signsgd_example")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["environment"]["optimizer_module"] == "signsgd"
    assert summary["environment"]["optimizer_file"] == str(EXAMPLE)
    assert f"# optimizer_file: {EXAMPLE}\n" in (run_dir / "config.yaml").read_text()


def test_third_party_class_records_its_package_version(tmp_path):
    pytest.importorskip("lion_pytorch")
    path = config_beside(tmp_path, '{name: "lion_pytorch:Lion", lr: 0.001}')
    assert gdtrain("run", path, "--runs-dir", tmp_path / "runs", "--quiet").exit_code == 0
    (run_dir,) = run_folders(tmp_path / "runs" / "mine")
    environment = json.loads((run_dir / "summary.json").read_text())["environment"]
    assert environment["optimizer_module"] == "lion_pytorch.lion_pytorch"
    assert environment["optimizer_version"] == __import__("importlib.metadata").metadata.version("lion-pytorch")


@pytest.mark.parametrize(
    ("optimizer", "source", "message"),
    [
        (
            '{{name: "{m}:SignSGD", lr: 0.01, momentun: 0.9}}',
            "",
            "momentun: unknown setting of SignSGD; did you mean 'momentum'? its settings: lr, momentum, weight_decay",
        ),
        ('{{name: "{m}:SignSGD", lr: 0.01, momentum: high}}', "", "momentum:"),
        (
            '{{name: "{m}:SignSGD", lr: -0.01}}',
            "",
            "SignSGD(lr=-0.01, momentum=0.0, weight_decay=0.0) raised ValueError",
        ),
        (
            '{{name: "{m}:Plain", lr: 0.01}}',
            "class Plain:\n    pass\n",
            "is the class Plain, not a torch.optim.Optimizer",
        ),
        ('{{name: "{m}:SignSGD", lr: 0.01}}', "raise RuntimeError('half written')\n", "failed: RuntimeError: half"),
        ('{{name: "absent_{m}:SignSGD", lr: 0.01}}', "", "no module 'absent_"),
        ("{{name: adam, lr: 0.01, betas1: 0.9}}", "", "betas1: unknown"),
        ('{{name: "{m}:Lenient", lr: -0.5}}', LENIENT, "optimizer.lr: must be > 0 (a step size), got -0.5"),
        ('{{name: "{m}:Lenient", lr: 0.1, sizes: [1, 2, oops]}}', LENIENT, "optimizer.sizes.2:"),
        ('{{name: "{m}:Named", lr: 0.1}}', NAMED, "Named has a setting called 'name'"),
        (
            '{{name: "{m}:Stumbles", lr: 0.1}}',
            STUMBLES,
            "Stumbles's first step on a test tensor raised RuntimeError: boom",
        ),
        ('{{name: "torch.optim:LBFGS", lr: 0.1}}', "", "optimizer.name: LBFGS re-evaluates the loss"),
    ],
    ids=[
        "misspelled",
        "wrong-type",
        "constructor-raises",
        "not-an-optimizer",
        "import-raises",
        "missing",
        "built-in",
        "lr-not-positive",
        "any-length-tuple",
        "a-setting-called-name",
        "step-raises",
        "refused-by-class",
    ],
)
def test_a_bad_user_class_or_setting_is_one_line_and_no_folder(tmp_path, optimizer, source, message):
    folder = tmp_path / "configs"
    name = module_beside(folder, source)
    path = config_beside(folder, optimizer.format(m=name))
    for command in (["check"], ["run", "--runs-dir", tmp_path / "runs"]):
        line = one_error(gdtrain(command[0], path, *command[1:]))
        assert message in line, (command, line)
    assert not (tmp_path / "runs").exists()


def test_a_lenient_class_takes_a_tuple_of_any_length(tmp_path):
    folder = tmp_path / "configs"
    name = module_beside(folder, LENIENT)
    path = config_beside(folder, f'{{name: "{name}:Lenient", lr: 0.1, sizes: [1, 2, 3]}}')
    assert load_config(path).optimizer.sizes == (1.0, 2.0, 3.0)


def test_muon_on_a_function_is_one_line(tmp_path):
    path = ROOT / "configs" / "path_quadratic_adam.yaml"
    line = one_error(
        gdtrain("run", path, "--set", "optimizer={name: muon, rest: {name: adam}}", "--runs-dir", tmp_path / "runs")
    )
    assert "optimizer.name: muon updates 2-D weight matrices, and a function's x is a vector" in line
    assert not (tmp_path / "runs").exists()


def test_a_misspelled_built_in_setting_suggests_the_right_one(tmp_path):
    path = config_beside(tmp_path, "{name: adam, lr: 0.01, weight_decy: 0.1}")
    assert "did you mean 'weight_decay'" in one_error(gdtrain("run", path, "--runs-dir", tmp_path / "runs"))


def test_a_sweep_of_a_user_class_finds_it_in_its_worker_processes(tmp_path):
    folder = tmp_path / "configs"
    name = module_beside(folder)
    path = config_beside(folder, f'{{name: "{name}:SignSGD", lr: 0.01}}')
    args = ["sweep", path, "--grid", "optimizer.lr=0.01,0.02", "--runs-dir", tmp_path / "runs", "--jobs", "2"]
    done = python("-m", "gdtrain", *args, "--batch-runs", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    folders = run_folders(tmp_path / "runs" / "mine")
    assert len(folders) == 2
    assert all(json.loads((f / "summary.json").read_text())["status"] == "finished" for f in folders)


def test_a_study_of_a_user_class_beside_the_study_file(tmp_path):
    folder = tmp_path / "studies"
    name = module_beside(folder)
    study = {
        "study": {"name": "mine", "seed": 0},
        "base": yaml.safe_load(TINY.format(optimizer="{name: sgd}")) | {"optimizer": None},
        "optimizers": [{"name": f"{name}:SignSGD", "lr": [0.01]}, {"name": "sgd", "lr": [0.1]}],
        "budget": 1,
        "seeds": 2,
    }
    del study["base"]["optimizer"], study["base"]["experiment"]
    path = write(folder, yaml.safe_dump(study), "study.yaml")
    done = python("-m", "gdtrain", "study", path, "--runs-dir", tmp_path / "runs", "--batch-runs", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "runs" / "mine" / "report.md").is_file()


def test_a_run_folder_finds_its_module_where_the_run_did_or_says_where_to_put_it(tmp_path):
    folder = tmp_path / "configs"
    name = module_beside(folder)
    path = config_beside(folder, f'{{name: "{name}:SignSGD", lr: 0.01}}')
    assert gdtrain("run", path, "--runs-dir", tmp_path / "runs", "--quiet").exit_code == 0
    (run_dir,) = run_folders(tmp_path / "runs" / "mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = python("-m", "gdtrain", "evaluate", run_dir, cwd=elsewhere)
    assert found.returncode == 0, found.stderr
    rerun = python("-m", "gdtrain", "run", run_dir / "config.yaml", "--runs-dir", tmp_path / "again", cwd=elsewhere)
    assert rerun.returncode == 0, rerun.stderr  # the config.yaml's rerun line works from anywhere too
    (folder / f"{name}.py").unlink()
    gone = python("-m", "gdtrain", "evaluate", run_dir, cwd=elsewhere)
    assert gone.returncode == 2
    (line,) = gone.stderr.splitlines()
    assert f"imported {name} ({folder / name}.py), which is gone" in line and "PYTHONPATH" in line


# --- Schedule-Free: train before steps, eval before evaluating and saving -------------------------

SCHEDULE_FREE = """\
experiment: {name: free, seed: 1}
data: {name: blobs, n_samples: 2000, n_classes: 4, n_features: 8}
model: {name: mlp, hidden_sizes: [32]}
optimizer: {name: "schedulefree:AdamWScheduleFree", lr: 0.01, warmup_steps: 20}
train: {epochs: 3, batch_size: 8, loss: cross_entropy, log_every: 7, checkpoint_every: 60, keep_last: 2}
"""


def test_model_pt_holds_schedule_free_eval_weights(tmp_path):
    pytest.importorskip("schedulefree")
    from gdtrain.components.datasets import shuffled_batches
    from gdtrain.components.losses import LOSSES

    path = write(tmp_path, SCHEDULE_FREE.replace("checkpoint_every: 60", "checkpoint_every: null"))
    assert gdtrain("run", path, "--runs-dir", tmp_path / "runs", "--quiet").exit_code == 0
    (run_dir,) = run_folders(tmp_path / "runs" / "free")
    saved = torch.load(run_dir / "model.pt", weights_only=True)

    # The same run by hand: train() before each epoch's steps, eval() before its validation.
    parts = recipe.build(load_config(path))
    model, optimizer, data = parts.model, parts.optimizer, parts.data
    for _ in range(3):
        model.train()
        optimizer.train()
        for xb, yb in shuffled_batches(data.x_train, data.y_train, 8, parts.order):
            optimizer.zero_grad(set_to_none=True)
            LOSSES["cross_entropy"](model(xb), yb).backward()
            optimizer.step()
        optimizer.eval()
    evaluated = model.state_dict()
    assert all(torch.equal(saved[k], evaluated[k]) for k in saved)
    optimizer.train()  # the training point differs: the test would catch weights saved in train mode
    assert not all(torch.equal(saved[k], model.state_dict()[k]) for k in saved)


def test_schedule_free_killed_then_resumed_equals_the_uninterrupted_run(tmp_path):
    pytest.importorskip("schedulefree")
    path = write(tmp_path, SCHEDULE_FREE)
    assert gdtrain("run", path, "--runs-dir", tmp_path / "full", "--quiet").exit_code == 0
    (reference,) = run_folders(tmp_path / "full" / "free")
    with launched("-m", "gdtrain", "run", path, "--runs-dir", tmp_path / "runs", "--quiet") as launch:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "runs").glob("free/*/checkpoints/step-*.pt")):
            assert launch.process.poll() is None and time.monotonic() < deadline, launch.output(launch.err)
            time.sleep(0.005)
        launch.kill()
    (run_dir,) = run_folders(tmp_path / "runs" / "free")
    assert not (run_dir / "summary.json").exists()
    assert gdtrain("resume", run_dir, "--quiet").exit_code == 0
    assert (run_dir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    ours, theirs = (torch.load(d / "model.pt", weights_only=True) for d in (run_dir, reference))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
