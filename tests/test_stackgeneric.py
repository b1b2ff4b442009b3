"""Stacked groups for every optimizer (stacked/generic.py): a member whose optimizer has no vectorised
rule steps with its solo run's optimizer over its rows of the stack, so after k steps, with schedules,
warm-up and clipping, its parameters are its solo run's; its state dict is the solo format, and
mixed groups (rules and solo optimizers) work. For every registered optimizer with random settings
(seeded) and for a class of the tests' own, named `module:Class` as a user would."""

from __future__ import annotations

import copy
import random
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn

from clihelp import finals, gdtrain
from gdtrain.components.optimizers import build_over, build_schedule, build_warmup
from gdtrain.core import optimizers as registry
from gdtrain.core.config import CosineSchedule, OptimizerConfig, PlateauSchedule, StepSchedule
from gdtrain.stacked.generic import vectorised
from gdtrain.stacked.lr import MemberSchedules
from gdtrain.stacked.optimizer import StackedOptimizer, clip_grad_norms_

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
SHAPES = [(3, 4), (4,), (2, 3, 2)]  # a matrix (muon's), a bias, a 3-d tensor (muon's rest)
STEPS, PER_EPOCH = 20, 5
TOLERANCE = 1e-6  # relative: torch's fused kernels (auto) against the for_loop formula the rules use
CONFIG = TypeAdapter(OptimizerConfig)


class SignMomentum(torch.optim.Optimizer):
    """The tests' own optimizer: sign of a momentum buffer, decoupled decay; with .train()/.eval()
    modes that do nothing but count, so the loop's calls can be seen."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.modes: list[bool] = []

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"].mul_(group["momentum"]).add_(p.grad)
                p.mul_(1 - group["lr"] * group["weight_decay"]).add_(buf.sign(), alpha=-group["lr"])

    def train(self):
        self.modes.append(True)

    def eval(self):
        self.modes.append(False)


USER = f"{__name__}:SignMomentum"


def draw(value, rng: random.Random):
    """A value near `value` of its type: floats scaled, zeros made small positive, bools flipped at random."""
    if isinstance(value, bool):
        return rng.random() < 0.5
    if isinstance(value, int):
        return value + rng.randint(0, 2)
    if isinstance(value, float):
        return rng.uniform(0.0, 0.05) if value == 0 else value * rng.uniform(0.5, 1.5)
    if isinstance(value, tuple):
        return tuple(draw(v, rng) if v is not None else None for v in value)
    return value


def random_config(name: str, seed: int):
    """`name`'s config with each setting drawn near its default where the schema accepts the draw."""
    rng = random.Random(seed)
    chosen = {"name": name}
    defaults = (
        {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}
        if name == USER
        else {k: s.default for k, s in registry.OPTIMIZERS[name].settings.items()}
    )
    if name == "muon":
        chosen["rest"] = {"name": "nadam"}
    for key, default in defaults.items():
        if key == "ns_coefficients":  # muon's Newton-Schulz polynomial, moved at random, diverges to NaN
            continue
        for _ in range(10):  # a draw the schema refuses (betas above 1) is drawn again, else the default stays
            value = draw(default, rng)
            try:
                CONFIG.validate_python({**chosen, key: value})
            except ValidationError:
                continue
            chosen[key] = value
            break
    return CONFIG.validate_python(chosen)


SCHEDULES = [
    (StepSchedule(step_size=1, gamma=0.7), 0.5),
    (CosineSchedule(warmup_steps=6, warmup_start_factor=0.2), None),
    (PlateauSchedule(patience=0, factor=0.5, warmup_steps=3), 1.0),
]


def gradients(m: int, seed: int) -> list[list[torch.Tensor]]:
    """Per step, the M members' gradients, scaled differently from step to step and member to member."""
    gen = torch.Generator().manual_seed(seed)
    scale = (1 + torch.arange(m) % 3).double()
    return [
        [
            (
                torch.randn((m, *s), generator=gen, dtype=torch.float64)
                * (10.0 ** (step % 3 - 1))
                * scale.view(-1, *[1] * len(s))
            ).float()
            for s in SHAPES
        ]
        for step in range(STEPS)
    ]


def val_loss(member: int, epoch: int) -> float:
    return [1.0, 0.9, 0.95, 0.95, 0.5][epoch - 1] + 0.01 * member


