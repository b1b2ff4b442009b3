"""`grad_norm` and `lr` mean the same in both loops: the norm before clipping, the lr the step used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gdtrain.components.losses import LOSSES
from gdtrain.core.config import validate
from gdtrain.training import recipe

LR, START, WARMUP = 0.1, 0.2, 6  # warm-up from 0.2·lr over 6 steps


def logged(run_dir: Path) -> list[dict]:
    """The per-step lines of metrics.jsonl (no start point, no per-epoch figures)."""
    return [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "lr" in m]


def warmed(step: int) -> float:
    """LinearLR's lr for optimizer step `step` (counted from 1): it has stepped step − 1 times."""
    return LR * (START + (1 - START) * min(step - 1, WARMUP) / WARMUP)


def dataset_run(**train) -> dict:
    """The engine's loop: a regression on 80 training samples, plain SGD, warm-up only."""
    return {
        "data": {"name": "linear_regression", "n_samples": 100},
        "optimizer": {"name": "sgd", "lr": LR},
        "schedule": {"name": "constant", "warmup_steps": WARMUP, "warmup_start_factor": START},
        "train": {"log_every": 1, **train},
    }


def function_run(**train) -> dict:
    """The function-descent loop: x² from 10, plain SGD, warm-up only."""
    return {
        "data": {"name": "function", "function": "quadratic", "start": [10.0]},
        "optimizer": {"name": "sgd", "lr": LR},
        "schedule": {"name": "constant", "warmup_steps": WARMUP, "warmup_start_factor": START},
        "train": train,
    }


@pytest.mark.parametrize(
    "raw", [dataset_run(epochs=2, batch_size=10), function_run(max_steps=10)], ids=["engine", "function"]
)
def test_lr_is_the_lr_the_step_used(tmp_path, raw):
    run_dir, outcome = recipe.run(validate(raw, "test"), tmp_path, quiet=True)
    steps = [m["step"] for m in logged(run_dir)]
    assert steps == list(range(1, outcome.steps + 1)) and outcome.steps > WARMUP
    assert [m["lr"] for m in logged(run_dir)] == pytest.approx([warmed(s) for s in steps], rel=1e-12)


def test_grad_norm_is_the_engines_norm_before_clipping(tmp_path):
    cfg = validate(dataset_run(max_steps=1, batch_size="full", grad_clip=0.01), "test")
    parts = recipe.build(cfg)  # the run's own start: the same seed gives the same weights and data
    LOSSES[cfg.train.loss](parts.model(parts.data.x_train), parts.data.y_train).backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in parts.model.parameters()]).item()
    run_dir, _ = recipe.run(cfg, tmp_path, quiet=True)
    (line,) = logged(run_dir)
    assert expected > 100 * cfg.train.grad_clip  # the step was clipped
    assert line["grad_norm"] == pytest.approx(expected, rel=1e-6)


def test_grad_norm_before_clipping_in_both_loops(tmp_path):
    engine_dir, _ = recipe.run(
        validate(dataset_run(epochs=2, batch_size=10, grad_clip=0.01), "test"), tmp_path / "engine", quiet=True
    )
    assert all(m["grad_norm"] > 0.01 for m in logged(engine_dir))  # after clipping it would be 0.01 at most

    function_dir, _ = recipe.run(
        validate(function_run(max_steps=10, grad_clip=1.0), "test"), tmp_path / "function", quiet=True
    )
    xs = [m["x/0"] for m in map(json.loads, (function_dir / "metrics.jsonl").read_text().splitlines())]
    assert [m["grad_norm"] for m in logged(function_dir)] == pytest.approx([2 * x for x in xs[:-1]], rel=1e-12)
