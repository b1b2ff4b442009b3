"""Each stacked member's lr per step, from its own torch.optim.lr_scheduler objects.

A member's schedule and warm-up are the ones a solo run builds (optimizers.build_schedule and
build_warmup), attached to a stand-in torch.optim.SGD over one scalar that never steps: its param
group's lr is the member's lr, so every schedule, plateau included, is torch's own. A member that
steps with its solo optimizer (stacked/generic.py) has its schedules attached to that optimizer, as
alone: muon's two param groups both scale, and the lr in its state_dict is the solo run's. They are stepped
as engine.train steps a solo run's: the warm-up after each of its first `warmup_steps` optimizer
steps, the epoch schedule at each epoch's end (plateau on the member's validation loss).
The Python loop over members runs only when an lr changes: during warm-up and at epoch ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gdtrain.components.optimizers import build_schedule, build_warmup
from gdtrain.core.config import OptimizerConfig, ScheduleConfig
from gdtrain.training.lifecycle import step_schedule


class MemberSchedules:
    """The lr of each of M members: optimizers[m].lr under schedules[m], in a run of `epochs` epochs."""

    def __init__(
        self,
        optimizers: Sequence[OptimizerConfig],
        schedules: Sequence[ScheduleConfig],
        epochs: int,
        own: dict[int, torch.optim.Optimizer] | None = None,
    ):
        """`own`: member -> its solo optimizer (stacked/generic.py), driven by its schedules in place of a stand-in."""
        if len(optimizers) != len(schedules):
            raise ValueError(f"{len(optimizers)} optimizer configs but {len(schedules)} schedule configs")
        self.own = own or {}
        self.stand_ins = [
            self.own[m] if m in self.own else torch.optim.SGD([torch.zeros((), requires_grad=True)], lr=cfg.lr)
            for m, cfg in enumerate(optimizers)
        ]
        self.schedulers = [build_schedule(cfg, opt, epochs) for cfg, opt in zip(schedules, self.stand_ins)]
        self.warmups = [build_warmup(cfg, opt) for cfg, opt in zip(schedules, self.stand_ins)]
        for opt in self.stand_ins:
            opt._opt_called = True  # it never steps: silence torch's "scheduler.step() before optimizer.step()"
        self.steps = 0  # optimizer steps taken
        self._lr = self._read()

    def _read(self) -> Tensor:
        return torch.tensor([opt.param_groups[0]["lr"] for opt in self.stand_ins], dtype=torch.float64)

    @property
    def lr(self) -> Tensor:
        """(M,) float64 on the CPU: the lr each member's next step uses."""
        return self._lr

    def group(self, member: int) -> dict[str, float]:
        """The lr entries a solo run's param group holds: lr, and initial_lr when a schedule is attached."""
        return {k: v for k, v in self.stand_ins[member].param_groups[0].items() if k in ("lr", "initial_lr")}

    def step(self) -> None:
        """After an optimizer step: advance the warm-ups still running."""
        warming = [w for w in self.warmups if w is not None and self.steps < w.total_iters]
        for warmup in warming:
            warmup.step()
        self.steps += 1
        if warming:
            self._lr = self._read()

    def epoch_end(self, val_loss: Sequence[float]) -> None:
        """At an epoch's end: plateau schedules on each member's validation loss, the others on the epoch count."""
        for scheduler, loss in zip(self.schedulers, val_loss, strict=True):
            step_schedule(scheduler, loss)
        self._lr = self._read()

    def state_dict(self) -> dict[str, Any]:
        """Each member's stand-in optimizer, schedule and warm-up states, and the step count."""

        def state(x):
            return None if x is None else x.state_dict()

        return {
            "steps": self.steps,
            "members": [
                {"optimizer": o.state_dict(), "scheduler": state(s), "warmup": state(w)}
                for o, s, w in zip(self.stand_ins, self.schedulers, self.warmups)
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`, written by MemberSchedules built from the same configs."""
        for saved, opt, scheduler, warmup in zip(
            state["members"], self.stand_ins, self.schedulers, self.warmups, strict=True
        ):
            opt.load_state_dict(saved["optimizer"])
            for x, key in ((scheduler, "scheduler"), (warmup, "warmup")):
                if (x is None) != (saved[key] is None):
                    raise ValueError(f"the state's {key} does not match this member's schedule config")
                if x is not None:
                    x.load_state_dict(saved[key])
        self.steps = state["steps"]
        self._lr = self._read()

    def load_member(
        self,
        member: int,
        group: dict[str, Any],
        scheduler: dict[str, Any] | None,
        warmup: dict[str, Any] | None,
        steps: int,
    ) -> None:
        """Continue member `member` where its solo run's checkpoint stands: its param group's lr
        entries (`group`; a member with its own optimizer has them from its state_dict), its schedule's
        and warm-up's states; `steps`: optimizer steps taken."""
        if member not in self.own:
            self.stand_ins[member].param_groups[0].update({k: v for k, v in group.items() if k in ("lr", "initial_lr")})
        for x, saved, key in (
            (self.schedulers[member], scheduler, "scheduler"),
            (self.warmups[member], warmup, "warmup"),
        ):
            if (x is None) != (saved is None):
                raise ValueError(f"the checkpoint's {key} does not match this member's schedule config")
            if x is not None:
                x.load_state_dict(saved)
        self.steps = steps
        self._lr = self._read()
