"""One experiment from a validated config to a finished run folder.

Order matters for the promise that bad input loses nothing: the device and the data are checked
before the run folder exists, and summary.json is written last.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gdtrain.components.datasets import Dataset, build_dataset
from gdtrain.components.models import build_model
from gdtrain.components.optimizers import build_optimizer, build_schedule, build_warmup, implementation, provenance
from gdtrain.core import runs
from gdtrain.core.config import Config, FunctionData, to_dict
from gdtrain.core.errors import UserError
from gdtrain.core.signals import Stop, stop_on_signals
from gdtrain.training import checkpoints, descent, distributed, engine, lifecycle, memory
from gdtrain.training.checkpoints import Checkpoints
from gdtrain.training.determinism import seed_everything, set_determinism
from gdtrain.training.device import resolve_device
from gdtrain.training.engine import Parts
from gdtrain.training.lifecycle import Outcome, Progress
from gdtrain.training.tracker import NullTracker, Tracker


def build(config: Config) -> Parts:
    """Seed, then build data (checked before any folder exists, and refused before anything is
    allocated when the run cannot fit in memory), model, optimizer and schedules."""
    set_determinism(config.train.deterministic)  # before CUDA starts: cuBLAS reads its setting once
    device = resolve_device(config.train.device)
    world = distributed.join(cuda=device.type == "cuda")
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    seed_everything(config.experiment.seed)
    sizes = memory.data_sizes(config)  # from the config or the IDX headers: nothing is read or made yet
    memory.check(config, sizes, lifecycle.plan(sizes.n_train, config.train).batch_size, device, world.size)
    data = build_dataset(config).to(device)
    model = build_model(config.model, data.in_features, data.out_features(config.train.loss)).to(device)
    optimizer = build_optimizer(config.optimizer, model)
    steps = lifecycle.plan(len(data.x_train), config.train)
    distributed.check_batch(world, steps.batch_size)
    scheduler = build_schedule(config.schedule, optimizer, steps.epochs)
    warmup = build_warmup(config.schedule, optimizer)
    order = torch.Generator(device=device).manual_seed(config.experiment.seed)
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16")
    line = lifecycle.fits_line(config)
    return Parts(device, data, model, optimizer, scheduler, warmup, scaler, config.train, steps, order, world, line)


def compiled(model: nn.Module, data: Dataset, config: Config, batch_size: int) -> nn.Module:
    """torch.compile(model), tried on one batch (forward and backward, RNG untouched); the model
    itself, with a warning, when compiling fails: a missing compiler must not stop a run."""
    if not config.train.compile:
        return model
    try:
        candidate = torch.compile(model)
        batch = data.x_train[:batch_size]  # the training shape, so the first step needs no recompile
        with torch.random.fork_rng(devices=[data.x_train.device] if data.x_train.is_cuda else []):
            candidate(batch).float().sum().backward()
        model.zero_grad(set_to_none=True)
        return candidate
    except Exception as err:  # inductor needs a C++ compiler and a supported platform
        model.zero_grad(set_to_none=True)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        sys.stderr.write(
            f"warning: train.compile: torch.compile failed ({type(err).__name__}: {first}); training without it\n"
        )
        return model


def run(
    config: Config,
    runs_dir: Path,
    run_name: str | None = None,
    quiet: bool = False,
    say: Callable[[str], None] | None = None,
) -> tuple[Path, Outcome]:
    """Train the configured experiment into a new run folder; return the folder and the outcome.
    `say` (rank 0's) is told the folder as soon as it exists."""
    name = runs.run_name(config, run_name)
    if isinstance(config.data, FunctionData):  # no data or model: x itself descends f (gdtrain/training/descent.py)
        done = descent.run_function(config, runs_dir, name, say=say)
        return done.run_dir, done.outcome
    parts = build(config)
    meta = _meta(config, parts)
    owned: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()  # other ranks write nothing
    tracker: Tracker | NullTracker = NullTracker()
    with distributed.together(parts.world):  # a folder rank 0 cannot make stops every rank
        if parts.world.main:
            run_dir, owned = runs.create_run(runs_dir, config, name, meta)
            if say is not None:
                say(f"run folder: {run_dir}   (tensorboard --logdir {run_dir.parent})")
    with owned:  # the folder is this process's from its first file to its last
        with distributed.together(parts.world):
            if parts.world.main:
                tracker = lifecycle.open_tracker(run_dir, config, meta, parts.world.size)
        run_dir = Path(
            distributed.gather(str(run_dir) if parts.world.main else "", parts.world)[0]
            if parts.world.size > 1
            else run_dir
        )
        return run_dir, _train(config, parts, run_dir, tracker, None, meta, quiet)


def resume(
    run_dir: Path, quiet: bool = False, say: Callable[[str], None] | None = None, step: int | None = None
) -> Outcome:
    """Continue a run from its newest checkpoint (or the one at `step`, the newer ones dropped), into
    the same folder, as if it had never stopped; `say` (rank 0's) is told where it continues."""
    config = runs.load_run_config(run_dir) if (run_dir / "config.yaml").is_file() else None
    if config is None:
        raise UserError(f"{run_dir}: not a run folder (no config.yaml); give runs/<experiment>/<run>")
    status = runs.status(run_dir)
    if status in runs.RESULTS:
        raise UserError(
            f"{run_dir}: already {status}; nothing to resume (gdtrain run {run_dir / 'config.yaml'} starts anew)"
        )
    if isinstance(config.data, FunctionData):
        raise UserError(
            f"{run_dir}: function runs keep no checkpoints; run again: gdtrain run {run_dir / 'config.yaml'}"
        )
    with own(run_dir):  # before reading a checkpoint: an owner could be replacing it
        return _continue(run_dir, config, quiet, say, step)


def own(run_dir: Path) -> contextlib.AbstractContextManager[Any]:
    """This process's hold on an existing run folder (runs.lock_run); under torchrun, rank 0's alone."""
    # The other ranks write nothing, so they hold nothing.
    if os.environ.get("RANK", "0") != "0":  # torchrun's rank, known before joining its group
        return contextlib.nullcontext()
    try:
        return runs.lock_run(run_dir)
    except OSError as err:
        raise UserError(f"{run_dir}: cannot write in it ({err.strerror or err})") from None


def _continue(
    run_dir: Path, config: Config, quiet: bool, say: Callable[[str], None] | None = None, step: int | None = None
) -> Outcome:
    """resume() once the folder is this process's: restore the newest checkpoint (or `step`'s) and train on."""
    resolved = to_dict(config)
    saved = Checkpoints(run_dir, config.train.keep_last, resolved)
    latest = saved.continue_from(step)
    if latest is None:
        raise UserError(
            f"{run_dir}: no checkpoint in it (it stopped before its first); "
            f"run it again: gdtrain run {run_dir / 'config.yaml'}"
        )
    state = checkpoints.load(latest, resolved)
    parts = build(config)
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    if parts.scheduler is not None:
        parts.scheduler.load_state_dict(state["scheduler"])
    if parts.warmup is not None:
        parts.warmup.load_state_dict(state["warmup"])
    parts.scaler.load_state_dict(state["scaler"])  # disabled (not fp16), it ignores what it is given
    rng, world = state["rng"], parts.world
    if isinstance(rng, list) != (world.size > 1) or (world.size > 1 and len(rng) != world.size):
        saved_by = len(rng) if isinstance(rng, list) else 1
        raise UserError(
            f"{latest}: written by {saved_by} process(es); resume it with as many "
            f"(gdtrain resume --nproc {saved_by}), not {world.size}"
        )
    checkpoints.restore_rng(rng[world.rank] if world.size > 1 else rng, parts.order)
    progress = Progress.from_state(state["progress"], parts.device)
    if say is not None and world.main:
        within = f", its step {progress.step_in_epoch}" if progress.step_in_epoch else " from its start"
        say(
            f"resuming {run_dir} at epoch {progress.epoch}/{parts.steps.epochs}{within}, step "
            f"{progress.outcome.steps} overall (checkpoint {latest.name})"
        )
    meta = _meta(config, parts) | {"resumed_from": str(latest)}
    tracker: Tracker | NullTracker = NullTracker()
    with distributed.together(world):
        if world.main:
            tracker = lifecycle.open_tracker(run_dir, config, meta, world.size, state["metrics_offset"])
    return _train(config, parts, run_dir, tracker, progress, meta, quiet)


def _meta(config: Config, parts: Parts) -> dict[str, Any]:
    return (
        runs.provenance(parts.device, config.experiment.seed)
        | {"optimizer_kernel": implementation(config.optimizer, parts.device)}
        | provenance(config.optimizer)
    )


def _run_engine(
    config: Config,
    parts: Parts,
    tracker: Tracker | NullTracker,
    saved: Checkpoints | None,
    progress: Progress | None,
    stop: Stop,
    quiet: bool,
) -> Outcome:
    """engine.train on the model, wrapped in DistributedDataParallel with several processes."""
    world = parts.world
    model = compiled(parts.model, parts.data, config, parts.steps.batch_size)
    if world.size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[world.local_rank] if parts.device.type == "cuda" else None
        )
    outcome = engine.train(
        parts,
        tracker=tracker,
        checkpoints=saved,
        progress=progress,
        stop=stop,
        quiet=quiet or not world.main,
        model=model,
    )
    # The wrapper is freed here, before leave() destroys the process group: its Reducer, freed
    # after that, joins gloo's worker thread while holding the GIL and the rank hangs at exit
    # (pytorch/pytorch#56297). The collect frees it even if a reference cycle holds it.
    del model
    gc.collect()
    return outcome


