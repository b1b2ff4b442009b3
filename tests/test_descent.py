"""Optimizer paths on test functions: closed forms, the seeds' momentum, the functions' minima, the run
folder with its picture and TensorBoard image, `gdtrain paths`, and bad input (exit 2, one line)."""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clihelp import gdtrain, write
from gdtrain.components.functions import FUNCTIONS
from gdtrain.core.config import FunctionData, load_config, validate
from gdtrain.core.optimizers import OPTIMIZERS
from gdtrain.core.runs import run_folders
from gdtrain.training import descent, recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUADRATIC = CONFIGS / "path_quadratic_sgd.yaml"  # the seeds': x² from 10, lr 0.1, 20 steps


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def path_of(run_dir: Path, dim: int = 1) -> list[list[float]]:
    """The logged path: x_0 (the start), x_1, ... from metrics.jsonl."""
    return [[m[f"x/{i}"] for i in range(dim)] for m in metrics(run_dir)]


def function_run(tmp_path: Path, raw: dict):
    """recipe.run on a function config given as a mapping; returns (run folder, outcome)."""
    return recipe.run(validate(raw, "test"), tmp_path, quiet=True)


def quadratic(optimizer: dict, steps: int = 20, **train) -> dict:
    return {
        "data": {"name": "function", "function": "quadratic", "start": [10.0]},
        "optimizer": optimizer,
        "train": {"max_steps": steps, **train},
    }


# --- the closed forms -------------------------------------------------------------------------


def test_gradient_descent_on_x_squared_is_the_closed_form(tmp_path):
    run_dir, outcome = recipe.run(load_config(QUADRATIC), tmp_path, quiet=True)
    xs = [x for (x,) in path_of(run_dir)]
    assert len(xs) == 21 and outcome.steps == 20
    assert xs == pytest.approx([10 * (1 - 2 * 0.1) ** k for k in range(21)], rel=1e-12, abs=0)  # x_k = 10·0.8^k
    assert [m["loss/train"] for m in metrics(run_dir)] == pytest.approx([x * x for x in xs], rel=1e-12)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["x"] == [pytest.approx(10 * 0.8**20, rel=1e-12)]
    assert summary["f"] == pytest.approx(100 * 0.64**20, rel=1e-12)
    assert summary["status"] == "finished" and summary["function"] == "quadratic"


def seeds_momentum(x0: float, lr: float, beta: float, steps: int) -> list[float]:
    """The seeds' heavy ball on x²: v starts at 0, v = βv + (1 − β)g, x = x − lr·v."""
    x, v, xs = x0, 0.0, [x0]
    for _ in range(steps):
        v = beta * v + (1 - beta) * 2 * x
        x = x - lr * v
        xs.append(x)
    return xs


def torch_momentum(x0: float, lr: float, beta: float, steps: int) -> list[float]:
    """torch's form with dampening β: the first step takes v₁ = g₁, then v = βv + (1 − β)g."""
    x, v, xs = x0, None, [x0]
    for _ in range(steps):
        g = 2 * x
        v = g if v is None else beta * v + (1 - beta) * g
        x = x - lr * v
        xs.append(x)
    return xs


def test_torch_momentum_with_dampening_differs_from_the_seeds_form_on_its_first_step_only(tmp_path):
    lr, beta = 0.1, 0.9
    run_dir, _ = function_run(tmp_path, quadratic({"name": "sgd", "lr": lr, "momentum": beta, "dampening": beta}))
    ours = [x for (x,) in path_of(run_dir)]
    assert ours == pytest.approx(torch_momentum(10.0, lr, beta, 20), rel=1e-12)
    seeds = seeds_momentum(10.0, lr, beta, 20)
    assert ours[1] == pytest.approx(10 - lr * 20)  # v₁ = g₁ = 20
    assert seeds[1] == pytest.approx(10 - lr * (1 - beta) * 20)  # v₁ = (1 − β)g₁ = 2
    assert ours[1] != pytest.approx(seeds[1])

    # the same torch optimizer, its buffer set to the seeds' v = 0 before step 1, takes the seeds' path
    x = torch.nn.Parameter(torch.tensor([10.0], dtype=torch.float64))
    sgd = torch.optim.SGD([x], lr=lr, momentum=beta, dampening=beta)
    sgd.state[x]["momentum_buffer"] = torch.zeros_like(x)
    for k in range(1, 21):
        sgd.zero_grad()
        (x**2).sum().backward()
        sgd.step()
        assert x.item() == pytest.approx(seeds[k], rel=1e-12)


def test_gradient_clipping_bounds_each_step_to_lr_times_clip(tmp_path):
    run_dir, _ = function_run(tmp_path, quadratic({"name": "sgd", "lr": 0.1}, steps=5, grad_clip=1.0))
    xs = [x for (x,) in path_of(run_dir)]
    # |∇f| = 2x > 1 is clipped to 1 (torch divides by |∇f| + 1e-6, hence rel 1e-7)
    assert xs == pytest.approx([10 - 0.1 * k for k in range(6)], rel=1e-7)


