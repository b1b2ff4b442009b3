"""A run's life, the steps both loops take: one run (engine.train) and a stacked group, each of whose
members lives the same life (gdtrain/stacked/loop.py). Each step is written here once and called by
both, so the loops keep only their own maths and still read top to bottom:

- the plan: batch size, steps per epoch, run length; the run's tracker opened;
- where the loop is (`Progress`) and what the run did (`Outcome`), which a checkpoint holds;
- an epoch's data order: the RNG state at its start, put back to redraw it when resuming mid-epoch;
- the clock: time in training steps, the first epoch of each process apart (it pays the start);
- the log window: every `log_every` steps, the mean train loss, or the step where it stopped being finite;
- when to checkpoint, and the checkpoint's payload, one format for a run and a stacked member (a
  member is resumed alone, or in another group);
- an epoch's end: validation logged, divergence, the best weights kept, the schedule stepped
  (plateau on the validation loss), patience counted;
- the fitted line: on linear_regression data a linear model's learned w and b, logged at each log
  point (so at every epoch's end) and written in summary.json beside the true ones;
- the finish: test figures, model.pt and summary.json, and the one line for a disk that fails.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim import lr_scheduler

from gdtrain.core import runs
from gdtrain.core.config import Config, TrainConfig, to_dict
from gdtrain.core.errors import UserError
from gdtrain.core.metrics import improves
from gdtrain.training import board
from gdtrain.training.checkpoints import Checkpoints, save_atomic
from gdtrain.training.tracker import NullTracker, Tracker

# What a stacked group counts once for all its members (and copies into each one's Outcome).
COUNTERS = ("epochs", "steps", "samples", "train_seconds", "first_epoch_seconds", "first_epoch_samples")


@dataclass(frozen=True)
class Plan:
    """How a run is cut into steps, from the training-set size and the train settings."""

    batch_size: int  # samples per optimizer step
    steps_per_epoch: int
    max_steps: int  # optimizer steps in the whole run
    epochs: int  # epochs started, the last one possibly cut short by max_steps


def plan(n_train: int, settings: TrainConfig) -> Plan:
    """Batch size, steps per epoch and run length; `batch_size: full` is one step per epoch."""
    batch_size = n_train if settings.batch_size == "full" else settings.batch_size
    steps_per_epoch = math.ceil(n_train / batch_size)
    max_steps = settings.max_steps or settings.epochs * steps_per_epoch
    return Plan(batch_size, steps_per_epoch, max_steps, math.ceil(max_steps / steps_per_epoch))


@dataclass
class Outcome:
    """What a run did; the finish turns it into summary.json."""

    status: str = "finished"  # finished | diverged | interrupted
    epochs: int = 0  # epochs completed or cut short
    steps: int = 0  # optimizer steps taken
    samples: int = 0  # training samples seen
    train_seconds: float = 0.0  # time in training steps, validation excluded
    # The first epoch each process trains pays its start (lazy initialisation, kernel choice, the
    # allocator's growth): samples/s in summary.json leaves these out when later epochs exist.
    first_epoch_seconds: float = 0.0
    first_epoch_samples: int = 0
    stopped_early: bool = False
    diverged_at_step: int | None = None
    signal: int | None = None  # the signal that interrupted the run
    final: dict[str, float] = field(default_factory=dict)  # last value of each tag
    best: dict[str, float] = field(default_factory=dict)  # best val metrics and their epochs


@dataclass
class Progress:
    """Where the loop is; with the trained objects' states, what a checkpoint holds."""

    epoch: int = 1  # the epoch in progress
    step_in_epoch: int = 0  # its optimizer steps already taken
    seen: int = 0  # its training samples already seen
    epoch_order: Tensor | None = None  # data-order RNG state at its start: redraws its permutation
    stale_epochs: int = 0  # epochs since the validation loss last improved by min_delta
    best_for_patience: float = math.inf
    pending: list[Tensor] = field(default_factory=list)  # 0-d train losses since the last log point
    outcome: Outcome = field(default_factory=Outcome)

    def state(self) -> dict[str, Any]:
        """As plain values and CPU tensors, for a checkpoint."""
        fields = {k: v for k, v in self.__dict__.items() if k not in ("pending", "outcome")}
        pending = torch.stack(self.pending).cpu() if self.pending else torch.zeros(0)
        return fields | {"pending": pending, "outcome": asdict(self.outcome)}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Progress:
        """The Progress a checkpoint saved, its pending losses back on `device`."""
        fields = {k: v for k, v in state.items() if k not in ("pending", "outcome")}
        return cls(**fields, pending=list(state["pending"].to(device).unbind()), outcome=Outcome(**state["outcome"]))


