"""The command line: bad input is one `error:` line per problem on stderr, exit code 2, no traceback and
no run folder; help, version, list, check and run do what they say.

Typer's CliRunner keeps stdout and stderr apart (`result.stdout`, `result.stderr`); `result.output`
is both, interleaved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from clihelp import gdtrain, write
from gdtrain import __version__
from gdtrain.components.losses import LOSSES
from gdtrain.components.models import MODELS
from gdtrain.core import runs
from gdtrain.core.catalog import DATASET_HELP, SCHEDULE_HELP
from gdtrain.core.config import Config, load_config
from gdtrain.core.optimizers import OPTIMIZERS
from gdtrain.core.runs import run_folders

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def folders(root: Path) -> list[Path]:
    """Every folder below `root`: a failed command must leave not even an empty runs/<experiment>/."""
    return [p for p in root.rglob("*") if p.is_dir()]


def assert_user_error(result, *fragments: str) -> None:
    """Exit 2, nothing on stdout, only `error: ...` lines on stderr that hold every fragment."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


# --- bad input ----------------------------------------------------------------------------------

# (id, config text, --set overrides, what stderr must say)
BAD_CONFIGS = [
    ("malformed-yaml", "optimizer:\n  lr: 0.1\n lr2: 3\n", [], ["malformed YAML at line 3"]),
    ("unknown-key", "optimizer: {name: sgd, lrr: 0.1}\n", [], ["optimizer.lrr: unknown key", "did you mean 'lr'?"]),
    ("unknown-section", "optimiser: {lr: 0.1}\n", [], ["optimiser: unknown section", "did you mean 'optimizer'?"]),
    ("wrong-type", "train: {epochs: ten}\n", [], ["train.epochs: must be a whole number, got 'ten'"]),
    ("string-number", "optimizer: {lr: '0.1'}\n", [], ["optimizer.lr: must be a number"]),
    ("negative-lr", "optimizer: {lr: -0.1}\n", [], ["optimizer.lr: must be > 0, got -0.1"]),
    ("zero-lr", "optimizer: {lr: 0}\n", [], ["optimizer.lr: must be > 0"]),
    (
        "batch-over-dataset",
        "data: {n_samples: 100}\ntrain: {batch_size: 500}\n",
        [],
        ["train.batch_size: 500 is more than the 80 training samples"],
    ),
    ("zero-batch", "train: {batch_size: 0}\n", [], ["train.batch_size: must be 'full' or a whole number >= 1, got 0"]),
    ("unknown-optimizer", "optimizer: {name: adamm}\n", [], ["optimizer.name: unknown optimizer 'adamm'", *OPTIMIZERS]),
    ("unknown-model", "model: {name: cnn}\n", [], ["model.name: unknown model 'cnn'", *MODELS]),
    ("unknown-dataset", "data: {name: cifar10}\n", [], ["data.name: unknown dataset 'cifar10'", *DATASET_HELP]),
    (
        "set-unknown-key",
        "optimizer: {lr: 0.1}\n",
        ["optimizer.momentun=0.9"],
        ["optimizer.momentun: unknown key", "did you mean 'momentum'?"],
    ),
    ("set-unknown-section", "", ["trian.epochs=3"], ["trian: unknown section", "did you mean 'train'?"]),
    ("set-into-a-value", "optimizer: {lr: 0.1}\n", ["optimizer.lr.x=1"], ["optimizer.lr is a value, not a section"]),
    ("set-without-equals", "", ["optimizer.lr"], ["expected key.path=value"]),
    ("set-bad-value", "optimizer: {lr: 0.1}\n", ["optimizer.lr=abc"], ["optimizer.lr: must be a number, got 'abc'"]),
    ("python-object", "optimizer: !!python/object:os.system {}\n", [], ["malformed YAML at line 1", "python/object"]),
    ("not-a-mapping", "- 1\n- 2\n", [], ["must be a mapping of sections, got list"]),
    ("bad-experiment-name", "experiment: {name: ../up}\n", [], ["experiment.name: must be 1-100 letters"]),
]


@pytest.mark.parametrize(
    ("text", "overrides", "fragments"), [case[1:] for case in BAD_CONFIGS], ids=[case[0] for case in BAD_CONFIGS]
)
@pytest.mark.parametrize("command", ["run", "check"])
def test_a_bad_config_is_one_error_line_and_exit_2(tmp_path, command, text, overrides, fragments):
    config = write(tmp_path, text)
    sets = [arg for o in overrides for arg in ("--set", o)]
    extra = ["--runs-dir", tmp_path / "runs", "--quiet"] if command == "run" else []
    result = gdtrain(command, config, *sets, *extra)
    assert_user_error(result, *fragments)
    assert folders(tmp_path) == []


