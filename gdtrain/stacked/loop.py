"""Several runs trained as one: a group of compatible sweep or study points (gdtrain/execution/groups.py).

The members' models are stacked (stacked/model.py), their data shared by index (stacked/data.py), and one
vectorised optimizer updates them all (members without a vectorised rule through their own solo
optimizer, stacked/generic.py), each with its own optimizer, settings, lr schedule, warm-up and
clipping (stacked/optimizer.py, stacked/lr.py). The loop is engine.train's with a member axis, and every
step of a run's life it shares with one run (log window, divergence, checkpoint payload, best weights,
patience, schedule, finish) is gdtrain/training/lifecycle.py's: per step one forward and one
backward for all members, each on its own batch; losses are read back every
`log_every` steps, where a member whose loss is NaN or infinite is recorded `diverged` at its own
step and frozen while the others go on (so is a member out of patience: it finishes early).

Every member writes the run folder its solo run would: config.yaml (its provenance says it trained
in a group), TensorBoard events, metrics.jsonl, checkpoints in the solo format (so `gdtrain resume`
continues one alone, and a group resumes from its members' checkpoints), best.pt, model.pt and
summary.json. Its initial weights, split and data order are its solo run's; its numbers differ from
the solo run's in the last bits only (summation order in batched kernels; docs/stacked.md).
Not stacked (groups of one, trained by recipe.run): fp16 (one GradScaler would skip every member's
step for one member's overflow), torch.compile, function descents.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from tqdm import tqdm

from gdtrain.components.models import build_model
from gdtrain.components.optimizers import implementation
from gdtrain.core import runs
from gdtrain.core.config import Config, to_dict, validate
from gdtrain.core.errors import UserError
from gdtrain.core.signals import Stop, stop_on_signals
from gdtrain.stacked import data as stackdata
from gdtrain.stacked.generic import vectorised
from gdtrain.stacked.lr import MemberSchedules
from gdtrain.stacked.model import StackedModel, member_losses
from gdtrain.stacked.optimizer import StackedOptimizer, clip_grad_norms_, grad_norms, kind_key
from gdtrain.training import board, checkpoints, lifecycle, memory
from gdtrain.training.checkpoints import Checkpoints, restore_rng, rng_states
from gdtrain.training.determinism import seed_everything, set_determinism
from gdtrain.training.device import resolve_device
from gdtrain.training.engine import PRECISIONS
from gdtrain.training.lifecycle import COUNTERS, Outcome, Plan, Progress
from gdtrain.training.tasks import Result, Task, Watch
from gdtrain.training.tracker import NullTracker, Tracker


@dataclass
class Member:
    """One run of the group: its folder, what it logs to, and how far it got."""

    name: str
    config: Config
    run_dir: Path
    owned: BinaryIO | None  # the run folder's lock (runs.lock_run); None for a run with no folder (the bench's)
    tracker: Tracker | NullTracker
    saved: Checkpoints | None  # None: no checkpoints (the bench's runs, as engine.train without them)
    meta: dict[str, Any]
    order: torch.Generator  # its data-order RNG
    at: Progress  # its patience counters and its outcome; the group's Progress holds the shared counters
    best: dict[str, Any] | None = None  # weights of its lowest val loss, not yet in best.pt
    live: bool = True
    result: Result | None = None


@dataclass
class Group:
    """The stacked objects the loop trains."""

    members: list[Member]
    data: stackdata.GroupData
    model: StackedModel
    optimizer: StackedOptimizer
    schedules: MemberSchedules
    steps: Plan
    settings: Any  # the members' shared TrainConfig (its grad_clip and patience are each member's own)
    device: torch.device
    at: Progress = field(default_factory=Progress)  # the shared position and counters; `pending` holds (M,) losses
    epoch_orders: list[torch.Tensor] = field(
        default_factory=list
    )  # each member's data-order RNG state at the epoch's start
    started: float = field(default_factory=time.perf_counter)
    tested: tuple[int, list[float], list[float] | None] | None = None  # (step, each member's test loss, accuracy)
    watch: Watch | None = None  # its bar's title and who hears of each member's end; None: silent (a worker's)


def train_group(tasks: list[Task], watch: Watch | None = None) -> list[Result]:
    """Train the tasks' points together (continuing their interrupted runs where tasks say so); one
    Result per task, each also handed to `watch` as its member ends. A crash fails every member not
    yet finished; a full disk is a UserError."""
    configs = [validate(task.raw, task.name) for task in tasks]
    group = _build(tasks, configs)
    group.watch = watch
    stop = Stop()
    try:
        with stop_on_signals(stop):
            halt = train(group, stop)
            group.watch = None  # who ends with the group is reported with it, in the sweep's order
            group.optimizer.set_mode(training=False)  # the weights to test and save (Schedule-Free: the average)
            for member in group.members:
                if member.live:
                    _finish(group, member, "finished" if halt is None else "interrupted", halt)
    except OSError as err:
        failed = [m for m in group.members if m.result is None]
        for member in failed:
            lifecycle.disk_error(member.run_dir, err, member.meta, 1)
        raise UserError(
            f"{failed[0].run_dir.parent}: cannot write ({err.strerror or err}); the last checkpoints "
            f"and the metrics so far are kept; fix it, then resume the sweep"
        ) from None
    except BaseException as err:  # a bug, or a second signal: recorded in every unfinished member
        for member in group.members:
            if member.result is None:
                runs.record_failure(member.run_dir, err, member.meta, runs.resume_command(member.run_dir))
                member.result = (
                    Result(
                        member.name,
                        "interrupted",
                        str(member.run_dir),
                        signal=stop.signal,
                        error="stopped at once; its last checkpoint, if any, is kept",
                    )
                    if isinstance(err, KeyboardInterrupt)
                    else Result(member.name, "failed", str(member.run_dir), error=f"{type(err).__name__}: {err}")
                )
        if not isinstance(err, Exception | KeyboardInterrupt):
            raise
    finally:
        for member in group.members:
            with contextlib.suppress(OSError):
                member.tracker.close()
            if member.owned is not None:
                member.owned.close()
    return [member.result for member in group.members]


def stack(
    configs: list[Config], data: stackdata.GroupData, device: torch.device
) -> tuple[StackedModel, StackedOptimizer, MemberSchedules, Plan]:
    """The stacked model, optimizer and lr schedules of the members' configs over their data."""
    models, generators = [], []
    for config in configs:  # each member's initial weights are its solo run's: the same draws after the same seed
        seed_everything(config.experiment.seed)
        models.append(build_model(config.model, data.in_features, data.out_features(config.train.loss)).to(device))
        generators.append(_dropout_generator(device))  # its dropout draws: torch's generator as its solo run's now
    model = StackedModel(configs[0].model, models)
    model.generators = generators
    del models
    steps = lifecycle.plan(data.train.shape[1], configs[0].train)
    optimizer = StackedOptimizer(model.params, [c.optimizer for c in configs])
    schedules = MemberSchedules(
        [c.optimizer for c in configs], [c.schedule for c in configs], steps.epochs, own=optimizer.solos.optimizers
    )
    return model, optimizer, schedules, steps