def open_tracker(
    run_dir: Path,
    config: Config,
    meta: dict[str, Any],
    processes: int = 1,
    resume_at: int | None = None,
    define: bool = True,
) -> Tracker:
    """Rank 0's Tracker, its HParams session logged and (with `define`) the experiment's definition
    updated; a full disk here is the same one line as mid-run."""
    try:
        if resume_at is not None:
            runs.reopen(run_dir)
        tracker = Tracker(run_dir, resume_at)
        tracker.log_hparams(runs.flatten(to_dict(config)))
    except OSError as err:
        raise disk_error(run_dir, err, meta, processes) from None
    if define:
        board.define(run_dir.parent)  # the experiment's HParams now list this run's settings too
    return tracker


def epoch_orders(
    at: Progress, epoch: int, orders: Sequence[torch.Generator], saved: Sequence[Tensor | None]
) -> list[Tensor]:
    """At the start of an epoch's batches, each data-order RNG's state, kept to redraw the epoch's
    permutation; resuming mid-epoch, the `saved` states put back instead (the same permutation)."""
    if at.step_in_epoch == 0:
        at.epoch = epoch
        return [order.get_state() for order in orders]
    for order, state in zip(orders, saved, strict=True):
        order.set_state(state)
    return list(saved)


class Clock:
    """An epoch's time in training steps (validation left out) and its samples, into the Outcome."""

    def __init__(self, at: Progress) -> None:
        self.at, self.outcome = at, at.outcome
        self.started = self.epoch_started = time.perf_counter()
        self.seen_before, self.seconds_before = at.seen, at.outcome.train_seconds

    def lap(self) -> None:
        """Add the time since the last lap to train_seconds."""
        now = time.perf_counter()
        self.outcome.train_seconds += now - self.started
        self.started = now

    def count_epoch(self, epoch: int, first: bool) -> None:
        """The epoch is done: its samples counted; the `first` this process trains kept apart."""
        outcome = self.outcome
        outcome.samples += self.at.seen
        outcome.epochs = epoch
        if first:
            outcome.first_epoch_seconds += outcome.train_seconds - self.seconds_before
            outcome.first_epoch_samples += self.at.seen - self.seen_before

    def rate(self) -> float:
        """Samples per second in this epoch so far, wall clock."""
        return (self.at.seen - self.seen_before) / max(time.perf_counter() - self.epoch_started, 1e-9)


def log_window(
    outcome: Outcome,
    tracker: Tracker | NullTracker,
    losses: list[float],
    step: int,
    epoch: int,
    figures: dict[str, Tensor | float],
) -> bool:
    """At a log point (optimizer step `step`): the mean train loss since the last one and the step's
    own `figures` (the lr it used, its gradients' norm: {tag: value}), logged and kept in
    outcome.final. False, and the run diverged at the step where it appeared, when a loss of the
    window is not finite (then a figure that is a 0-d tensor on the device is never read back)."""
    bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
    if bad is not None:
        outcome.status, outcome.diverged_at_step = "diverged", step - len(losses) + bad + 1
        return False
    values = {"loss/train": sum(losses) / len(losses)} | {tag: float(value) for tag, value in figures.items()}
    tracker.log_step(values, step=step, epoch=epoch)
    outcome.final.update(values)
    return True


