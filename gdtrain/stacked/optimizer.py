"""One optimizer for M stacked members, each with its own torch.optim config and lr.

Each parameter is a (M, *shape) tensor (torch.func.stack_module_state's layout). torch.optim keeps
one lr per param group, so it cannot update such stacks with per-member settings: here members are
split into kinds by optimizer, by the switches that pick a branch of torch's formula (momentum on or
off, nesterov, centered, amsgrad) and by the kernel: torch's fused one for Adam, AdamW and Adagrad
where a solo run would use it (`implementation: auto` on the CPU; a fused kind also shares betas and
eps), else the single-tensor formula (bit for bit torch's `foreach=False`). Each kind's rule
(stacked/rules.py) runs once over its members' rows, every other setting an (m,) column.
A kind whose members sit next to each other in the stack is updated through a view, with no copy; a
scattered one is gathered with index_select and written back with index_copy_ (benchmarks/stackopt.py
gives the cost). Frozen members (diverged ones) are left out of their kind's rows: their parameters
and state stay as they are. Members whose optimizer has no rule (a user's class, nadam, muon...)
step with their solo run's optimizer over their rows (stacked/generic.py), in the same group.
The caller gives each step's lr (lr.MemberSchedules) and clips
(clip_grad_norms_) before stepping, as engine.train does for one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gdtrain.components.optimizers import IMPLEMENTATIONS, implementation, optimizer_class, settings
from gdtrain.core.config import OptimizerConfig
from gdtrain.stacked.generic import Solos, vectorised
from gdtrain.stacked.rules import FUSED_RULES, FUSED_SHARED, HYPERS, RULES, Rows, col, state_names

Select = slice | Tensor  # rows as a view (contiguous) or as an index for index_select / index_copy_


def switches(cfg: OptimizerConfig) -> tuple[bool, ...]:
    """The settings that pick a branch of torch's formula, so members differing in them cannot share a rule."""
    if cfg.name == "sgd":
        return (cfg.momentum != 0, cfg.nesterov)
    if cfg.name == "rmsprop":
        return (cfg.momentum > 0, cfg.centered)
    if cfg.name == "adam":
        return (cfg.amsgrad, cfg.decoupled_weight_decay)
    if cfg.name == "adamw":
        return (cfg.amsgrad,)
    return ()


def kind_key(cfg: OptimizerConfig, device: torch.device) -> tuple[str, tuple[bool, ...], bool, tuple[float, ...]]:
    """What members sharing a rule share: optimizer, formula switches, fused or not, a fused kernel's float settings."""
    fused = cfg.name in FUSED_RULES and implementation(cfg, device) == "fused"
    return cfg.name, switches(cfg), fused, tuple(_hyper(cfg, h) for h in FUSED_SHARED[cfg.name]) if fused else ()


def _hyper(cfg: OptimizerConfig, name: str) -> float:
    return cfg.betas[int(name[-1]) - 1] if name.startswith("beta") else getattr(cfg, name)


def _select(rows: list[int], device: torch.device) -> Select:
    """A slice when the rows are contiguous (a view), else a long index (a gather)."""
    if rows == list(range(rows[0], rows[-1] + 1)):
        return slice(rows[0], rows[-1] + 1)
    return torch.tensor(rows, device=device)


def _take(t: Tensor, rows: Select, out: Tensor | None = None) -> Tensor:
    """The rows of t: a view, or a gathered copy (into `out` when given)."""
    if isinstance(rows, slice):
        return t[rows]
    return t.index_select(0, rows) if out is None else torch.index_select(t, 0, rows, out=out[: len(rows)])


def _put(t: Tensor, rows: Select, value: Tensor) -> None:
    if not isinstance(rows, slice):  # a slice was a view: the rule wrote through it
        t.index_copy_(0, rows, value)


@dataclass
class Kind:
    """The members sharing one rule: their settings, per-member step counts and state."""

    name: str  # the optimizer's config name
    switches: tuple[bool, ...]
    fused: bool  # torch's fused kernel (rules.FUSED_RULES) rather than its single-tensor formula
    members: list[int]  # indices in the stack, ascending
    hypers: dict[str, Tensor]  # (m,) float64 on the CPU
    step: Tensor  # (m,) float64 on the CPU: steps taken (torch counts in floats too)
    state: dict[str, list[Tensor]]  # torch's state name -> (m, *shape) per parameter
    decay: bool  # some member has weight_decay != 0
    # The rows not frozen (set by StackedOptimizer.freeze): within the kind, in the stack, and their lr.
    live: Select = field(default_factory=lambda: slice(None))  # on the CPU, for hypers and step
    state_rows: Select = field(default_factory=lambda: slice(None))
    stack_rows: Select = field(default_factory=lambda: slice(None))
    lr_index: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (live,) into the stack
    idle: bool = False  # every member frozen
    count: int = 0  # members not frozen

    def select(self, frozen: Tensor, device: torch.device) -> None:
        """Work out the rows that still step, once per freeze rather than once per step."""
        rows = [r for r, m in enumerate(self.members) if not frozen[m]]
        self.idle, self.count = not rows, len(rows)
        if rows:
            self.live = slice(None) if len(rows) == len(self.members) else torch.tensor(rows)
            self.state_rows = _select(rows, device)
            self.stack_rows = _select([self.members[r] for r in rows], device)
            self.lr_index = torch.tensor([self.members[r] for r in rows])


