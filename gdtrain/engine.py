"""The training loop: plain PyTorch, read top to bottom, no callbacks.

It takes built objects (model, dataset on its device, optimizer, schedules, tracker) and never
sees YAML. Per step it does forward, backward, optimizer step and keeps the loss tensor;
the losses are read back to the host every `log_every` steps, which is also where a NaN or an
infinite loss is caught, at the exact step where it appeared.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.optim import lr_scheduler
from tqdm import tqdm

from gdtrain.config import TrainConfig
from gdtrain.datasets import Dataset, shuffled_batches
from gdtrain.losses import LOSSES, count_correct
from gdtrain.runs import Tracker


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
    """What a run did; the recipe turns it into summary.json."""

    status: str = "finished"  # finished | diverged
    epochs: int = 0  # epochs completed or cut short
    steps: int = 0  # optimizer steps taken
    samples: int = 0  # training samples seen
    train_seconds: float = 0.0  # time in training steps, validation excluded
    stopped_early: bool = False
    diverged_at_step: int | None = None
    final: dict[str, float] = field(default_factory=dict)  # last value of each tag
    best: dict[str, float] = field(default_factory=dict)  # best val metrics and their epochs


def evaluate(model: nn.Module, x: Tensor, y: Tensor, loss: str, batch_size: int) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for mse) over (x, y), in batches, without gradients."""
    model.eval()
    total = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out, target = model(x[start : start + batch_size]), y[start : start + batch_size]
            total += LOSSES[loss](out, target) * len(target)  # mean → sum over the batch
            if loss != "mse":
                correct += count_correct(loss, out, target)
    accuracy = correct.item() / len(x) if loss != "mse" else None
    return total.item() / len(x), accuracy


def _grad_norm(params: list[Tensor]) -> float:
    """Total L2 norm of the current gradients."""
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).item()


def _track_best(outcome: Outcome, epoch: int, val_loss: float, val_acc: float | None) -> bool:
    """Record the best validation figures; True when val_loss is a new best."""
    improved = val_loss < outcome.best.get("loss/val", math.inf)
    if improved:
        outcome.best.update({"loss/val": val_loss, "loss/val_epoch": epoch})
    if val_acc is not None and val_acc > outcome.best.get("accuracy/val", -1.0):
        outcome.best.update({"accuracy/val": val_acc, "accuracy/val_epoch": epoch})
    return improved


def _epoch_line(epoch: int, epochs: int, outcome: Outcome, rate: float) -> str:
    """`epoch 3/10  step 5625  loss/train 0.31  loss/val 0.29  accuracy/val 0.91  lr 0.001  51k samples/s`."""
    shown = {tag: outcome.final[tag] for tag in ("loss/train", "loss/val", "accuracy/val", "lr") if tag in outcome.final}
    figures = "  ".join(f"{tag} {value:.4g}" for tag, value in shown.items())
    return f"epoch {epoch}/{epochs}  step {outcome.steps}  {figures}  {rate:,.0f} samples/s"


def train(
    model: nn.Module,
    data: Dataset,
    optimizer: torch.optim.Optimizer,
    scheduler: lr_scheduler.LRScheduler | None,
    warmup: lr_scheduler.LinearLR | None,
    tracker: Tracker,
    settings: TrainConfig,
    steps: Plan,
    order: torch.Generator,
    quiet: bool = False,
) -> Outcome:
    """Train `model` on `data` for `steps`, validating every epoch; never raises on divergence."""
    loss_fn = LOSSES[settings.loss]
    params = [p for p in model.parameters() if p.requires_grad]
    pending: list[Tensor] = []  # 0-d train losses since the last read-back, still on the device
    outcome, stale_epochs, best_for_patience = Outcome(), 0, math.inf
    for epoch in range(1, steps.epochs + 1):
        model.train()
        epoch_samples = min(len(data.x_train), (steps.max_steps - outcome.steps) * steps.batch_size)
        bar = tqdm(total=epoch_samples, unit="sample", unit_scale=True, leave=False,
                   desc=f"epoch {epoch}/{steps.epochs}", disable=True if quiet else None)
        started, seen = time.perf_counter(), 0
        for xb, yb in shuffled_batches(data.x_train, data.y_train, steps.batch_size, order):
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            if warmup is not None and outcome.steps < warmup.total_iters:
                warmup.step()
            pending.append(loss.detach())
            outcome.steps, seen = outcome.steps + 1, seen + len(xb)
            last = outcome.steps == steps.max_steps or seen == len(data.x_train)
            if len(pending) == settings.log_every or last:
                losses = torch.stack(pending).tolist()  # the one host sync per log_every steps
                bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
                if bad is not None:
                    outcome.status = "diverged"
                    outcome.diverged_at_step = outcome.steps - len(losses) + bad + 1
                    break
                values = {"loss/train": sum(losses) / len(losses), "lr": optimizer.param_groups[0]["lr"],
                          "grad_norm": _grad_norm(params)}
                tracker.log_step(values, step=outcome.steps, epoch=epoch)
                outcome.final.update(values)
                bar.update(seen - bar.n)
                bar.set_postfix(loss=f"{values['loss/train']:.4g}", refresh=False)
                pending.clear()
            if outcome.steps == steps.max_steps:
                break
        bar.close()
        outcome.train_seconds += time.perf_counter() - started
        outcome.samples += seen
        outcome.epochs = epoch
        if outcome.status == "diverged":
            break

        val_loss, val_acc = evaluate(model, data.x_val, data.y_val, settings.loss, settings.eval_batch_size)
        if not math.isfinite(val_loss):
            outcome.status, outcome.diverged_at_step = "diverged", outcome.steps
            break
        values = {"loss/val": val_loss} | ({"accuracy/val": val_acc} if val_acc is not None else {})
        tracker.log_epoch(values, step=outcome.steps, epoch=epoch)
        outcome.final.update(values)
        _track_best(outcome, epoch, val_loss, val_acc)
        if not quiet and (epoch % math.ceil(steps.epochs / 25) == 0 or epoch == steps.epochs):  # ≤ 25 lines
            tqdm.write(_epoch_line(epoch, steps.epochs, outcome, seen / (time.perf_counter() - started)))

        if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_loss)
        elif scheduler is not None:
            scheduler.step()
        if val_loss < best_for_patience - settings.min_delta:
            best_for_patience, stale_epochs = val_loss, 0
        else:
            stale_epochs += 1
        if settings.patience is not None and stale_epochs >= settings.patience:
            outcome.stopped_early = True
            break

    if outcome.status == "finished" and data.x_test is not None:
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test, settings.loss, settings.eval_batch_size)
        values = {"loss/test": test_loss} | ({"accuracy/test": test_acc} if test_acc is not None else {})
        tracker.log_epoch(values, step=outcome.steps, epoch=outcome.epochs)
        outcome.final.update(values)
    return outcome