def fits_line(config: Config) -> bool:
    """Whether the run learns y = w·x + b itself, so its w and b mean something: linear_regression
    data and a linear model."""
    return config.data.name == "linear_regression" and config.model.name == "linear"


def line(weights: dict[str, Tensor]) -> dict[str, float]:
    """A linear model's learned w and b as tags: `line/w` (`line/w1`, `line/w2`, … for several
    features) and `line/b` (none without a bias); read back to the host, so at a log point only."""
    w = weights["0.weight"][0].tolist()  # the (1, D) weight's one row: one w per feature
    tags = {"line/w": w[0]} if len(w) == 1 else {f"line/w{i}": value for i, value in enumerate(w, 1)}
    return tags | ({"line/b": weights["0.bias"].item()} if "0.bias" in weights else {})


def line_summary(config: Config, final: dict[str, float]) -> dict[str, Any]:
    """summary.json's `line`: the last logged w and b beside the true ones; {} when the run fits
    no line or never logged one (it diverged in its first window)."""
    if not fits_line(config) or not any(tag.startswith("line/w") for tag in final):
        return {}
    truth = config.data
    w = [final["line/w"]] if "line/w" in final else [final[f"line/w{i}"] for i in range(1, len(truth.weight) + 1)]
    b = final["line/b"] if "line/b" in final else 0.0  # a linear model without a bias: b is 0
    return {"w": w, "b": b, "true_w": truth.weight, "true_b": truth.bias}


def checkpoint_due(step: int, settings: TrainConfig, halt: int | None) -> bool:
    """A checkpoint after this step: a signal asked to stop, or `checkpoint_every` steps have passed."""
    return halt is not None or bool(settings.checkpoint_every and step % settings.checkpoint_every == 0)