def solo(cfg, schedule, clip, params0, grads, member, steps=STEPS):
    """One member alone, as engine.train drives its optimizer: clip, step, warm-up, epoch schedule."""
    params = [nn.Parameter(p.clone()) for p in params0]
    opt = build_over(cfg, params)
    scheduler, warmup = build_schedule(schedule, opt, STEPS // PER_EPOCH), build_warmup(schedule, opt)
    for step in range(steps):
        for p, g in zip(params, grads[step]):
            p.grad = g[member].clone()
        if clip:
            nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if warmup is not None and step < warmup.total_iters:
            warmup.step()
        if (step + 1) % PER_EPOCH == 0:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss(member, (step + 1) // PER_EPOCH))
            elif scheduler is not None:
                scheduler.step()
    return params, opt


def stacked(configs, schedules, clips, params0, grads, steps=STEPS):
    """The members trained together as stacked/loop.py drives them; the parameters and the optimizer."""
    params = [nn.Parameter(p.clone()) for p in params0]
    opt = StackedOptimizer(params, configs)
    lr = MemberSchedules(configs, schedules, STEPS // PER_EPOCH, own=opt.solos.optimizers)
    max_norm = torch.tensor([c or float("inf") for c in clips])
    for step in range(steps):
        for p, g in zip(params, grads[step]):
            p.grad = g.clone()
        clip_grad_norms_(params, max_norm)
        opt.step(lr.lr)
        lr.step()
        if (step + 1) % PER_EPOCH == 0:
            lr.epoch_end([val_loss(m, (step + 1) // PER_EPOCH) for m in range(len(configs))])
    return params, opt, lr


def difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def check(configs, seed: int) -> None:
    """Each member of a group of `configs` (a schedule and a clip each) against its solo run."""
    schedules = [SCHEDULES[m % len(SCHEDULES)][0] for m in range(len(configs))]
    clips = [SCHEDULES[m % len(SCHEDULES)][1] for m in range(len(configs))]
    gen = torch.Generator().manual_seed(seed)
    params0 = [torch.randn((len(configs), *s), generator=gen) for s in SHAPES]
    grads = gradients(len(configs), seed)
    params, _, _ = stacked(configs, schedules, clips, params0, grads)
    for m, cfg in enumerate(configs):
        alone, _ = solo(cfg, schedules[m], clips[m], [p[m] for p in params0], grads, m)
        for p, q in zip(params, alone):
            assert difference(p[m].detach(), q.detach()) <= TOLERANCE, (m, cfg)


NAMES = [*registry.OPTIMIZERS, USER]


@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_with_random_settings_trains_stacked_as_alone(name):
    configs = [random_config(name, seed) for seed in range(3)]
    check(configs, seed=len(name))


def test_a_mixed_group_of_rules_and_solo_optimizers_trains_each_member_as_alone():
    configs = [random_config(name, i) for i, name in enumerate([*NAMES, "adam", "nadam", USER, "sgd"])]
    assert {vectorised(c) for c in configs} == {True, False}
    check(configs, seed=7)


def same(a, b) -> bool:
    """Two state dicts hold the same keys and values, tensors bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("name", ["nadam", "muon", "asgd", USER])
def test_a_members_state_dict_is_its_solo_runs_and_goes_on_as_the_solo_run(name):
    configs = [random_config("adam", 0), random_config(name, 1), random_config(name, 2)]
    schedules, clips = [SCHEDULES[1][0]] * 3, [None] * 3
    gen = torch.Generator().manual_seed(3)
    params0 = [torch.randn((3, *s), generator=gen) for s in SHAPES]
    grads = gradients(3, 3)
    params, opt, lr = stacked(configs, schedules, clips, params0, grads, steps=8)
    state = copy.deepcopy(opt.member_state_dict(1, lr.group(1)))
    alone, solo_opt = solo(configs[1], schedules[1], None, [p[1] for p in params0], grads, 1, steps=8)
    assert same(state, solo_opt.state_dict())
    # the state loads into a fresh solo optimizer, and into a fresh group's member, and both go on alike
    fresh = [nn.Parameter(p[1].detach().clone()) for p in params]
    again = build_over(configs[1], fresh)
    again.load_state_dict(state)
    other = StackedOptimizer([nn.Parameter(p.detach().clone()) for p in params], configs)
    other.load_member_state_dict(1, copy.deepcopy(state), 8)
    for step in range(8, STEPS):
        for p, g in zip(fresh, grads[step]):
            p.grad = g[1].clone()
        again.step()
        for p, g in zip(other.params, grads[step]):
            p.grad = g.clone()
        other.step(other.base_lr)
    for p, q in zip(other.params, fresh):
        assert torch.equal(p[1].detach(), q.detach())


def test_the_stacked_loop_switches_modes_of_optimizers_that_have_them():
    configs = [random_config(USER, 0), random_config("adam", 0)]
    opt = StackedOptimizer([nn.Parameter(torch.zeros(2, 3, 4))], configs)
    opt.set_mode(training=False)
    opt.freeze(torch.tensor([True, False]))
    opt.set_mode(training=True)  # a frozen member stays in the mode its files were written in
    assert opt.solos.optimizers[0].modes == [False]


def test_a_sweep_of_nadam_radam_and_a_users_class_stacks_in_one_group_as_alone(tmp_path):
    module = f"signsgd_{uuid.uuid4().hex[:8]}"  # a name no other test imported in this process
    shutil.copy(ROOT / "examples" / "signsgd.py", tmp_path / f"{module}.py")  # beside the config
    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE.read_text())
    grid = ["--grid", f"optimizer.name=nadam,radam,{module}:SignSGD", "--seeds", "2"]
    together = gdtrain("sweep", config, *grid, "--runs-dir", tmp_path / "stacked")
    assert together.exit_code == 0, together.output
    assert "stacked: 6 runs train as 1 group(s) of 6 runs" in together.stdout
    alone = gdtrain("sweep", config, *grid, "--runs-dir", tmp_path / "alone", "--batch-runs", "1")
    assert alone.exit_code == 0 and "stacked:" not in alone.stdout, alone.output
    ours, theirs = finals(tmp_path / "stacked"), finals(tmp_path / "alone")
    assert ours.keys() == theirs.keys() and len(ours) == 6
    for run, (status, final, steps) in theirs.items():
        assert ours[run][0] == status == "finished" and ours[run][2] == steps
        for key, value in final.items():
            assert ours[run][1][key] == pytest.approx(value, rel=1e-4), (run, key)