def test_schedules_step_once_per_optimizer_step(tmp_path):
    raw = {**quadratic({"name": "sgd", "lr": 0.1}, steps=6), "schedule": {"name": "exponential", "gamma": 0.5}}
    run_dir, _ = function_run(tmp_path, raw)
    lrs = [m["lr"] for m in metrics(run_dir) if "lr" in m]  # the lr each step used
    assert lrs == pytest.approx([0.1 * 0.5**k for k in range(6)])


def test_divergence_stops_the_run_and_exits_1(tmp_path):
    config = write(
        tmp_path, "data: {name: function, start: [10.0]}\noptimizer: {name: sgd, lr: 10}\ntrain: {max_steps: 1000}\n"
    )  # x × −19 per step: f overflows near step 120
    result = gdtrain("run", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: diverged at step ") and "smaller learning rate" in line
    (run_dir,) = run_folders(tmp_path / "runs" / "default")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and 100 < summary["diverged_at_step"] < 200
    assert summary["steps"] == summary["diverged_at_step"] - 1  # the last finite point
    assert (run_dir / "path.png").is_file()


# --- the test functions -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "dim"), [(n, d) for n, fn in FUNCTIONS.items() for d in fn.formulas])
def test_every_function_is_zero_with_zero_gradient_at_its_minimum(name, dim):
    objective = FUNCTIONS[name]
    x = torch.tensor(objective.minimum[:dim], dtype=torch.float64, requires_grad=True)
    value = objective.f(x)
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-12)
    assert x.grad.abs().max().item() == pytest.approx(0.0, abs=1e-9)
    elsewhere = torch.tensor(FunctionData.STARTS[name] if dim == 2 else [0.5], dtype=torch.float64)
    assert objective.f(elsewhere).item() > 0


def test_the_function_registries_match_the_schema():
    names = set(typing.get_args(FunctionData.model_fields["function"].annotation))
    assert set(FUNCTIONS) == set(FunctionData.DIMENSIONS) == set(FunctionData.STARTS) == names
    for name, objective in FUNCTIONS.items():
        assert tuple(objective.formulas) == FunctionData.DIMENSIONS[name]
        assert len(FunctionData.STARTS[name]) in FunctionData.DIMENSIONS[name]
    # every optimizer but muon, which updates 2-D weights only (x is a vector)
    assert {alias["name"] for alias in descent.ALIASES.values()} == {n for n, e in OPTIMIZERS.items() if not e.rest}


def test_a_function_config_resolves_without_model_and_reads_back(tmp_path):
    result = gdtrain("check", QUADRATIC)
    assert result.exit_code == 0, result.stderr
    assert "model:" not in result.stdout and "batch_size" not in result.stdout
    assert load_config(write(tmp_path, result.stdout)) == load_config(QUADRATIC)
    rosenbrock = validate({"data": {"name": "function", "function": "rosenbrock"}, "train": {"max_steps": 1}}, "t")
    assert rosenbrock.data.start == FunctionData.STARTS["rosenbrock"]  # no start: the function's usual one


# --- the run folder, the picture, TensorBoard -------------------------------------------------