def _build(tasks: list[Task], configs: list[Config]) -> Group:
    """Data, stacked model, optimizer, schedules and each member's run folder (new, or its
    interrupted one with its newest checkpoint loaded)."""
    first = configs[0]
    set_determinism(first.train.deterministic)
    device = resolve_device(first.train.device)
    sizes = memory.data_sizes(first)
    memory.check(first, sizes, lifecycle.plan(sizes.n_train, first.train).batch_size, device)
    data = stackdata.build(configs, device)
    model, optimizer, schedules, steps = stack(configs, data, device)
    note = (
        f"trained stacked with {len(configs)} run{'s' if len(configs) > 1 else ''} "
        f"({', '.join(t.name for t in tasks)}): the same initial "
        "weights, split and data order as alone; numbers differ from a run alone in the last bits only "
        "(docs/stacked.md)"
    )
    members, states = [], []
    try:
        for task, config in zip(tasks, configs):
            if vectorised(config.optimizer):
                kernel = ("fused" if kind_key(config.optimizer, device)[2] else "for_loop") + ", stacked"
            else:  # stacked/generic.py: its solo optimizer over its rows
                kernel = f"{implementation(config.optimizer, device) or 'its own'}, its optimizer in a stacked group"
            meta = runs.provenance(device, config.experiment.seed) | {
                "optimizer_kernel": kernel,
                "stacked": note,
                "stacked_runs": len(configs),  # the group's size: compare marks the member's samples/s with it
            }
            order = torch.Generator(device=device).manual_seed(config.experiment.seed)
            member, state = _member(task, config, meta, order, device)
            members.append(member)
            states.append(state)
    except BaseException:
        for member in members:
            member.owned.close()
        raise
    board.define(members[0].run_dir.parent)  # once, with every member's settings
    group = Group(members, data, model, optimizer, schedules, steps, settings=first.train, device=device)
    if states[0] is not None:
        _restore(group, states)
    return group