def _train(
    config: Config,
    parts: Parts,
    run_dir: Path,
    tracker: Tracker | NullTracker,
    progress: Progress | None,
    meta: dict[str, Any],
    quiet: bool,
) -> Outcome:
    """Run the engine with checkpoints and signal handling; write model.pt and summary.json."""
    world = parts.world
    saved = Checkpoints(run_dir, config.train.keep_last, to_dict(config)) if world.main else None
    stop, started = Stop(), time.perf_counter()
    # The handlers stay until summary.json is written: a second signal while the processes leave
    # the group or rank 0 writes (torchrun turns a second Ctrl-C into SIGTERM) is then recorded
    # as an interruption instead of killing the process before it has said so.
    with stop_on_signals(stop, world.main, world.size):
        try:
            try:
                outcome = _run_engine(config, parts, tracker, saved, progress, stop, quiet)
                tracker.log_end(outcome.status)
            finally:
                tracker.close()
            distributed.leave(world)
            if not world.main:
                return outcome
            lifecycle.save_weights(run_dir, outcome, parts.model.state_dict())
        except OSError as err:  # disk full, folder removed or made read-only while training
            raise (
                lifecycle.disk_error(run_dir, err, meta, world.size)
                if world.main
                else UserError(
                    f"{run_dir}: cannot write ({err.strerror or err}); "
                    f"{runs.resume_command(run_dir, world.size)} once fixed"
                )
            ) from None
        except BaseException as err:  # a bug, or a second Ctrl-C: record it, then let it surface
            if world.main:
                runs.record_failure(run_dir, err, meta, runs.resume_command(run_dir, world.size))
            raise
        lifecycle.write_summary(
            run_dir, outcome, parts.steps, time.perf_counter() - started, meta, saved, config, world.size
        )
    return outcome


