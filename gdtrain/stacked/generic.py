"""Stacked members whose optimizer has no vectorised rule (stacked/rules.py): each member trains with
its solo run's optimizer, one instance per member over that member's slices of the stacked parameters.

Member m's tensors are `p.detach()[m]`: leaves (torch.optim refuses others) that share the stack's
storage, so the optimizer's in-place updates write into row m. Before each step their .grad is
pointed at row m of the stacked gradients (the loop makes new ones every step, clipped per member).
The optimizer is components.optimizers.build_over's: the class and kernel the solo run builds, muon
with its rest included (a member's slice of a 2-D weight is 2-D), so each member computes exactly its
solo run's maths and its state_dict is the solo run's. Its schedules are attached to it
(stacked/lr.py), so muon's two param groups scale as they do alone. The price of generality is a
Python loop over members at every step (`gdtrain bench --stacked` measures it against the rules).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from gdtrain.components.optimizers import build_over, set_mode
from gdtrain.core import optimizers as registry
from gdtrain.core.config import OptimizerConfig


def vectorised(cfg: OptimizerConfig) -> bool:
    """Whether stacked/rules.py has a vectorised rule for this optimizer (else: its solo optimizer per member)."""
    return not registry.is_user(cfg.name) and registry.OPTIMIZERS[cfg.name].stacked


class Solos:
    """The solo optimizers of the members in `configs` (member index -> config) over their rows of `params`."""

    def __init__(self, params: Sequence[Tensor], configs: dict[int, OptimizerConfig]):
        self.params = list(params)
        self.views = {m: [p.detach()[m] for p in self.params] for m in configs}  # (*shape) each, in the stack
        self.optimizers = {m: build_over(cfg, self.views[m]) for m, cfg in configs.items()}

    @torch.no_grad()
    def step(self, frozen: Tensor) -> None:
        """One step of each member's optimizer but the frozen ones', on its rows of the stacked gradients."""
        for m, optimizer in self.optimizers.items():
            if frozen[m]:
                continue
            for view, p in zip(self.views[m], self.params):
                view.grad = None if p.grad is None else p.grad[m]
            optimizer.step()

    def set_mode(self, training: bool, members: Iterable[int]) -> None:
        """components.optimizers.set_mode for those of `members` that train here."""
        for m in members:
            if m in self.optimizers:
                set_mode(self.optimizers[m], training)
