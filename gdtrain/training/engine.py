"""The training loop: plain PyTorch, read top to bottom, no callbacks.

It takes the built objects (`Parts`: model, dataset on its device, optimizer, schedules, grad scaler,
settings) plus the run's tracker and checkpoints, and never sees YAML. Per step it does forward,
backward, optimizer step and keeps the loss tensor; the losses are read back to the host every
`log_every` steps, which is also where a NaN or an infinite loss is caught, at the exact step where it
appeared. There it logs `loss/train` (the mean since the previous log point) and, of the step just
taken, `lr` (the lr that step used) and `grad_norm` (the total L2 norm of its gradients before
clipping): the function-descent loop (`descend`) logs the same tags with the same meaning. It
checkpoints every `checkpoint_every` steps and at the end of every epoch but the run's last (the
run's end writes model.pt instead), and stops after the step in progress when a signal handler sets
`Stop.signal` (several processes stop together, at a log point or an epoch end where they all agree:
see `agree`); given a `Progress` from a checkpoint it continues where that stopped, redrawing the
epoch's permutation from its saved RNG state and skipping the batches already done.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import lr_scheduler
from tqdm import tqdm

from gdtrain.core.signals import Stop
from gdtrain.training.checkpoints import Checkpoints, rng_states
from gdtrain.core.config import TrainConfig
from gdtrain.components.datasets import Dataset, shuffled_batches
from gdtrain.training.distributed import World, all_sum, gather
from gdtrain.components.losses import LOSSES, count_correct
from gdtrain.training.tracker import NullTracker, Tracker


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
class Parts:
    """A config built into the objects the engine trains (recipe.build)."""

    device: torch.device
    data: Dataset
    model: nn.Module  # plain: checkpoints save its state_dict; the loop may run it wrapped (train's `model`)
    optimizer: torch.optim.Optimizer
    scheduler: lr_scheduler.LRScheduler | None  # steps once per epoch
    warmup: lr_scheduler.LinearLR | None  # steps once per optimizer step, for its first total_iters
    scaler: torch.amp.GradScaler  # enabled for fp16 only; disabled, its calls pass the loss and step through
    settings: TrainConfig
    steps: Plan
    order: torch.Generator  # the data-order RNG
    world: World  # this process among torchrun's; World() alone


@dataclass
class Outcome:
    """What a run did; the recipe turns it into summary.json."""

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


def agree(stop: Stop, world: World) -> int | None:
    """The signal to stop on: the first any rank has seen, decided by all ranks at the same point.

    Every rank acts on this answer, never on its own `stop.signal`, which a handler may set while
    the ranks are gathering (or just after): that late signal stays set for the next agreement.
    """
    if world.size == 1:
        return stop.signal
    return next((sig for sig in gather(stop.signal, world) if sig is not None), None)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, loss: str, batch_size: int,
             world: World = World()) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for mse) over (x, y), in batches, without gradients; with
    several processes each takes its shard and the sums are added up, so all see the same figures."""
    model.eval()
    total = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    mine = world.shard(len(x))
    xs, ys = x[mine], y[mine]
    with torch.inference_mode():
        for start in range(0, len(xs), batch_size):
            out, target = model(xs[start : start + batch_size]), ys[start : start + batch_size]
            total += LOSSES[loss](out, target) * len(target)  # mean → sum over the batch
            if loss != "mse":
                correct += count_correct(loss, out, target)
    if world.size > 1:
        sums = all_sum(torch.stack([total.double(), correct.double()]), world).tolist()
        return sums[0] / len(x), (sums[1] / len(x) if loss != "mse" else None)
    accuracy = correct.item() / len(x) if loss != "mse" else None
    return total.item() / len(x), accuracy


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _local(model: nn.Module) -> nn.Module:
    """The model without DistributedDataParallel, for evaluation, which syncs nothing."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _metrics(model: nn.Module, x: Tensor, y: Tensor, split: str, settings: TrainConfig,
             world: World) -> dict[str, float]:
    """`loss/<split>` and, unless the loss is mse, `accuracy/<split>` of the model on (x, y)."""
    loss, accuracy = evaluate(_local(model), x, y, settings.loss, settings.eval_batch_size, world)
    return {f"loss/{split}": loss} | ({f"accuracy/{split}": accuracy} if accuracy is not None else {})


def _batches(parts: Parts, at: Progress, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The epoch's batches; resuming mid-epoch, the same permutation without the batches already taken."""
    if at.step_in_epoch == 0:
        at.epoch, at.epoch_order = epoch, parts.order.get_state()
    else:
        parts.order.set_state(at.epoch_order)
    data = parts.data
    batches = shuffled_batches(data.x_train, data.y_train, parts.steps.batch_size, parts.order)
    return itertools.islice(batches, at.step_in_epoch, None)