def evaluate_run(run_dir: Path, which: str) -> tuple[Path, dict[str, float]]:
    """Validation and test metrics of a run's `best` or `last` weights."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml); give runs/<experiment>/<run>")
    config = runs.load_run_config(run_dir)
    if isinstance(config.data, FunctionData):
        raise UserError(f"{run_dir}: a function run has no data to evaluate; its summary.json holds f(x)")
    resolved = to_dict(config)
    saved = Checkpoints(run_dir, config.train.keep_last, resolved)
    if which == "best":
        path = saved.folder / "best.pt"
    elif (run_dir / "model.pt").exists():
        path = run_dir / "model.pt"  # a finished run's final weights
    else:
        path = saved.latest() or run_dir / "model.pt"  # an unfinished run's newest checkpoint
    if not path.exists():
        raise UserError(f"{path}: not found; this run saved no {which} weights yet")
    if path.name == "model.pt":
        weights = checkpoints.load_weights(path)
    else:
        weights = checkpoints.state_dict_in(checkpoints.load(path, resolved).get("model"), path)
    parts = build(config)
    try:
        parts.model.load_state_dict(weights)
    except RuntimeError as err:
        raise UserError(f"{path}: the weights do not fit this run's model ({str(err).splitlines()[0]})") from None
    results: dict[str, float] = {}
    data, settings = parts.data, config.train
    for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
        if x is not None:
            loss, acc = engine.evaluate(parts.model, x, y, settings.loss, settings.eval_batch_size)
            results[f"loss/{split}"] = loss
            if acc is not None:
                results[f"accuracy/{split}"] = acc
    return path, results