def test_several_problems_are_one_line_each(tmp_path):
    config = write(tmp_path, "optimizer: {lr: 0}\ntrain: {epochs: ten}\n")
    result = gdtrain("check", config)
    assert_user_error(result)
    assert len(result.stderr.splitlines()) == 2


def test_a_missing_config_file(tmp_path):
    result = gdtrain("run", tmp_path / "nope.yaml", "--runs-dir", tmp_path / "runs", "--quiet")
    assert_user_error(result, "nope.yaml: no such config file")
    assert folders(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
@pytest.mark.parametrize("how", [["--device", "cuda"], ["--set", "train.device=cuda"]])
def test_cuda_without_a_gpu(tmp_path, how):
    result = gdtrain("run", SMOKE, *how, "--runs-dir", tmp_path / "runs", "--quiet")
    assert_user_error(result, "train.device: cuda requested but no CUDA GPU is available")
    assert folders(tmp_path) == []


def test_a_runs_folder_that_cannot_be_created(tmp_path):
    blocker = write(tmp_path, "a regular file, so nothing can be created below it", "blocker")
    result = gdtrain("run", SMOKE, "--runs-dir", blocker / "runs", "--quiet")
    assert_user_error(result, "cannot create the run folder", "--runs-dir")
    assert blocker.is_file()
    assert folders(tmp_path) == []


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", ""])
def test_a_run_name_that_is_not_one_safe_folder_name(tmp_path, name):
    result = gdtrain("run", SMOKE, "--runs-dir", tmp_path / "runs", "--name", name, "--quiet")
    assert_user_error(result, "--name: must be 1-100 letters")
    assert folders(tmp_path) == []
    assert not (tmp_path / "escape").exists()


# --- help, version, list ------------------------------------------------------------------------


def test_version():
    result = gdtrain("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"gdtrain {__version__}"


@pytest.mark.parametrize(
    ("command", "fragments"),
    [
        ([], ["run", "check", "list", "data"]),
        (["run"], ["--set", "--name", "--runs-dir", "--device", "--quiet"]),
        (["check"], ["--set", "resolved"]),
        (["list"], ["optimizers"]),
        (["data"], ["download"]),
        (["data", "download"], ["mnist", "fashion_mnist", "kmnist", "--root", "--timeout"]),
    ],
)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_on_every_command(command, fragments, flag):
    result = gdtrain(*command, flag)
    assert result.exit_code == 0
    assert "Usage:" in result.stdout
    for fragment in fragments:
        assert fragment in result.stdout


@pytest.mark.parametrize(
    "command",
    [
        [],
        *[
            [name]
            for name in ("run", "paths", "resume", "evaluate", "sweep", "study", "compare", "check", "bench", "list")
        ],
        ["data", "download"],
    ],
)
def test_help_shows_no_value_after_a_flag_and_plain_argument_names(command):
    """`--quiet  No progress bars`, not `--quiet <bool>`; `Usage: gdtrain run [OPTIONS] CONFIG`, not `{config}`."""
    result = gdtrain(*command, "--help")
    assert result.exit_code == 0
    usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
    assert "{" not in usage and "<" not in usage, usage
    assert "<bool>" not in result.stdout and "BOOLEAN" not in result.stdout, result.stdout


def listed(stdout: str) -> dict[str, set[str]]:
    """`gdtrain list` output as {heading: names under it}."""
    sections: dict[str, set[str]] = {}
    for line in stdout.splitlines():
        if not line.startswith(" "):
            heading = line.rstrip(":")
            sections[heading] = set()
        else:
            sections[heading].add(line.split()[0])
    return sections


def test_list_shows_every_component_under_its_heading():
    result = gdtrain("list")
    assert result.exit_code == 0
    assert listed(result.stdout) == {
        "models": set(MODELS),
        "datasets": set(DATASET_HELP),
        "optimizers": set(OPTIMIZERS) | {"module:ClassName"},  # and a class of one's own
        "schedules": set(SCHEDULE_HELP),
        "losses": set(LOSSES),
    }


# --- check --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        SMOKE.read_text(),
        "train: {max_steps: 50, batch_size: full}\n",
        "optimizer: {name: adamw, lr: 3e-4, betas: [0.8, 0.95]}\n",
    ],
)
def test_check_prints_a_resolved_config_that_reads_back_the_same(tmp_path, text):
    config = write(tmp_path, text)
    result = gdtrain("check", config)
    assert result.exit_code == 0, result.stderr
    resolved = write(tmp_path, result.stdout, "resolved.yaml")
    again = gdtrain("check", resolved)
    assert again.exit_code == 0, again.stderr
    assert again.stdout == result.stdout
    assert load_config(resolved) == load_config(config)