def _bar(parts: Parts, at: Progress, epoch: int, quiet: bool) -> tqdm:
    """The epoch's progress bar in samples, from where a resumed epoch stands; none when quiet or not a terminal."""
    steps = parts.steps
    total = min(len(parts.data.x_train), (steps.max_steps - at.outcome.steps + at.step_in_epoch) * steps.batch_size)
    return tqdm(total=total, initial=at.seen, unit="sample", unit_scale=True, leave=False,
                desc=f"epoch {epoch}/{steps.epochs}", disable=True if quiet else None)


def _losses(pending: list[Tensor], world: World) -> list[float]:
    """The 0-d train losses since the last log point, on the host; with several processes, the global batch's."""
    stacked = torch.stack(pending)
    if world.size > 1:
        stacked = all_sum(stacked, world) / world.size
    return stacked.tolist()  # the one host sync per log_every steps


def _grad_norm(params: list[Tensor]) -> Tensor:
    """Total L2 norm of the current gradients, as a 0-d tensor (no host sync)."""
    return nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


def _checkpoint(parts: Parts, at: Progress, tracker: Tracker | NullTracker, checkpoints: Checkpoints | None,
                best: dict[str, Any] | None) -> None:
    """best.pt when a new best is waiting, then step-<step>.pt; every rank takes part (its RNG states)."""
    rng = gather(rng_states(parts.order), parts.world)
    if checkpoints is None:
        return
    if best is not None:
        checkpoints.save_best(best)
    state = {"model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
             "scaler": parts.scaler.state_dict(),  # {} unless fp16
             "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
             "warmup": parts.warmup.state_dict() if parts.warmup is not None else None,
             "progress": at.state(), "rng": rng, "metrics_offset": tracker.flush()}
    checkpoints.save(state, at.outcome.steps)


def _track_best(outcome: Outcome, epoch: int, values: dict[str, float]) -> bool:
    """Record the best validation figures; True when loss/val is a new best."""
    improved = values["loss/val"] < outcome.best.get("loss/val", math.inf)
    if improved:
        outcome.best.update({"loss/val": values["loss/val"], "loss/val_epoch": epoch})
    if "accuracy/val" in values and values["accuracy/val"] > outcome.best.get("accuracy/val", -1.0):
        outcome.best.update({"accuracy/val": values["accuracy/val"], "accuracy/val_epoch": epoch})
    return improved


def _schedule(scheduler: lr_scheduler.LRScheduler | None, val_loss: float) -> None:
    """Step the epoch schedule: plateau on the validation loss, the others on the epoch count."""
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None:
        scheduler.step()


def _out_of_patience(at: Progress, val_loss: float, settings: TrainConfig) -> bool:
    """Count the epochs since val_loss last improved by min_delta; True once they reach `patience`."""
    if val_loss < at.best_for_patience - settings.min_delta:
        at.best_for_patience, at.stale_epochs = val_loss, 0
    else:
        at.stale_epochs += 1
    return settings.patience is not None and at.stale_epochs >= settings.patience


def _test(model: nn.Module, parts: Parts, tracker: Tracker | NullTracker, outcome: Outcome) -> None:
    """Evaluate the finished model on the test split; log it at the last epoch and keep it in outcome.final."""
    values = _metrics(model, parts.data.x_test, parts.data.y_test, "test", parts.settings, parts.world)
    tracker.log_epoch(values, step=outcome.steps, epoch=outcome.epochs)
    outcome.final.update(values)


def _epoch_line(epoch: int, epochs: int, outcome: Outcome, rate: float) -> str:
    """`epoch 3/10  step 5625  loss/train 0.31  loss/val 0.29  accuracy/val 0.91  lr 0.001  51k samples/s`."""
    shown = {tag: outcome.final[tag] for tag in ("loss/train", "loss/val", "accuracy/val", "lr") if tag in outcome.final}
    figures = "  ".join(f"{tag} {value:.4g}" for tag, value in shown.items())
    return f"epoch {epoch}/{epochs}  step {outcome.steps}  {figures}  {rate:,.0f} samples/s"


