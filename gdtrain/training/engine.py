"""The training loop: plain PyTorch, read top to bottom, no callbacks.

It takes the built objects (`Parts`: model, dataset on its device, optimizer, schedules, grad scaler,
settings) plus the run's tracker and checkpoints, and never sees YAML. Per step it does forward,
backward, optimizer step and keeps the loss tensor; the losses are read back to the host every
`log_every` steps, which is also where a NaN or an infinite loss is caught, at the exact step where it
appeared. There it logs `loss/train` (the mean since the previous log point) and, of the step just
taken, `lr` (the lr that step used) and `grad_norm` (the total L2 norm of its gradients before
clipping), which the function-descent loop (`descend`) logs with the same meaning, and for a model
fitting a line its learned w and b (`line/w`, `line/b`: lifecycle.line). It
checkpoints every `checkpoint_every` steps and at the end of every epoch but the run's last (the
run's end writes model.pt instead), and stops after the step in progress when a signal handler sets
`Stop.signal` (several processes stop together, at a log point or an epoch end where they all agree:
see `agree`); given a `Progress` from a checkpoint it continues where that stopped, redrawing the
epoch's permutation from its saved RNG state and skipping the batches already done.
The steps of a run's life that a stacked group's members take too (the log window, checkpoints,
best weights, patience, the schedule's step, the test figures) are gdtrain/training/lifecycle.py's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import lr_scheduler
from tqdm import tqdm

from gdtrain.components.datasets import Dataset, shuffled_batches
from gdtrain.components.losses import LOSSES, count_correct
from gdtrain.components.optimizers import set_mode
from gdtrain.core.config import TrainConfig
from gdtrain.core.signals import Stop
from gdtrain.training import lifecycle
from gdtrain.training.checkpoints import Checkpoints, rng_states
from gdtrain.training.distributed import World, all_sum, gather
from gdtrain.training.lifecycle import Outcome, Plan, Progress
from gdtrain.training.tracker import NullTracker, Tracker


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
    line: bool = False  # it fits y = w·x + b (lifecycle.fits_line): w and b logged at each log point


def agree(stop: Stop, world: World) -> int | None:
    """The signal to stop on: the first any rank has seen, decided by all ranks at the same point.

    Every rank acts on this answer, never on its own `stop.signal`, which a handler may set while
    the ranks are gathering (or just after): that late signal stays set for the next agreement.
    """
    if world.size == 1:
        return stop.signal
    return next((sig for sig in gather(stop.signal, world) if sig is not None), None)


def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, loss: str, batch_size: int, world: World = World()
) -> tuple[float, float | None]:
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


def _metrics(
    model: nn.Module, x: Tensor, y: Tensor, split: str, settings: TrainConfig, world: World
) -> dict[str, float]:
    """`loss/<split>` and, unless the loss is mse, `accuracy/<split>` of the model on (x, y)."""
    loss, accuracy = evaluate(_local(model), x, y, settings.loss, settings.eval_batch_size, world)
    return {f"loss/{split}": loss} | ({f"accuracy/{split}": accuracy} if accuracy is not None else {})


def _batches(parts: Parts, at: Progress, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The epoch's batches; resuming mid-epoch, the same permutation without the batches already taken."""
    (at.epoch_order,) = lifecycle.epoch_orders(at, epoch, [parts.order], [at.epoch_order])
    data = parts.data
    batches = shuffled_batches(data.x_train, data.y_train, parts.steps.batch_size, parts.order)
    return itertools.islice(batches, at.step_in_epoch, None)


def _bar(parts: Parts, at: Progress, epoch: int, quiet: bool) -> tqdm:
    """The epoch's progress bar in samples, from where a resumed epoch stands; none when quiet or not a terminal."""
    steps = parts.steps
    total = min(len(parts.data.x_train), (steps.max_steps - at.outcome.steps + at.step_in_epoch) * steps.batch_size)
    return tqdm(
        total=total,
        initial=at.seen,
        unit="sample",
        unit_scale=True,
        leave=False,
        desc=f"epoch {epoch}/{steps.epochs}",
        disable=True if quiet else None,
    )


def _losses(pending: list[Tensor], world: World) -> list[float]:
    """The 0-d train losses since the last log point, on the host; with several processes, the global batch's."""
    stacked = torch.stack(pending)
    if world.size > 1:
        stacked = all_sum(stacked, world) / world.size
    return stacked.tolist()  # the one host sync per log_every steps


def _grad_norm(params: list[Tensor]) -> Tensor:
    """Total L2 norm of the current gradients, as a 0-d tensor (no host sync)."""
    return nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


def _checkpoint(
    parts: Parts,
    at: Progress,
    tracker: Tracker | NullTracker,
    checkpoints: Checkpoints | None,
    best: dict[str, Any] | None,
) -> None:
    """best.pt when a new best is waiting, then step-<step>.pt; every rank takes part (its RNG states).
    The weights saved are the optimizer's eval-mode ones (Schedule-Free's average), as model.pt's are."""
    rng = gather(rng_states(parts.order), parts.world)
    # Every rank switches, with or without a folder to write, so that all take the same round trip.
    set_mode(parts.optimizer, training=False)
    if checkpoints is not None:
        state = lifecycle.checkpoint_state(
            parts.model.state_dict(),
            parts.optimizer.state_dict(),
            parts.scheduler,
            parts.warmup,
            at,
            rng,
            tracker.flush(),
            parts.scaler.state_dict(),
        )
        lifecycle.save_checkpoint(checkpoints, best, state, at.outcome.steps)
    set_mode(parts.optimizer, training=True)


