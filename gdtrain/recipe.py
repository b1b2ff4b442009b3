"""One experiment from a validated config to a finished run folder.

Order matters for the promise that bad input loses nothing: the device and the data are checked
before the run folder exists, and summary.json is written last.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gdtrain import engine
from gdtrain.config import Config, FunctionData, check_name, to_dict
from gdtrain.datasets import build_dataset
from gdtrain.errors import UserError
from gdtrain.models import build_model
from gdtrain.optimizers import build_optimizer, build_schedule, build_warmup, implementation
from gdtrain.runs import Tracker, flatten, new_run_dir, provenance, write_config, write_json_atomic
from gdtrain.yamlio import dump_yaml


def resolve_device(setting: str) -> torch.device:
    """auto → CUDA when present, else CPU; asking for CUDA without a GPU is a user error."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda requested but no CUDA GPU is available; use --device auto or cpu")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches: Python, NumPy, torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_name(config: Config) -> str:
    """`<optimizer>-lr<lr>`, so runs of one experiment tell themselves apart in TensorBoard."""
    return f"{config.optimizer.name}-lr{config.optimizer.lr:g}"


def run(config: Config, runs_dir: Path, run_name: str | None = None, quiet: bool = False) -> tuple[Path, engine.Outcome]:
    """Train the configured experiment into a new run folder; return the folder and the outcome."""
    if run_name is not None:
        try:
            check_name(run_name)
        except ValueError as err:
            raise UserError(f"--name: {err}") from None
    if isinstance(config.data, FunctionData):  # no data or model: x itself descends f (gdtrain/paths.py)
        from gdtrain import paths  # it imports this module's helpers

        descent = paths.run_function(config, runs_dir, run_name)
        return descent.run_dir, descent.outcome
    device = resolve_device(config.train.device)
    seed_everything(config.experiment.seed)
    data = build_dataset(config).to(device)
    loss = config.train.loss
    model = build_model(config.model, data.in_features, data.out_features(loss)).to(device)
    optimizer = build_optimizer(config.optimizer, model)
    steps = engine.plan(len(data.x_train), config.train)
    scheduler = build_schedule(config.schedule, optimizer, steps.epochs)
    warmup = build_warmup(config.schedule, optimizer)
    order = torch.Generator(device=device).manual_seed(config.experiment.seed)

    run_name = run_name or config.experiment.run_name or default_run_name(config)
    run_dir = new_run_dir(runs_dir, config.experiment.name, run_name)
    meta = provenance(device, config.experiment.seed) | {"optimizer_kernel": implementation(config.optimizer, device)}
    resolved = to_dict(config)
    write_config(run_dir, dump_yaml(resolved), meta)
    tracker = Tracker(run_dir)
    metric_tags = ["loss/train", "loss/val"] + ([] if loss == "mse" else ["accuracy/val"])
    tracker.log_hparams(flatten(resolved) | {"train.batch_size": steps.batch_size}, metric_tags)
    started = time.perf_counter()
    try:
        outcome = engine.train(model, data, optimizer, scheduler, warmup, tracker, config.train, steps, order, quiet)
    except Exception as err:  # a bug or an environment failure: record it, then let it surface
        summary = {"status": "failed", "error": f"{type(err).__name__}: {err}", "environment": meta}
        write_json_atomic(run_dir / "summary.json", summary)
        raise
    finally:
        tracker.close()
    torch.save(model.state_dict(), run_dir / "model.pt")
    write_json_atomic(run_dir / "summary.json", summarise(outcome, steps, time.perf_counter() - started, meta))
    return run_dir, outcome


def summarise(outcome: engine.Outcome, steps: engine.Plan, wall_seconds: float, meta: dict[str, Any]) -> dict[str, Any]:
    """summary.json: status, final and best metrics, counts, times and throughput."""
    fields = asdict(outcome)
    return {
        "status": fields.pop("status"),
        "final": fields.pop("final"),
        "best": fields.pop("best"),
        **fields,
        "batch_size": steps.batch_size,
        "wall_seconds": round(wall_seconds, 3),
        "samples_per_second": round(outcome.samples / outcome.train_seconds, 1) if outcome.train_seconds else None,
        "environment": meta,
    }