def train(parts: Parts, *, tracker: Tracker | NullTracker, checkpoints: Checkpoints | None = None,
          progress: Progress | None = None, stop: Stop | None = None, quiet: bool = False,
          model: nn.Module | None = None) -> Outcome:
    """Train `parts` for parts.steps, from `progress` when resuming; `model`: parts.model wrapped (DDP, compile)."""
    data, optimizer, scaler, settings, steps, world = (parts.data, parts.optimizer, parts.scaler, parts.settings,
                                                       parts.steps, parts.world)
    model = parts.model if model is None else model
    loss_fn, params = LOSSES[settings.loss], [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast(parts.device.type, dtype=PRECISIONS[settings.precision],
                              enabled=settings.precision != "fp32")
    at = progress or Progress()
    outcome, stop = at.outcome, stop or Stop()
    best: dict[str, Any] | None = None  # weights of the lowest val loss, not yet in best.pt
    at_start = at.epoch

    for epoch in range(at.epoch, steps.epochs + 1):
        model.train()
        bar = _bar(parts, at, epoch, quiet)
        started = epoch_started = time.perf_counter()
        seen_before, seconds_before = at.seen, outcome.train_seconds
        for xb, yb in _batches(parts, at, epoch):
            n = len(xb)  # the global batch; with several processes this rank takes its shard
            if world.size > 1:
                mine = world.shard(n)
                xb, yb = xb[mine], yb[mine]
            with autocast:
                loss = loss_fn(model(xb), yb)
            if world.size > 1:  # DDP averages the ranks' gradients: weigh each by its share of the batch
                loss = loss * (len(xb) * world.size / n)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # fp16: scaled so small gradients survive; otherwise as it is
            scaler.unscale_(optimizer)  # the true gradients, for clipping and their norm
            if settings.grad_clip is not None:
                grad_norm = nn.utils.clip_grad_norm_(params, settings.grad_clip)  # (), before clipping
            lr = optimizer.param_groups[0]["lr"]  # the lr this step uses
            scaler.step(optimizer)
            scaler.update()
            if parts.warmup is not None and outcome.steps < parts.warmup.total_iters:
                parts.warmup.step()
            at.pending.append(loss.detach())
            outcome.steps, at.step_in_epoch, at.seen = outcome.steps + 1, at.step_in_epoch + 1, at.seen + n
            last = outcome.steps == steps.max_steps or at.seen == len(data.x_train)
            halt = stop.signal if world.size == 1 else None  # several processes agree at log points only
            if len(at.pending) == settings.log_every or last:
                losses = _losses(at.pending, world)
                halt = agree(stop, world)  # the same answer on every rank
                bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
                if bad is not None:
                    outcome.status, outcome.diverged_at_step = "diverged", outcome.steps - len(losses) + bad + 1
                    break
                if settings.grad_clip is None:  # never clipped, this step's gradients are still in .grad
                    grad_norm = _grad_norm(params)
                values = {"loss/train": sum(losses) / len(losses), "lr": lr, "grad_norm": grad_norm.item()}
                tracker.log_step(values, step=outcome.steps, epoch=epoch)
                outcome.final.update(values)
                bar.update(at.seen - bar.n)
                bar.set_postfix(loss=f"{values['loss/train']:.4g}", refresh=False)
                at.pending.clear()
            if last:
                break
            if halt is not None or (settings.checkpoint_every and outcome.steps % settings.checkpoint_every == 0):
                outcome.train_seconds += time.perf_counter() - started
                started = time.perf_counter()
                _checkpoint(parts, at, tracker, checkpoints, best)
                best = None
                if halt is not None:
                    outcome.status, outcome.epochs, outcome.signal = "interrupted", epoch - 1, halt
                    break
        bar.close()
        outcome.train_seconds += time.perf_counter() - started
        if outcome.status != "finished":
            break
        outcome.samples += at.seen
        outcome.epochs = epoch
        if epoch == at_start:  # this process's first epoch
            outcome.first_epoch_seconds += outcome.train_seconds - seconds_before
            outcome.first_epoch_samples += at.seen - seen_before

        values = _metrics(model, data.x_val, data.y_val, "val", settings, world)
        if not math.isfinite(values["loss/val"]):
            outcome.status, outcome.diverged_at_step = "diverged", outcome.steps
            break
        tracker.log_epoch(values, step=outcome.steps, epoch=epoch)
        outcome.final.update(values)
        if _track_best(outcome, epoch, values) and checkpoints is not None:  # written with the next checkpoint
            weights = {name: t.detach().clone() for name, t in parts.model.state_dict().items()}
            best = {"model": weights, "epoch": epoch, "step": outcome.steps, **values}
        if not quiet and (epoch % math.ceil(steps.epochs / 25) == 0 or epoch == steps.epochs):  # ≤ 25 lines
            rate = (at.seen - seen_before) / max(time.perf_counter() - epoch_started, 1e-9)
            tqdm.write(_epoch_line(epoch, steps.epochs, outcome, rate))
        _schedule(parts.scheduler, values["loss/val"])
        at.epoch, at.step_in_epoch, at.seen = epoch + 1, 0, 0
        if _out_of_patience(at, values["loss/val"], settings):
            outcome.stopped_early = True
            break
        if epoch < steps.epochs:  # the last epoch's end is the run's: model.pt, not a checkpoint
            halt = agree(stop, world)
            _checkpoint(parts, at, tracker, checkpoints, best)
            best = None
            if halt is not None:
                outcome.status, outcome.signal = "interrupted", halt
                break

    if best is not None and outcome.status == "finished":
        checkpoints.save_best(best)
    if outcome.status == "finished" and data.x_test is not None:
        _test(model, parts, tracker, outcome)
    return outcome
