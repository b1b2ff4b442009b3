"""Optimizer paths on test functions: the `function` problem kind and `gdtrain paths`.

The parameter is one tensor x, float64 so that a path meets its closed form to rounding, handed
to the configured torch.optim optimizer. Each step takes the full gradient of f, so it is one epoch
of batch gradient descent: the epoch schedules step once per optimizer step (plateau on f(x)).
Logged per step s: loss/train = f(x_s) (s = 0 is the start), lr and grad_norm = |∇f(x_{s-1})|
(before clipping) as used by step s, and the coordinates x/0, x/1, so metrics.jsonl holds the path.

torch's SGD with momentum = dampening = β follows the tutorials' v = βv + (1 − β)g except on its first
step, where it takes v₁ = g₁ instead of (1 − β)g₁ (the tutorials start from v = 0), so its first step is
1/(1 − β) times longer and the paths differ from there on. Set the optimizer's momentum buffer to
zero before the first step and torch takes the tutorials' path exactly (tests/test_descent.py checks both).
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gdtrain.components.functions import FUNCTIONS, Objective
from gdtrain.components.optimizers import (
    build_optimizer,
    build_schedule,
    build_warmup,
    implementation,
    provenance,
    set_mode,
)
from gdtrain.core import optimizers as registry
from gdtrain.core import plotting, runs
from gdtrain.core.config import Config, FunctionData, OptimizerConfig, ScheduleConfig, TrainConfig, to_dict, validate
from gdtrain.core.errors import UserError
from gdtrain.training import board, pathplot
from gdtrain.training.determinism import seed_everything
from gdtrain.training.device import resolve_device
from gdtrain.training.lifecycle import Outcome, step_schedule
from gdtrain.training.tracker import Tracker

# What each `gdtrain paths --optimizers` name means: the optimizer's schema defaults plus these.
ALIASES = registry.ALIASES


@dataclass(frozen=True)
class Descent:
    """One finished function run: its folder, outcome and path."""

    run_dir: Path
    outcome: Outcome
    points: Tensor  # (steps + 1, D) float64 on the CPU, the start first
    values: Tensor  # (steps + 1,) f at each point


def _coordinates(x: Tensor) -> dict[str, float]:
    return {f"x/{i}": v for i, v in enumerate(x.tolist())}


def descend(
    objective: Objective,
    start: list[float],
    optimizer_cfg: OptimizerConfig,
    schedule_cfg: ScheduleConfig,
    settings: TrainConfig,
    device: torch.device,
    tracker: Tracker,
) -> tuple[Outcome, Tensor]:
    """Minimise f from `start` for `settings.max_steps` steps; return the outcome and the path (S + 1, D)."""
    x = nn.Parameter(torch.tensor(start, dtype=torch.float64, device=device))  # (D,)
    optimizer = build_optimizer(optimizer_cfg, nn.ParameterList([x]))
    scheduler = build_schedule(schedule_cfg, optimizer, settings.max_steps)  # an epoch is a step here
    warmup = build_warmup(schedule_cfg, optimizer)
    set_mode(optimizer, training=True)  # Schedule-Free: the path is its training point, where f is differentiated
    outcome, points, started = Outcome(), [x.detach().cpu().clone()], time.perf_counter()
    loss = objective.f(x)
    outcome.final = {"loss/train": loss.item(), **_coordinates(x)}
    tracker.log_step(outcome.final, step=0, epoch=0)
    for step in range(1, settings.max_steps + 1):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # ∇f(x_{step-1})
        grad_norm = x.grad.norm().item()
        if settings.grad_clip is not None:
            nn.utils.clip_grad_norm_([x], settings.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        loss = objective.f(x)  # f(x_step): logged now, differentiated by the next step
        if not math.isfinite(loss.item()):
            outcome.status, outcome.diverged_at_step = "diverged", step
            break
        if warmup is not None and step <= warmup.total_iters:
            warmup.step()
        step_schedule(scheduler, loss.item())  # an epoch is a step: plateau on f(x)
        points.append(x.detach().cpu().clone())
        values = {"loss/train": loss.item(), "lr": lr, "grad_norm": grad_norm, **_coordinates(x)}
        tracker.log_step(values, step=step, epoch=step)
        outcome.final.update(values)
        outcome.steps = outcome.epochs = step
        if values["loss/train"] < outcome.best.get("loss/train", math.inf):
            outcome.best.update({"loss/train": values["loss/train"], "loss/train_step": step})
    outcome.train_seconds = time.perf_counter() - started
    return outcome, torch.stack(points)


def _note(outcome: Outcome) -> str:
    return "" if outcome.status == "finished" else f"diverged at step {outcome.diverged_at_step}"


def subtitle(label: str, config: Config, steps: int) -> str:
    """`adam lr 0.1, 20 steps from (10)` and the schedule when there is one."""
    start = ", ".join(f"{v:g}" for v in config.data.start)
    schedule = "" if config.schedule.name == "constant" else f", {config.schedule.name} schedule"
    return f"{label}, {steps} steps from ({start}){schedule}"


def run_function(
    config: Config,
    runs_dir: Path,
    run_name: str | None = None,
    label: str | None = None,
    say: Callable[[str], None] | None = None,
) -> Descent:
    """Minimise the configured test function into a new run folder with path.png; never raises on
    divergence. `say` is told the folder as soon as it exists."""
    plotting.require_matplotlib("drawing optimizer paths")
    device = resolve_device(config.train.device)
    seed_everything(config.experiment.seed)
    objective, label = FUNCTIONS[config.data.function], label or config.optimizer.name
    meta = (
        runs.provenance(device, config.experiment.seed)
        | {"optimizer_kernel": implementation(config.optimizer, device)}
        | provenance(config.optimizer)
    )
    run_dir, lock = runs.create_run(runs_dir, config, runs.run_name(config, run_name), meta)
    if say is not None:
        say(f"run folder: {run_dir}   (tensorboard --logdir {run_dir.parent})")
    with lock:  # the folder is this process's until its summary is written
        try:
            return _record(objective, label, config, device, run_dir, meta)
        except OSError as err:  # a full disk, or the folder made read-only
            raise UserError(
                f"{run_dir}: cannot write ({err.strerror or err}); run it again once it can be "
                f"written: gdtrain run {run_dir / 'config.yaml'}"
            ) from None


def _record(
    objective: Objective, label: str, config: Config, device: torch.device, run_dir: Path, meta: dict[str, Any]
) -> Descent:
    """run_function's descent, logged into `run_dir`: metrics, path.png, then summary.json."""
    tracker = Tracker(run_dir)
    tracker.log_hparams(runs.flatten(to_dict(config)))
    board.define(run_dir.parent)
    started = time.perf_counter()
    try:
        outcome, points = descend(
            objective, config.data.start, config.optimizer, config.schedule, config.train, device, tracker
        )
        tracker.log_end(outcome.status)
        values = objective.f(points.T)  # (S + 1,)
        trace = pathplot.Trace(
            f"{label} lr {config.optimizer.lr:g}", points, values, _note(outcome), config.optimizer.name
        )
        figure = pathplot.draw(objective, [trace], subtitle(trace.label, config, outcome.steps))
        image = plotting.render(figure)  # (H, W, 3)
        plotting.save_pixels(image, run_dir / "path.png")
        tracker.writer.add_image("path", image, outcome.steps, dataformats="HWC")
    except Exception as err:  # a bug or an environment failure: record it, then let it surface
        runs.record_failure(run_dir, err, meta)
        raise
    finally:
        tracker.close()
    summary = {
        "status": outcome.status,
        "final": outcome.final,
        "best": outcome.best,
        "steps": outcome.steps,
        "diverged_at_step": outcome.diverged_at_step,
        "function": config.data.function,
        "x": points[-1].tolist(),
        "f": float(values[-1]),
        "minimum": list(objective.minimum[: points.shape[1]]),
        "distance_to_minimum": float((points[-1] - torch.tensor(objective.minimum[: points.shape[1]])).norm()),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "environment": meta,
    }
    runs.write_summary(run_dir, summary)
    return Descent(run_dir, outcome, points, values)