def test_check_on_an_empty_file_prints_every_default(tmp_path):
    result = gdtrain("check", write(tmp_path, ""))
    assert result.exit_code == 0
    defaults = Config()
    shown = load_config(write(tmp_path, result.stdout, "resolved.yaml"))
    assert shown == defaults
    printed = yaml.safe_load(result.stdout)
    assert {section: set(keys) for section, keys in printed.items()} == {
        section: set(type(getattr(defaults, section)).model_fields) for section in Config.model_fields
    }


def test_check_shows_overrides(tmp_path):
    result = gdtrain("check", SMOKE, "--set", "optimizer.lr=1e-3", "-s", "train.epochs=7")
    assert result.exit_code == 0
    assert "  lr: 0.001\n" in result.stdout and "  epochs: 7\n" in result.stdout


# --- run ----------------------------------------------------------------------------------------


def shown_run_folder(stdout: str) -> Path:
    """The run folder `gdtrain run` names first, when it starts, and again at the end."""
    first, last = [
        Path(line.removeprefix("run folder: ").split()[0])
        for line in stdout.splitlines()
        if line.startswith("run folder: ")
    ]
    assert first == last
    return first


def test_run_smoke_prints_its_run_folder_first_and_when_finished(tmp_path):
    result = gdtrain("run", SMOKE, "--runs-dir", tmp_path / "runs", "--name", "x", "--quiet")
    assert result.exit_code == 0, result.output
    run_dir = shown_run_folder(result.stdout)
    assert result.stdout.startswith(f"run folder: {run_dir}   (tensorboard --logdir {run_dir.parent})\n")
    assert run_dir.parent == tmp_path / "runs" / "smoke"
    assert run_dir.name.startswith("x-")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert result.stdout.splitlines()[1].startswith("finished: 3 epochs")


def test_run_says_its_folder_before_it_trains(tmp_path, monkeypatch):
    """The line comes as soon as the folder exists, not at the end: here the engine fails at its start."""
    import typer

    from gdtrain.training import engine

    said = []
    monkeypatch.setattr(typer, "echo", lambda message="", err=False, **kwargs: said.append(str(message)))

    def broken(*args, **kwargs):
        said.append("training")
        raise RuntimeError("the engine broke")

    monkeypatch.setattr(engine, "train", broken)
    with pytest.raises(RuntimeError):
        gdtrain("run", SMOKE, "--runs-dir", tmp_path, "--quiet")
    (made,) = runs.run_folders(tmp_path / "smoke")
    assert said == [f"run folder: {made}   (tensorboard --logdir {made.parent})", "training"]


def test_two_runs_with_one_name_get_two_folders(tmp_path):
    first = gdtrain("run", SMOKE, "--runs-dir", tmp_path / "runs", "--name", "x", "--quiet")
    second = gdtrain("run", SMOKE, "--runs-dir", tmp_path / "runs", "--name", "x", "--quiet")
    assert first.exit_code == second.exit_code == 0
    folders = {shown_run_folder(first.stdout), shown_run_folder(second.stdout)}
    assert len(folders) == 2
    assert set(run_folders(tmp_path / "runs" / "smoke")) == folders
    assert all((f / "summary.json").is_file() for f in folders)


def test_a_diverging_run_exits_1_and_suggests_a_smaller_lr(tmp_path):
    config = write(
        tmp_path,
        "data: {name: linear_regression, n_samples: 100}\noptimizer: {name: sgd, lr: 10}\n"
        "train: {epochs: 200, batch_size: full, loss: mse}\n",
    )  # error × 19 per step
    result = gdtrain("run", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: diverged at step ")
    assert "smaller learning rate" in line and "optimizer.lr=10" in line
    (summary_file,) = (tmp_path / "runs").glob("default/*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["status"] == "diverged"
    assert 1 <= summary["diverged_at_step"] < 200
    assert f"run folder: {summary_file.parent}" in line


# --- the real process: `python -m gdtrain` -------------------------------------------------------


def python_m_gdtrain(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "gdtrain", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_python_m_gdtrain_version(tmp_path):
    proc = python_m_gdtrain("--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"gdtrain {__version__}"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["exp.yaml"], "optimizer.lrr: unknown key; did you mean 'lr'?"),  # fails in the config
        ([SMOKE, "--runs-dir", "blocker/runs"], "cannot create the run folder"),  # fails in the recipe
    ],
)
def test_a_real_process_prints_one_error_line_and_exits_2(tmp_path, args, fragment):
    write(tmp_path, "optimizer: {name: sgd, lrr: 0.1}\n")
    write(tmp_path, "a regular file", "blocker")
    proc = python_m_gdtrain("run", *args, "--quiet", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: ") and fragment in line
    assert folders(tmp_path) == []