class StackedOptimizer:
    """torch.optim for M stacked members: member m follows configs[m], with the lr given at each step."""

    def __init__(self, params: Sequence[Tensor], configs: Sequence[OptimizerConfig]):
        self.params, self.configs = list(params), list(configs)
        if not self.params or any(p.dim() == 0 or len(p) != len(self.configs) for p in self.params):
            raise ValueError(f"each parameter must be (M, *shape) with M = {len(self.configs)} configs")
        self.frozen = torch.zeros(len(self.configs), dtype=torch.bool)  # (M,) on the CPU, set by freeze()
        ruled = [m for m, cfg in enumerate(self.configs) if vectorised(cfg)]
        self.solos = Solos(self.params, {m: cfg for m, cfg in enumerate(self.configs) if m not in ruled})
        # the rules' scratch
        self.work = [(torch.empty_like(p), torch.empty_like(p)) for p in self.params] if ruled else []
        self.gathered: list[tuple[Tensor, Tensor]] = []  # params and grads of scattered kinds, made when first needed
        kinds: dict[tuple, list[int]] = {}
        for m in ruled:
            kinds.setdefault(kind_key(self.configs[m], self.params[0].device), []).append(m)
        self.kinds = [self._kind(name, switch, fused, members) for (name, switch, fused, _), members in kinds.items()]
        self.freeze(self.frozen)

    def _kind(self, name: str, switch: tuple[bool, ...], fused: bool, members: list[int]) -> Kind:
        hypers = {
            h: torch.tensor([_hyper(self.configs[m], h) for m in members], dtype=torch.float64) for h in HYPERS[name]
        }
        rows = _select(members, self.params[0].device)
        state = {s: [torch.zeros_like(_take(p, rows)) for p in self.params] for s in state_names(name, switch)}
        if name == "adagrad":  # torch fills the sum when the optimizer is built
            for t in state["sum"]:
                t.copy_(col(hypers["initial_accumulator_value"].to(t), t).expand_as(t))
        return Kind(
            name,
            switch,
            fused,
            members,
            hypers,
            torch.zeros(len(members), dtype=torch.float64),
            state,
            bool((hypers["weight_decay"] != 0).any()),
        )

    @property
    def base_lr(self) -> Tensor:
        """(M,) float64: each member's configured lr (every step's lr without a schedule)."""
        return torch.tensor([cfg.lr for cfg in self.configs], dtype=torch.float64)

    def freeze(self, members: Tensor) -> None:
        """Stop updating the members where `members` (M,) is True, for good: parameters and state stay as they are."""
        self.frozen |= members.to("cpu", torch.bool)
        for kind in self.kinds:
            kind.select(self.frozen, self.params[0].device)

    @torch.no_grad()
    def step(self, lr: Tensor) -> None:
        """One update of every member not frozen; lr (M,): the lr each member's step uses."""
        lr = lr.to("cpu", torch.float64)
        with_grad = [i for i, p in enumerate(self.params) if p.grad is not None]  # torch skips the others
        for kind in self.kinds:  # Python loops over kinds and parameter tensors, never over members
            if kind.idle or not with_grad:
                continue
            if not isinstance(kind.stack_rows, slice) and not self.gathered:
                self.gathered = [(torch.empty_like(p), torch.empty_like(p)) for p in self.params]
            into = self.gathered or [(None, None)] * len(self.params)
            kind.step[kind.live] += 1
            step = kind.step[kind.live]  # unfrozen members step together, so all are at the same count
            rows = Rows(
                params=[_take(self.params[i], kind.stack_rows, into[i][0]) for i in with_grad],
                grads=[_take(self.params[i].grad, kind.stack_rows, into[i][1]) for i in with_grad],
                state={s: [_take(ts[i], kind.state_rows) for i in with_grad] for s, ts in kind.state.items()},
                work=[(self.work[i][0][: kind.count], self.work[i][1][: kind.count]) for i in with_grad],
                hypers={h: v[kind.live] for h, v in kind.hypers.items()},
                lr=lr[kind.lr_index],
                step=step,
                switches=kind.switches,
                decay=kind.decay,
                first=bool(step[0] == 1),
            )
            (FUSED_RULES if kind.fused else RULES)[kind.name](rows)
            for j, i in enumerate(with_grad):
                _put(self.params[i], kind.stack_rows, rows.params[j])
                for s, ts in kind.state.items():
                    _put(ts[i], kind.state_rows, rows.state[s][j])
        self.solos.step(self.frozen)

    def set_mode(self, training: bool, member: int | None = None) -> None:
        """components.optimizers.set_mode for `member`'s optimizer, or for every member's not frozen."""
        members = [member] if member is not None else [m for m in range(len(self.configs)) if not self.frozen[m]]
        self.solos.set_mode(training, members)

    def state_dict(self) -> dict[str, Any]:
        """Settings, steps, state and the frozen mask; like torch.optim's, its tensors are the live ones, not copies."""
        return {
            "configs": [settings(cfg) for cfg in self.configs],
            "frozen": self.frozen.clone(),
            "kinds": [{"members": kind.members, "step": kind.step, "state": kind.state} for kind in self.kinds],
            "solos": {m: opt.state_dict() for m, opt in self.solos.optimizers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`, saved by an optimizer built with the same configs and parameter shapes."""
        if state["configs"] != [settings(cfg) for cfg in self.configs]:
            raise ValueError("the state was saved by an optimizer with other members or settings")
        for kind, saved in zip(self.kinds, state["kinds"], strict=True):
            if saved["members"] != kind.members or saved["state"].keys() != kind.state.keys():
                raise ValueError("the state was saved by an optimizer with other members or settings")
            kind.step.copy_(saved["step"])
            for name, tensors in kind.state.items():
                for t, value in zip(tensors, saved["state"][name], strict=True):
                    t.copy_(value)
        for m, opt in self.solos.optimizers.items():
            opt.load_state_dict(state["solos"][m])
        self.frozen.zero_()
        self.freeze(state["frozen"])

    def member_state_dict(self, member: int, group: dict[str, float]) -> dict[str, Any]:
        """One member's state as its solo run's torch.optim state_dict(); `group`: MemberSchedules.group(member)."""
        if member in self.solos.optimizers:  # its solo optimizer's own, lr entries included
            return self.solos.optimizers[member].state_dict()
        cfg = self.configs[member]
        kind = next(k for k in self.kinds if member in k.members)
        row = kind.members.index(member)
        alone = [torch.empty_like(p[member]) for p in self.params]
        kernel = IMPLEMENTATIONS[implementation(cfg, alone[0].device)]
        solo = optimizer_class(cfg.name)(alone, **settings(cfg), **kernel)
        solo.param_groups[0].update(group)
        if kind.step[row] == 0 and cfg.name != "adagrad":  # torch makes state at the first step, Adagrad at once
            return solo.state_dict()
        for i, p in enumerate(alone):
            if not kind.state:  # SGD without momentum keeps none
                break
            solo.state[p] = {name: tensors[i][row].clone() for name, tensors in kind.state.items()}
            if cfg.name != "sgd":
                solo.state[p]["step"] = torch.tensor(kind.step[row].item(), dtype=torch.float32)
        return solo.state_dict()

    @torch.no_grad()
    def load_member_state_dict(self, member: int, state: dict[str, Any], steps: int) -> None:
        """Continue member `member` from its solo run's torch.optim state_dict (member_state_dict's
        inverse); `steps`: the optimizer steps it has taken (SGD's state does not count them)."""
        if member in self.solos.optimizers:
            self.solos.optimizers[member].load_state_dict(state)
            return
        kind = next(k for k in self.kinds if member in k.members)
        row = kind.members.index(member)
        saved = state["state"]
        kind.step[row] = float(saved[0]["step"]) if saved and "step" in saved[0] else steps
        for name, tensors in kind.state.items():
            for i, t in enumerate(tensors):
                if i in saved:
                    t[row].copy_(saved[i][name])


def grad_norms(params: Sequence[Tensor]) -> Tensor:
    """(M,) each member's total L2 gradient norm, as torch.nn.utils.get_total_norm takes it, bit for bit."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads], dim=1)  # (M, tensors)
    return torch.linalg.vector_norm(norms, dim=1)  # over a contiguous row, as torch sums one stacked vector


def clip_grad_norms_(params: Sequence[Tensor], max_norm: Tensor) -> Tensor:
    """clip_grad_norm_ per member; max_norm (M,), inf where a member does not clip. Returns the norms before."""
    norms = grad_norms(params)
    clips = torch.isfinite(max_norm)
    if bool(clips.any()):
        # torch's `max_norm / (total_norm + 1e-6)` is Tensor.__rtruediv__: a reciprocal, then a product
        coef = torch.clamp((norms + 1e-6).reciprocal() * max_norm.to(norms), max=1.0)
        coef = torch.where(clips.to(norms.device), coef, 1.0)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(col(coef, p.grad))
    return norms