def parse_optimizers(text: str, config: Config) -> list[tuple[str, Config]]:
    """`sgd,momentum,adam:0.01` → (label, config with that optimizer); lr is the config's unless given."""
    entries = [entry.strip() for entry in text.split(",")]
    if not all(entries):
        raise UserError(f"--optimizers: expected names separated by commas, got {text!r}")
    chosen, base = [], to_dict(config)
    for entry in entries:
        name, sep, lr_text = entry.partition(":")
        if name not in ALIASES:
            close = difflib.get_close_matches(name, list(ALIASES), n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(
                f"--optimizers: unknown optimizer '{name}'; {hint}choose from: {', '.join(ALIASES)}"
                " (NAME:LR sets that one's lr)"
            )
        try:
            lr = float(lr_text) if sep else config.optimizer.lr
        except ValueError:
            raise UserError(f"--optimizers {entry}: the lr after ':' must be a number, got {lr_text!r}") from None
        optimizer = {**ALIASES[name], "lr": lr}
        kernel = getattr(config.optimizer, "implementation", "auto")
        if kernel != "auto" and len(registry.OPTIMIZERS[optimizer["name"]].kernels) > 1:
            optimizer["implementation"] = kernel
        try:
            chosen.append((name, validate({**base, "optimizer": optimizer}, f"--optimizers {entry}")))
        except UserError as err:
            raise UserError(str(err).replace("\n", "; ")) from None
    if len({(label, cfg.optimizer.lr) for label, cfg in chosen}) != len(chosen):
        raise UserError(f"--optimizers: each name and lr once, got {text!r}")
    return chosen


def run_paths(
    config: Config, optimizers: str, runs_dir: Path, run_name: str | None = None
) -> tuple[Path, list[Descent]]:
    """One run per optimizer, then all their paths in one figure in a `paths` run folder."""
    if not isinstance(config.data, FunctionData):
        raise UserError(f"data.name: gdtrain paths needs data: {{name: function, ...}}, got '{config.data.name}'")
    name = runs.run_name(config, run_name or "paths")
    plotting.require_matplotlib("drawing optimizer paths")
    chosen = parse_optimizers(optimizers, config)
    device = resolve_device(config.train.device)  # a user error before any folder exists
    descents = [run_function(cfg, runs_dir, f"{label}-lr{cfg.optimizer.lr:g}", label) for label, cfg in chosen]
    objective = FUNCTIONS[config.data.function]
    traces = [
        pathplot.Trace(f"{label} lr {cfg.optimizer.lr:g}", d.points, d.values, _note(d.outcome), cfg.optimizer.name)
        for (label, cfg), d in zip(chosen, descents)
    ]
    lrs = {cfg.optimizer.lr for _, cfg in chosen}
    names = ", ".join(dict.fromkeys(label for label, _ in chosen))
    names += f", lr {lrs.pop():g}" if len(lrs) == 1 else ", lr as in the legend"
    steps = config.train.max_steps
    figure = pathplot.draw(objective, traces, subtitle(names, config, steps))
    image = plotting.render(figure)  # (H, W, 3)
    summary = {
        "status": "finished" if all(d.outcome.status == "finished" for d in descents) else "diverged",
        "function": config.data.function,
        "start": config.data.start,
        "steps": steps,
        "picture": "paths.png",
        "runs": [
            {
                "label": label,
                "optimizer": to_dict(cfg)["optimizer"],
                "status": d.outcome.status,
                "diverged_at_step": d.outcome.diverged_at_step,
                "x": d.points[-1].tolist(),
                "f": float(d.values[-1]),
                "run_dir": str(d.run_dir),
            }
            for (label, cfg), d in zip(chosen, descents)
        ],
    }
    meta = runs.provenance(device, config.experiment.seed) | {"optimizers": optimizers}
    run_dir, lock = runs.create_run(runs_dir, config, name, meta)
    with lock:
        try:
            plotting.save_pixels(image, run_dir / "paths.png")
            tracker = Tracker(run_dir)
            tracker.writer.add_image("paths", image, steps, dataformats="HWC")
            tracker.close()
            runs.write_summary(run_dir, summary)
        except OSError as err:  # a full disk, or the folder made read-only
            raise UserError(f"{run_dir}: cannot write ({err.strerror or err}); the runs it draws are kept") from None
    return run_dir, descents