def _epoch_line(epoch: int, epochs: int, outcome: Outcome, rate: float) -> str:
    """`epoch 3/10  step 5625  loss/train 0.31  loss/val 0.29  accuracy/val 0.91  lr 0.001  51k samples/s`;
    a model fitting a line shows its w and b too."""
    tags = ("loss/train", "loss/val", "accuracy/val", "lr", "line/w", "line/b")
    shown = {tag: outcome.final[tag] for tag in tags if tag in outcome.final}
    figures = "  ".join(f"{tag} {value:.4g}" for tag, value in shown.items())
    return f"epoch {epoch}/{epochs}  step {outcome.steps}  {figures}  {rate:,.0f} samples/s"


def train(
    parts: Parts,
    *,
    tracker: Tracker | NullTracker,
    checkpoints: Checkpoints | None = None,
    progress: Progress | None = None,
    stop: Stop | None = None,
    quiet: bool = False,
    model: nn.Module | None = None,
) -> Outcome:
    """Train `parts` for parts.steps, from `progress` when resuming; `model`: parts.model wrapped (DDP, compile)."""
    data, optimizer, scaler, settings, steps, world = (
        parts.data,
        parts.optimizer,
        parts.scaler,
        parts.settings,
        parts.steps,
        parts.world,
    )
    model = parts.model if model is None else model
    loss_fn, params = LOSSES[settings.loss], [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast(
        parts.device.type, dtype=PRECISIONS[settings.precision], enabled=settings.precision != "fp32"
    )
    at = progress or Progress()
    outcome, stop = at.outcome, stop or Stop()
    best: dict[str, Any] | None = None  # weights of the lowest val loss, not yet in best.pt
    at_start = at.epoch

    for epoch in range(at.epoch, steps.epochs + 1):
        model.train()
        set_mode(optimizer, training=True)  # Schedule-Free steps from its training point; resumed, back to it
        bar = _bar(parts, at, epoch, quiet)
        clock = lifecycle.Clock(at)
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
                if settings.grad_clip is None:  # never clipped, this step's gradients are still in .grad
                    grad_norm = _grad_norm(params)
                figures = {"lr": lr, "grad_norm": grad_norm}
                if parts.line:
                    figures |= lifecycle.line(parts.model.state_dict())
                if not lifecycle.log_window(outcome, tracker, losses, outcome.steps, epoch, figures):
                    break
                bar.update(at.seen - bar.n)
                bar.set_postfix(loss=f"{outcome.final['loss/train']:.4g}", refresh=False)
                at.pending.clear()
            if last:
                break
            if lifecycle.checkpoint_due(outcome.steps, settings, halt):
                clock.lap()
                _checkpoint(parts, at, tracker, checkpoints, best)
                best = None
                if halt is not None:
                    outcome.status, outcome.epochs, outcome.signal = "interrupted", epoch - 1, halt
                    break
        bar.close()
        clock.lap()
        if outcome.status != "finished":
            break
        clock.count_epoch(epoch, first=epoch == at_start)  # this process's first epoch pays its start

        set_mode(optimizer, training=False)  # validation, best.pt and model.pt see the weights to evaluate
        values = _metrics(model, data.x_val, data.y_val, "val", settings, world)
        if not lifecycle.validation(outcome, tracker, values, epoch, outcome.steps):
            break
        if lifecycle.track_best(outcome, epoch, values) and checkpoints is not None:  # written with the next checkpoint
            weights = {name: t.detach().clone() for name, t in parts.model.state_dict().items()}
            best = lifecycle.best_state(weights, epoch, outcome.steps, values)
        if not quiet and (epoch % math.ceil(steps.epochs / 25) == 0 or epoch == steps.epochs):  # ≤ 25 lines
            tqdm.write(_epoch_line(epoch, steps.epochs, outcome, clock.rate()))
        lifecycle.step_schedule(parts.scheduler, values["loss/val"])
        lifecycle.next_epoch(at, epoch)
        if lifecycle.out_of_patience(at, values["loss/val"], settings):
            outcome.stopped_early = True
            break
        if epoch < steps.epochs:  # the last epoch's end is the run's: model.pt, not a checkpoint
            halt = agree(stop, world)
            _checkpoint(parts, at, tracker, checkpoints, best)
            best = None
            if halt is not None:
                outcome.status, outcome.signal = "interrupted", halt
                break

    set_mode(optimizer, training=False)  # model.pt (recipe) and the test figures: the eval-mode weights
    if best is not None and outcome.status == "finished":
        checkpoints.save_best(best)
    if outcome.status == "finished" and data.x_test is not None:
        lifecycle.log_test(outcome, tracker, _metrics(model, data.x_test, data.y_test, "test", settings, world))
    return outcome