def _member(
    task: Task, config: Config, meta: dict[str, Any], order: torch.Generator, device: torch.device
) -> tuple[Member, dict[str, Any] | None]:
    """The member's run folder, owned: its interrupted one when it has a checkpoint, else a new one."""
    resolved = to_dict(config)
    if task.resume is not None:
        run_dir = Path(task.resume)
        saved = Checkpoints(run_dir, config.train.keep_last, resolved)
        latest = saved.continue_from(task.resume_step)
        if latest is not None:
            owned = runs.lock_run(run_dir)
            try:
                state = checkpoints.load(latest, resolved)
                meta = meta | {"resumed_from": str(latest)}
                tracker = lifecycle.open_tracker(run_dir, config, meta, resume_at=state["metrics_offset"], define=False)
            except BaseException:
                owned.close()
                raise
            at = Progress.from_state(state["progress"], device)
            member = Member(task.name, config, run_dir, owned, tracker, saved, meta=meta, order=order, at=at)
            return member, state
    run_dir, owned = runs.create_run(Path(task.runs_dir), config, task.name, meta)
    try:
        tracker = lifecycle.open_tracker(run_dir, config, meta, define=False)
    except BaseException:
        owned.close()
        raise
    saved = Checkpoints(run_dir, config.train.keep_last, resolved)
    return Member(task.name, config, run_dir, owned, tracker, saved, meta=meta, order=order, at=Progress()), None


def _dropout_generator(device: torch.device) -> torch.Generator:
    """A generator in the state of torch's own on `device` now: where a solo run's dropout draws from."""
    generator = torch.Generator(device=device)
    generator.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
    return generator


def _restore(group: Group, states: list[dict[str, Any]]) -> None:
    """Put each member's checkpoint into its row; all were written at the same step (groups.py)."""
    at = group.members[0].at
    for m, (member, state) in enumerate(zip(group.members, states)):
        if (member.at.epoch, member.at.step_in_epoch, member.at.outcome.steps) != (
            at.epoch,
            at.step_in_epoch,
            at.outcome.steps,
        ):
            raise ValueError("the members' checkpoints were written at different steps")
        steps = member.at.outcome.steps
        group.model.load_member_state_dict(m, state["model"])
        group.optimizer.load_member_state_dict(m, state["optimizer"], steps)
        lrs = {} if m in group.schedules.own else state["optimizer"]["param_groups"][0]
        group.schedules.load_member(m, lrs, state["scheduler"], state["warmup"], steps)
        member.order.set_state(state["rng"]["order"])
    restore_rng(states[0]["rng"], group.members[0].order)  # torch's, numpy's and Python's RNGs are the group's
    for m, state in enumerate(states):  # each member's dropout draws: what a solo run's torch RNG state holds
        rng = state["rng"]
        saved = rng["cuda"][group.device.index or 0] if group.device.type == "cuda" and rng["cuda"] else rng["torch"]
        group.model.generators[m].set_state(saved)
    group.at = Progress(
        epoch=at.epoch,
        step_in_epoch=at.step_in_epoch,
        seen=at.seen,
        pending=[torch.stack(column) for column in zip(*(member.at.pending for member in group.members))],
    )
    group.epoch_orders = [member.at.epoch_order for member in group.members]
    for name in COUNTERS:
        setattr(group.at.outcome, name, getattr(at.outcome, name))