def test_a_function_run_writes_its_picture_scalars_and_image(tmp_path):
    cfg = load_config(CONFIGS / "path_rosenbrock_adam.yaml", ["train.max_steps=30"])
    run_dir, outcome = recipe.run(cfg, tmp_path, quiet=True)
    assert {"config.yaml", "metrics.jsonl", "path.png", "summary.json"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "path.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["x"] == pytest.approx([outcome.final["x/0"], outcome.final["x/1"]])
    assert summary["minimum"] == [1.0, 1.0] and summary["steps"] == 30
    assert load_config(run_dir / "config.yaml") == cfg  # reproducible from its own folder

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert {"loss/train", "lr", "grad_norm", "x/0", "x/1"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/train")] == list(range(31))  # the start is step 0
    logged = [m["loss/train"] for m in metrics(run_dir)]
    assert [e.value for e in events.Scalars("loss/train")] == pytest.approx(logged, rel=1e-6)  # float32
    assert [e.step for e in events.Scalars("lr")] == list(range(1, 31))
    (image,) = events.Images("path")
    assert image.step == 30 and image.width > 600 and image.height > 300


def test_paths_draws_every_optimizer_in_one_figure_and_logs_it(tmp_path):
    result = gdtrain(
        "paths", QUADRATIC, "--optimizers", "sgd,momentum,adam:0.5", "--runs-dir", tmp_path, "--device", "cpu"
    )  # train.device is one of the train keys a function takes
    assert result.exit_code == 0, result.output
    experiment = tmp_path / "path_quadratic"
    (folder,) = experiment.glob("paths-*")
    assert f"picture: {folder / 'paths.png'}" in result.stdout
    assert (folder / "paths.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((folder / "summary.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["sgd", "momentum", "adam"]
    assert summary["runs"][1]["optimizer"]["momentum"] == 0.9  # momentum = sgd with momentum 0.9
    assert [r["optimizer"]["lr"] for r in summary["runs"]] == [0.1, 0.1, 0.5]  # the config's lr unless given
    assert summary["runs"][0]["x"] == [pytest.approx(10 * 0.8**20)]
    assert len(run_folders(experiment)) == 4  # one run per optimizer, and the picture's folder
    events = EventAccumulator(str(folder), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["paths"]


def test_paths_exits_1_when_an_optimizer_diverges_but_still_draws(tmp_path):
    result = gdtrain(
        "paths", QUADRATIC, "--optimizers", "sgd,sgd:10", "--runs-dir", tmp_path, "--set", "train.max_steps=200"
    )
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: diverged: sgd-lr10-") and "try a smaller lr" in line
    assert list((tmp_path / "path_quadratic").glob("paths-*/paths.png"))


# --- bad input ------------------------------------------------------------------------------------

FUNCTION = "data: {name: function, function: rosenbrock, start: [-1.5, 2.5]}\ntrain: {max_steps: 5}\n"
BAD = [
    (
        "start-too-short",
        "data: {name: function, function: rosenbrock, start: [1.0]}\ntrain: {max_steps: 5}\n",
        "data.start: rosenbrock takes a 2-D [x, y] start point, got [1.0]",
    ),
    (
        "start-too-long",
        "data: {name: function, start: [1, 2, 3]}\ntrain: {max_steps: 5}\n",
        "data.start: quadratic takes a 1-D [x] or 2-D [x, y] start point",
    ),
    (
        "start-not-finite",
        "data: {name: function, start: [.nan]}\ntrain: {max_steps: 5}\n",
        "data.start: must be finite numbers",
    ),
    (
        "unknown-function",
        "data: {name: function, function: rosenbrok}\ntrain: {max_steps: 5}\n",
        "data.function: must be one of 'quadratic', 'ill_conditioned', 'rosenbrock', 'rastrigin' or 'beale', "
        "got 'rosenbrok'",
    ),
    ("a-model", FUNCTION + "model: {name: mlp}\n", "model: does not apply to data 'function'"),
    (
        "a-batch-size",
        FUNCTION.replace("max_steps: 5", "max_steps: 5, batch_size: full"),
        "train.batch_size: does not apply to data 'function'",
    ),
    ("no-step-budget", "data: {name: function}\n", "train.max_steps: data 'function' needs a step budget"),
]


def assert_user_error(result, fragment: str) -> None:
    """Exit 2, nothing on stdout, one `error:` line holding the fragment, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and fragment in line, line


@pytest.mark.parametrize(("text", "fragment"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
@pytest.mark.parametrize("command", ["run", "paths", "check"])
def test_a_bad_function_config_is_one_error_line_and_exit_2(tmp_path, command, text, fragment):
    extra = [] if command == "check" else ["--runs-dir", tmp_path / "runs"]
    assert_user_error(gdtrain(command, write(tmp_path, text), *extra), fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("optimizers", "fragment"),
    [
        (
            "sgd,adamm",
            "--optimizers: unknown optimizer 'adamm'; did you mean 'adam'? choose from: sgd, momentum, "
            "nesterov, adagrad, rmsprop, adam, adamw",
        ),
        ("sgd,,adam", "--optimizers: expected names separated by commas"),
        ("adam:fast", "--optimizers adam:fast: the lr after ':' must be a number, got 'fast'"),
        ("adam:-1", "--optimizers adam:-1: optimizer.lr: must be > 0, got -1.0"),
        ("sgd,sgd:0.1", "--optimizers: each name and lr once"),
    ],
)
def test_paths_with_bad_optimizers_is_one_error_line_and_exit_2(tmp_path, optimizers, fragment):
    result = gdtrain("paths", QUADRATIC, "--optimizers", optimizers, "--runs-dir", tmp_path / "runs")
    assert_user_error(result, fragment)
    assert not (tmp_path / "runs").exists()


def test_paths_on_a_config_that_is_not_a_function(tmp_path):
    result = gdtrain("paths", CONFIGS / "smoke.yaml", "--runs-dir", tmp_path / "runs")
    assert_user_error(result, "data.name: gdtrain paths needs data: {name: function, ...}, got 'blobs'")


@pytest.mark.parametrize("command", ["run", "paths"])
def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    result = gdtrain(command, QUADRATIC, "--runs-dir", tmp_path / "runs")
    assert_user_error(result, "needs matplotlib, which is not installed; pip install 'gdtrain[plot]'")
    assert not (tmp_path / "runs").exists()


def test_paths_help_names_its_options():
    result = gdtrain("paths", "--help")
    assert result.exit_code == 0
    for fragment in ["--optimizers", "NAME:LR", "--set", "--runs-dir", "--name", "--device"]:
        assert fragment in result.stdout
