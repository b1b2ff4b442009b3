"""What TensorBoard shows of an experiment folder, read from a real `tensorboard` server's HTTP API.

The folder is made through the real commands: a `gdtrain paths` picture (and its one function run),
a mixed sweep (SGD with momentum, SGD with Nesterov, Adam with its own betas; 2 seeds) and one
MNIST-family run on tiny IDX files, so that the test metrics exist.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from clihelp import gdtrain, write
from gdtrain.core import folders, runs
from gdtrain.training import board, checkpoints
from test_mnist import make_set

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
MIXED = """\
experiment: {name: mixed, seed: 0}
data: {name: blobs, n_samples: 200, n_classes: 3, n_features: 2}
model: {name: mlp, hidden_sizes: [16], activation: relu}
optimizer: {name: adam, lr: 0.01}
train: {epochs: 2, batch_size: 16, loss: cross_entropy, log_every: 5}
grid:
  optimizer:
    - {name: sgd, lr: 0.1, momentum: 0.9}
    - {name: sgd, lr: 0.1, momentum: 0.5, nesterov: true}
    - {name: adam, lr: 0.01, betas: [0.8, 0.99]}
"""
MNIST = """\
experiment: {{name: mixed, seed: 0}}
data: {{name: mnist, root: {root}, val_size: 20}}
model: {{name: linear}}
optimizer: {{name: adam, lr: 0.01}}
train: {{epochs: 2, batch_size: 10, loss: cross_entropy, log_every: 5}}
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """runs/mixed: a picture folder and its function run, 6 sweep runs, 1 MNIST run, in that order."""
    tmp = tmp_path_factory.mktemp("board")
    runs_dir = tmp / "runs"
    done = gdtrain(
        "paths",
        ROOT / "configs" / "path_quadratic_sgd.yaml",
        "--optimizers",
        "sgd",
        "--set",
        "experiment.name=mixed",
        "--runs-dir",
        runs_dir,
    )
    assert done.exit_code == 0, done.output
    done = gdtrain("sweep", write(tmp, MIXED), "--seeds", "2", "--runs-dir", runs_dir)
    assert done.exit_code == 0, done.output
    make_set(tmp / "data")
    done = gdtrain("run", write(tmp, MNIST.format(root=tmp / "data"), "mnist.yaml"), "--runs-dir", runs_dir, "--quiet")
    assert done.exit_code == 0, done.output
    return runs_dir / "mixed"


def sessions_of(folder: Path) -> list[str]:
    """The run folders that are HParams sessions: every run folder but the picture."""
    return [p.name for p in runs.run_folders(folder) if not (p / "paths.png").exists()]