def train(group: Group, stop: Stop) -> int | None:
    """engine.train's loop over all members at once; members end on their own (diverged, out of
    patience), the group when all have, at its last step, or at a signal, which it returns."""
    clip = torch.tensor([m.config.train.grad_clip or math.inf for m in group.members], dtype=torch.float64)
    precision = group.settings.precision
    autocast = torch.autocast(group.device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")
    with _bar(group) as bar:
        return _epochs(group, stop, bar, clip, bool(torch.isfinite(clip).any()), autocast, group.at.epoch)


def _bar(group: Group) -> tqdm:
    """The group's progress bar in steps (a terminal only, and only where a sweep watches it)."""
    watch, steps = group.watch, group.steps
    return tqdm(
        total=steps.max_steps,
        initial=group.at.outcome.steps,
        unit="step",
        desc=watch.title if watch is not None else "",
        leave=False,
        dynamic_ncols=True,
        disable=None if watch is not None else True,  # None: off when stderr is no terminal
    )


def _shown(bar: tqdm, group: Group, epoch: int) -> None:
    """The bar's figures: the epoch, the members still training and those that diverged."""
    members = group.members
    diverged = sum(m.result is not None and m.result.status == "diverged" for m in members)
    live = sum(m.live for m in members)
    bar.set_postfix_str(
        f"epoch {epoch}/{group.steps.epochs}, {live}/{len(members)} training, {diverged} diverged", refresh=False
    )


def _epochs(
    group: Group,
    stop: Stop,
    bar: tqdm,
    clip: torch.Tensor,
    clipping: bool,
    autocast: Any,
    at_start: int,
) -> int | None:
    """train's epochs, the bar updated per step."""
    settings, steps, at, data = group.settings, group.steps, group.at, group.data
    model, members = group.model, group.members
    params, outcome = model.params, at.outcome
    for epoch in range(at.epoch, steps.epochs + 1):
        _shown(bar, group, epoch)
        clock = lifecycle.Clock(at)
        group.epoch_orders = lifecycle.epoch_orders(at, epoch, [m.order for m in members], group.epoch_orders)
        rows = stackdata.epoch_rows(data, [m.order for m in members], steps.batch_size)  # (M, n_train)
        group.optimizer.set_mode(training=True)
        for xb, yb in stackdata.batches(data, rows, steps.batch_size, at.step_in_epoch):
            n = xb.shape[1]
            with autocast:
                losses = member_losses(settings.loss, model(xb), yb)  # (M,)
            for p in params:
                p.grad = None
            losses.sum().backward()  # member m's rows get the gradient of its own mean loss
            norms = clip_grad_norms_(params, clip) if clipping else None  # (M,), before clipping
            lr = group.schedules.lr  # (M,) the lr this step uses
            group.optimizer.step(lr)
            group.schedules.step()
            at.pending.append(losses.detach())
            outcome.steps, at.step_in_epoch, at.seen = outcome.steps + 1, at.step_in_epoch + 1, at.seen + n
            last = outcome.steps == steps.max_steps or at.seen == data.train.shape[1]
            halt = stop.signal
            bar.update()
            if len(at.pending) == settings.log_every or last:
                _log_steps(group, epoch, lr, norms if norms is not None else grad_norms(params))
                _shown(bar, group, epoch)
                if not any(m.live for m in members):
                    break
            if last:
                break
            if lifecycle.checkpoint_due(outcome.steps, settings, halt):
                clock.lap()
                _checkpoint(group)
                if halt is not None:
                    outcome.epochs = epoch - 1
                    return halt
        clock.lap()
        if not any(m.live for m in members):
            return None
        clock.count_epoch(epoch, first=epoch == at_start)  # this process's first epoch pays its start
        group.optimizer.set_mode(training=False)  # evaluated, kept as best and saved as alone (set_mode)
        _epoch_end(group, epoch)
        lifecycle.next_epoch(at, epoch)
        if not any(m.live for m in members):
            return None
        if epoch < steps.epochs:  # the last epoch's end is the run's: model.pt, not a checkpoint
            halt = stop.signal
            _checkpoint(group)
            if halt is not None:
                return halt
    return None


def _log_steps(group: Group, epoch: int, lr: torch.Tensor, norms: torch.Tensor) -> None:
    """At a log point: each live member's log window (lifecycle.log_window); one whose window holds
    a loss that is not finite diverged at that step and ends."""
    at = group.at
    window = torch.stack(at.pending).T.tolist()  # (M, k): the one host sync per log_every steps
    lrs, norm_values = lr.tolist(), norms.tolist()
    at.pending.clear()
    for m, member in enumerate(group.members):
        figures = {"lr": lrs[m], "grad_norm": norm_values[m]}
        if member.live and lifecycle.fits_line(member.config):
            figures |= lifecycle.line(group.model.member_state_dict(m))
        if member.live and not lifecycle.log_window(
            member.at.outcome, member.tracker, window[m], at.outcome.steps, epoch, figures
        ):
            _finish(group, member, "diverged")


def _epoch_end(group: Group, epoch: int) -> None:
    """Validation for every live member: log it, keep a new best, step its schedule; a member with
    a non-finite val loss diverged, one out of patience stops early."""
    data, settings, step = group.data, group.settings, group.at.outcome.steps
    losses, accuracies = stackdata.evaluate(
        group.model, data.x, data.y, data.val, settings.loss, settings.eval_batch_size
    )
    for m, member in enumerate(group.members):
        if not member.live:
            continue
        values = {"loss/val": losses[m]} | ({"accuracy/val": accuracies[m]} if accuracies is not None else {})
        if not lifecycle.validation(member.at.outcome, member.tracker, values, epoch, step):
            _finish(group, member, "diverged")
            continue
        if (
            lifecycle.track_best(member.at.outcome, epoch, values) and member.saved is not None
        ):  # with the next checkpoint
            member.best = lifecycle.best_state(group.model.member_state_dict(m), epoch, step, values)
    group.schedules.epoch_end([losses[m] if member.live else math.inf for m, member in enumerate(group.members)])
    for m, member in enumerate(group.members):
        if member.live and lifecycle.out_of_patience(member.at, losses[m], member.config.train):
            member.at.outcome.stopped_early = True
            _finish(group, member, "finished")


def _member_rng(group: Group, m: int, order: torch.Generator) -> dict[str, Any]:
    """A member's RNG states as its solo run's checkpoint holds them: torch's generator is its dropout
    generator, so the checkpoint resumes alike in a group or alone."""
    states = rng_states(order)
    dropout = group.model.generators[m].get_state()
    if group.device.type == "cuda":
        states["cuda"] = list(states["cuda"])
        states["cuda"][group.device.index or 0] = dropout
    else:
        states["torch"] = dropout
    return states


def _checkpoint(group: Group) -> None:
    """Each live member's checkpoint in its own folder, in a solo run's format (best.pt first when
    waiting). The older ones go only once every member's new one is written: a kill in between
    leaves each member the older step too, where the group resumes together (groups.align)."""
    at = group.at
    live = [member for member in group.members if member.live and member.saved is not None]
    group.optimizer.set_mode(training=False)  # a solo run's checkpoint holds its evaluation weights
    for m, member in enumerate(group.members):
        if not member.live or member.saved is None:
            continue
        progress = Progress(
            epoch=at.epoch,
            step_in_epoch=at.step_in_epoch,
            seen=at.seen,
            epoch_order=group.epoch_orders[m],
            stale_epochs=member.at.stale_epochs,
            best_for_patience=member.at.best_for_patience,
            pending=[p[m] for p in at.pending],
            outcome=_counted(group, member),
        )
        state = lifecycle.checkpoint_state(
            group.model.member_state_dict(m),
            group.optimizer.member_state_dict(m, group.schedules.group(m)),
            group.schedules.schedulers[m],
            group.schedules.warmups[m],
            progress,
            _member_rng(group, m, member.order),
            member.tracker.flush(),
        )
        lifecycle.save_checkpoint(member.saved, member.best, state, at.outcome.steps, prune=False)
        member.best = None
    for member in live:
        member.saved.prune()
    group.optimizer.set_mode(training=True)


def _counted(group: Group, member: Member) -> Outcome:
    """The member's outcome with the group's counters (steps, epochs, samples, times) copied in."""
    for name in COUNTERS:
        setattr(member.at.outcome, name, getattr(group.at.outcome, name))
    return member.at.outcome


def _tested(group: Group) -> tuple[list[float], list[float] | None]:
    """Every member's test loss and accuracy at the group's step, evaluated once for all the members that
    end at that step (a group of M ending together would otherwise test all M members M times)."""
    step, data = group.at.outcome.steps, group.data
    if group.tested is None or group.tested[0] != step:
        losses, accuracies = stackdata.evaluate(
            group.model, data.x_test, data.y_test, None, group.settings.loss, group.settings.eval_batch_size
        )
        group.tested = (step, losses, accuracies)
    return group.tested[1], group.tested[2]


def _finish(group: Group, member: Member, status: str, signal: int | None = None) -> None:
    """End a member: freeze it, test a finished one, write model.pt (not when interrupted) and its summary.json."""
    m = group.members.index(member)
    group.optimizer.set_mode(training=False, member=m)  # frozen from here on, in the mode its files are written in
    member.live = False
    group.optimizer.freeze(torch.arange(len(group.members)) == m)
    outcome = _counted(group, member)
    outcome.status = status
    data = group.data
    if status == "finished" and member.best is not None:
        member.saved.save_best(member.best)
        member.best = None
    if status == "finished" and data.x_test is not None:
        losses, accuracies = _tested(group)
        values = {"loss/test": losses[m]} | ({"accuracy/test": accuracies[m]} if accuracies is not None else {})
        lifecycle.log_test(outcome, member.tracker, values)
    outcome.signal = signal
    member.tracker.log_end(status)
    member.tracker.close()
    lifecycle.save_weights(member.run_dir, outcome, group.model.member_state_dict(m))
    seconds = time.perf_counter() - group.started
    lifecycle.write_summary(member.run_dir, outcome, group.steps, seconds, member.meta, member.saved, member.config)
    member.result = Result(
        member.name, status, str(member.run_dir), outcome.final, seconds=seconds, signal=outcome.signal
    )
    if group.watch is not None:  # it ends while its group trains on: said now, not at the group's end
        group.watch.ended(member.result)