def checkpoint_state(
    model: dict[str, Tensor],
    optimizer: dict[str, Any],
    scheduler: lr_scheduler.LRScheduler | None,
    warmup: lr_scheduler.LRScheduler | None,
    progress: Progress,
    rng: Any,
    metrics_offset: int,
    scaler: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint's payload, one format for a run and a stacked member: state dicts, progress, RNGs
    (a rank's, or a list of every rank's) and how far metrics.jsonl had got."""
    return {
        "model": model,
        "optimizer": optimizer,
        "scaler": scaler or {},  # a GradScaler's state: {} unless fp16
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "warmup": warmup.state_dict() if warmup is not None else None,
        "progress": progress.state(),
        "rng": rng,
        "metrics_offset": metrics_offset,
    }


def save_checkpoint(
    saved: Checkpoints | None, best: dict[str, Any] | None, state: dict[str, Any], step: int, prune: bool = True
) -> None:
    """best.pt first when a new best is waiting, then step-<step>.pt (nothing without `saved`);
    `prune`: then drop all but the newest keep_last."""
    if saved is None:
        return
    if best is not None:
        saved.save_best(best)
    saved.save(state, step, prune)


def validation(
    outcome: Outcome, tracker: Tracker | NullTracker, values: dict[str, float], epoch: int, step: int
) -> bool:
    """An epoch's validation figures logged and kept; False, and the run diverged at `step`, when
    the validation loss is not finite."""
    if not math.isfinite(values["loss/val"]):
        outcome.status, outcome.diverged_at_step = "diverged", step
        return False
    tracker.log_epoch(values, step=step, epoch=epoch)
    outcome.final.update(values)
    return True


def track_best(outcome: Outcome, epoch: int, values: dict[str, float]) -> bool:
    """Record the best validation figures; True when loss/val is a new best."""
    improved = improves("loss/val", values["loss/val"], outcome.best.get("loss/val"))
    for tag in ("loss/val", "accuracy/val"):
        if tag in values and improves(tag, values[tag], outcome.best.get(tag)):
            outcome.best.update({tag: values[tag], f"{tag}_epoch": epoch})
    return improved


def best_state(weights: dict[str, Tensor], epoch: int, step: int, values: dict[str, float]) -> dict[str, Any]:
    """best.pt's payload: the weights of the lowest validation loss (a copy), when and what it scored."""
    return {"model": weights, "epoch": epoch, "step": step, **values}


def step_schedule(scheduler: lr_scheduler.LRScheduler | None, metric: float) -> None:
    """Step an epoch schedule: plateau on `metric` (the validation loss; f(x) in a descent), the others on the count."""
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(metric)
    elif scheduler is not None:
        scheduler.step()


def next_epoch(at: Progress, epoch: int) -> None:
    """The loop's position at the start of the epoch after `epoch`."""
    at.epoch, at.step_in_epoch, at.seen = epoch + 1, 0, 0


def out_of_patience(at: Progress, val_loss: float, settings: TrainConfig) -> bool:
    """Count the epochs since val_loss last improved by min_delta; True once they reach `patience`."""
    if val_loss < at.best_for_patience - settings.min_delta:
        at.best_for_patience, at.stale_epochs = val_loss, 0
    else:
        at.stale_epochs += 1
    return settings.patience is not None and at.stale_epochs >= settings.patience


def log_test(outcome: Outcome, tracker: Tracker | NullTracker, values: dict[str, float]) -> None:
    """The finished model's test figures, logged at its last epoch and kept in outcome.final."""
    tracker.log_epoch(values, step=outcome.steps, epoch=outcome.epochs)
    outcome.final.update(values)


def save_weights(run_dir: Path, outcome: Outcome, weights: dict[str, Tensor]) -> None:
    """model.pt, the final weights, unless the run was interrupted (its checkpoint holds them)."""
    if outcome.status != "interrupted":
        save_atomic(weights, run_dir / "model.pt")


def write_summary(
    run_dir: Path,
    outcome: Outcome,
    steps: Plan,
    wall_seconds: float,
    meta: dict[str, Any],
    saved: Checkpoints | None,
    config: Config,
    nproc: int = 1,
) -> None:
    """summary.json, written last: the run is done. An interrupted one names its checkpoint and the
    command that continues it; a run that fits a line has its w and b beside the true ones."""
    summary = summarise(outcome, steps, wall_seconds, meta)
    if fitted := line_summary(config, outcome.final):
        summary["line"] = fitted
    if outcome.status == "interrupted":
        latest = saved.latest() if saved is not None else None
        summary |= {"checkpoint": str(latest), "resume": runs.resume_command(run_dir, nproc)}
    if nproc > 1:
        summary["processes"] = nproc
    runs.write_summary(run_dir, summary)


def summarise(outcome: Outcome, steps: Plan, wall_seconds: float, meta: dict[str, Any]) -> dict[str, Any]:
    """summary.json: status, final and best metrics, counts, times and throughput."""
    fields = asdict(outcome)
    # samples/s of the epochs after each process's first, which pays its start (Outcome); a run of
    # one epoch has no other: its rate includes the start, and says so
    samples = outcome.samples - outcome.first_epoch_samples
    seconds = outcome.train_seconds - outcome.first_epoch_seconds
    with_first = samples <= 0 or seconds <= 0
    if with_first:
        samples, seconds = outcome.samples, outcome.train_seconds
    return {
        "status": fields.pop("status"),
        "final": fields.pop("final"),
        "best": fields.pop("best"),
        **fields,
        "batch_size": steps.batch_size,
        "wall_seconds": round(wall_seconds, 3),
        "samples_per_second": round(samples / seconds, 1) if seconds > 0 else None,
        "samples_per_second_with_first_epoch": with_first,
        "environment": meta,
    }


def disk_error(run_dir: Path, err: OSError, meta: dict[str, Any], nproc: int) -> UserError:
    """The one line for a write that failed (summary.json records it, when the disk still takes it)."""
    runs.record_failure(run_dir, err, meta, runs.resume_command(run_dir, nproc))
    return UserError(
        f"{run_dir}: cannot write ({err.strerror or err}); the last checkpoint and the metrics so far "
        f"are kept; fix it, then {runs.resume_command(run_dir, nproc)}"
    )