# --- a real server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(logdir: Path, tmp_path: Path, runs: set[str], metric: str) -> Iterator[str]:
    """`tensorboard --logdir LOGDIR` on a free port, in its own process group, killed with the whole
    group at the end whatever happens; its URL once it lists `runs` and its HParams have `metric`."""
    port, log = free_port(), open(tmp_path / "tensorboard.log", "wb")
    program = Path(sys.executable).with_name("tensorboard")
    command = [str(program)] if program.exists() else [sys.executable, "-m", "tensorboard.main"]
    process = subprocess.Popen(
        [*command, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: runs <= set(get(url, "/data/runs")), process, tmp_path / "tensorboard.log")
        wait_for(lambda: metric in metric_tags(experiment_of(url)), process, tmp_path / "tensorboard.log")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def server(experiment, tmp_path) -> Iterator[str]:
    """The experiment folder `runs/mixed` served, every run loaded."""
    with serving(experiment, tmp_path, set(sessions_of(experiment)) | {".", board.GROUPS}, "accuracy/test") as url:
        yield url


def wait_for(ready, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    """Poll `ready()` until it holds; fail, with the server's log, when the server exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tensorboard exited ({process.returncode}):\n{log.read_text(errors='replace')[-2000:]}")
        try:
            if ready():
                return
        except (OSError, ValueError, KeyError):  # not listening yet, or not loaded yet
            pass
        time.sleep(0.5)
    pytest.fail(f"tensorboard did not load the folder in {timeout:.0f} s:\n{log.read_text(errors='replace')[-2000:]}")


def get(url: str, route: str) -> object:
    with urllib.request.urlopen(url + route, timeout=10) as response:
        return json.loads(response.read())


def post(url: str, route: str, body: dict) -> dict:
    request = urllib.request.Request(
        url + route, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def experiment_of(url: str) -> dict:
    return post(url, "/data/plugin/hparams/experiment", {"experimentName": ""})


def metric_tags(experiment: dict) -> list[str]:
    return [info["name"]["tag"] for info in experiment.get("metricInfos", [])]


def test_hparams_lists_every_setting_the_varying_ones_first(server):
    infos = experiment_of(server)["hparamInfos"]
    names, differs = [info["name"] for info in infos], [info.get("differs", False) for info in infos]
    varying = names[: differs.count(True)]
    assert differs == sorted(differs, reverse=True)  # the varying ones first: TensorBoard ticks the first five
    assert {"optimizer.name", "optimizer.lr", "optimizer.momentum", "optimizer.nesterov", "optimizer.betas"} <= set(
        varying
    )
    assert "experiment.run_name" not in names  # None is left out, not "None"
    kinds = {info["name"]: info["type"] for info in infos}
    assert kinds["optimizer.nesterov"] == "DATA_TYPE_BOOL" and kinds["optimizer.betas"] == "DATA_TYPE_STRING"
    assert kinds["train.epochs"] == "DATA_TYPE_FLOAT64"


def test_hparams_metrics_include_the_test_metrics(server):
    tags = metric_tags(experiment_of(server))
    assert tags[:3] == ["loss/train", "loss/val", "accuracy/val"]
    assert {"accuracy/test", "loss/test"} <= set(tags)


def test_one_session_per_run_and_none_for_the_picture(server, experiment):
    groups = post(
        server,
        "/data/plugin/hparams/session_groups",
        {"experimentName": "", "allowedStatuses": STATUSES, "startIndex": 0, "sliceSize": 1000},
    )["sessionGroups"]
    sessions = [session["name"] for group in groups for session in group["sessions"]]
    assert sorted(sessions) == sorted(sessions_of(experiment)) and len(sessions) == 8  # 6 sweep + MNIST + function
    assert not any(name.startswith("paths-") for name in sessions)
    nesterov = next(g for g in groups if g["hparams"].get("optimizer.nesterov") is True)["hparams"]
    assert nesterov["optimizer.momentum"] == 0.5 and "experiment.run_name" not in nesterov
    adam = next(g for g in groups if g["hparams"].get("optimizer.betas") == "[0.8, 0.99]")
    assert {m["name"]["tag"] for m in adam["metricValues"]} >= {"loss/train", "loss/val", "accuracy/val"}
    assert {s["status"] for g in groups for s in g["sessions"]} == {"STATUS_SUCCESS"}


def test_custom_scalars_open_on_the_four_charts_with_one_band_per_configuration(server, experiment):
    layout = get(server, "/data/plugin/custom_scalars/layout")
    charts = [(chart, category.get("closed", False)) for category in layout["category"] for chart in category["chart"]]
    assert [(chart["title"], closed) for chart, closed in charts[:4]] == [
        ("loss/train", False),
        ("loss/val", False),
        ("accuracy/val", False),
        ("lr", False),
    ]
    assert all(closed for _, closed in charts[4:]) and "grad_norm" in [chart["title"] for chart, _ in charts]
    assert charts[0][0]["margin"]["series"] == [
        {"value": "seeds/loss/train/mean", "lower": "seeds/loss/train/min", "upper": "seeds/loss/train/max"}
    ]
    tags = get(server, "/data/plugin/scalars/tags")
    grouped = {run for run in tags if run.startswith(board.GROUPS + "/")}
    assert len(grouped) == 3  # the sweep's 3 configurations: the function run beside them is not the sweep's
    band = {"seeds/loss/train/mean", "seeds/loss/train/min", "seeds/loss/train/max"}
    assert all(band <= set(tags[run]) for run in grouped)
    assert not any(band & set(tags[run]) for run in sessions_of(experiment))  # no run lacks half a band


# --- the files, without a server ----------------------------------------------------------------


def test_groups_are_no_runs_and_a_resumed_sweep_rewrites_them(experiment, tmp_path):
    assert {run.path for run in folders.read_runs(experiment)} == set(runs.run_folders(experiment))  # no _groups
    copy = tmp_path / "runs" / experiment.name
    shutil.copytree(experiment, copy)
    groups = lambda: sorted(p.name for p in (copy / board.GROUPS).iterdir() if p.is_dir())  # noqa: E731
    before, files = groups(), set((copy / board.GROUPS).rglob("events.out.tfevents.*"))
    done = gdtrain("sweep", write(tmp_path, MIXED), "--seeds", "2", "--runs-dir", copy.parent, "--resume")
    assert done.exit_code == 0 and done.output.count(": skipped") == 6, done.output
    assert len(before) == len(groups()) == 3  # the sweep's own: the function and MNIST runs beside it are not
    after = set((copy / board.GROUPS).rglob("events.out.tfevents.*"))
    assert len(after) == 4 and not after & files  # one file per group and the layout's, each replaced


def test_a_sweep_stopped_by_a_signal_writes_the_groups_of_what_finished(tmp_path, monkeypatch):
    real_save, folders = checkpoints.Checkpoints.save, []

    def save_then_signal(self, state, step, prune=True):
        real_save(self, state, step, prune)
        if self.folder not in folders:
            folders.append(self.folder)
            if len(folders) == 2:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the second point's run

    monkeypatch.setattr(checkpoints.Checkpoints, "save", save_then_signal)
    args = [
        "sweep",
        SMOKE,
        "--grid",
        "optimizer.lr=0.1,0.01,0.001",
        "--runs-dir",
        tmp_path,
        "--batch-runs",
        "1",
    ]  # in turn
    assert gdtrain(*args).exit_code == 130
    groups = lambda: [p for p in (tmp_path / "smoke" / board.GROUPS).iterdir() if p.is_dir()]  # noqa: E731
    assert len(groups()) == 1  # the one finished point; the interrupted one is no result yet
    monkeypatch.undo()
    assert gdtrain(*args, "--resume").exit_code == 0
    assert len(groups()) == 3


def test_a_band_is_the_mean_and_range_of_its_seeds(experiment):
    momentum = [run for run in folders.read_runs(experiment) if run.config.get("optimizer.momentum") == 0.9]
    finals = [run.curve("loss/val")[-1][2] for run in momentum]
    assert len(finals) == 2
    bands = []
    for group in (p for p in (experiment / board.GROUPS).iterdir() if p.is_dir()):
        events = EventAccumulator(str(group), size_guidance={"scalars": 0})
        events.Reload()
        if "seeds/loss/val/mean" in events.Tags()["scalars"]:
            bands.append({stat: events.Scalars(f"seeds/loss/val/{stat}") for stat in ("mean", "min", "max")})
    (band,) = [b for b in bands if b["mean"][-1].value == pytest.approx(sum(finals) / 2, rel=1e-6)]
    assert band["min"][-1].value == pytest.approx(min(finals), rel=1e-6)
    assert band["max"][-1].value == pytest.approx(max(finals), rel=1e-6)
    assert [e.step for e in band["mean"]] == [1, 2]  # per epoch, as the runs log it


def test_a_run_holds_its_session_and_no_experiment(experiment):
    (run_dir,) = [
        run.path
        for run in folders.read_runs(experiment)
        if run.config.get("optimizer.nesterov") is True and run.config["experiment.seed"] == 0
    ]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.PluginTagToContent("hparams"))
    assert tags == {hparams_metadata.SESSION_START_INFO_TAG, hparams_metadata.SESSION_END_INFO_TAG}
    start = hparams_metadata.parse_session_start_info_plugin_data(
        events.PluginTagToContent("hparams")[hparams_metadata.SESSION_START_INFO_TAG]
    )
    assert start.group_name == run_dir.name
    assert start.hparams["optimizer.nesterov"].bool_value is True
    assert start.hparams["train.epochs"].number_value == 2


def test_runs_added_at_once_all_reach_the_definition(tmp_path):
    """Four processes each add a run folder and define the experiment at the same moment: the one
    event file left lists every run's settings, and no temporary file is left."""
    folder = tmp_path / "together"
    folder.mkdir()
    code = """import sys
from pathlib import Path
from gdtrain.training import board
run_dir = Path(sys.argv[1]) / f"run{sys.argv[2]}-20250101-000000"
run_dir.mkdir()
(run_dir / "config.yaml").write_text(
    f"experiment: {{name: together}}\\noptimizer: {{name: sgd, lr: 0.{sys.argv[2]}}}\\n"
)
board.define(run_dir.parent)
"""
    writers = [subprocess.Popen([sys.executable, "-c", code, str(folder), str(k)]) for k in range(1, 5)]
    assert [w.wait(timeout=120) for w in writers] == [0] * 4
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1 and not list(folder.glob(".board-*"))
    events = EventAccumulator(str(folder))
    events.Reload()
    experiment = hparams_metadata.parse_experiment_plugin_data(
        events.PluginTagToContent("hparams")[hparams_metadata.EXPERIMENT_TAG]
    )
    (lr,) = [info for info in experiment.hparam_infos if info.name == "optimizer.lr"]
    assert sorted(v.number_value for v in lr.domain_discrete.values) == [0.1, 0.2, 0.3, 0.4]


def test_values_are_typed_as_what_they_are():
    values = board.hparam_values(
        {
            "optimizer.nesterov": True,
            "train.epochs": 1000,
            "optimizer.lr": 0.1,
            "optimizer.betas": [0.9, 0.999],
            "model.hidden_sizes": [64, 64],
            "experiment.run_name": None,
            "optimizer.name": "sgd",
        }
    )
    assert values == {
        "optimizer.nesterov": True,
        "train.epochs": 1000,
        "optimizer.lr": 0.1,
        "optimizer.betas": "[0.9, 0.999]",
        "model.hidden_sizes": "[64, 64]",
        "optimizer.name": "sgd",
    }


def test_a_study_s_board_opens_on_one_banded_line_per_optimizer(tmp_path):
    from test_study import small

    result = gdtrain("study", small(tmp_path, seeds=3), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    logdir = tmp_path / "runs" / "small" / "board"
    assert f"tensorboard --logdir {logdir}" in result.stdout
    expected = {"sgd", "adam", "tuning/sgd", "tuning/adam", "."}
    with serving(logdir, tmp_path, expected, "accuracy/val") as url:
        listed = get(url, "/data/runs")
        # TensorBoard's runs selector ticks every run when there are at most 40 (maxNamesToEnableByDefault)
        assert set(listed) == expected and len(listed) <= 40
        layout = get(url, "/data/plugin/custom_scalars/layout")
        charted = {s["value"] for c in layout["category"] for ch in c["chart"] for s in ch["margin"]["series"]}
        tags = get(url, "/data/plugin/scalars/tags")
        assert {run for run, its in tags.items() if charted & set(its)} == {"sgd", "adam"}  # the rerun groups only
        assert layout["category"][0]["title"].startswith("accuracy/val") and not layout["category"][0].get("closed")
        first = get(url, "/data/plugin/scalars/scalars?run=adam&tag=seeds/accuracy/val/mean")
        reruns = json.loads((tmp_path / "runs" / "small" / "results.json").read_text())["optimizers"]["adam"]
        assert len(first) == 2 and len(reruns["reruns"]["values"]) == 3  # one point an epoch, over 3 reruns
        assert metric_tags(experiment_of(url))[0] == "accuracy/val"  # the report metric first in HParams
