"""Stacked optimizers equal torch.optim: each member of a StackedOptimizer, given the same gradients,
ends where a solo torch.optim run (foreach=False) of its config ends, for every optimizer and every
setting the schema accepts, mixed in one group, with schedules, warm-up and clipping. With
`implementation: for_loop` bit for bit; with auto (torch's fused kernels for Adam, AdamW and Adagrad,
as gdtrain picks on the CPU) within 1e-6 relative, as far as torch's own fused kernel is from for_loop.
Relative difference: the largest absolute difference over a parameter tensor over its largest value."""

from __future__ import annotations

import io
import itertools
import random

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from gdtrain.components.optimizers import build_schedule, build_warmup, optimizer_class
from gdtrain.core.config import (
    AdagradConfig,
    AdamConfig,
    AdamWConfig,
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    PlateauSchedule,
    RMSpropConfig,
    SGDConfig,
    StepSchedule,
)
from gdtrain.stacked.lr import MemberSchedules
from gdtrain.stacked.optimizer import StackedOptimizer, clip_grad_norms_, kind_key

SHAPES = [(3, 4), (4,), (2, 3, 2)]  # a matrix, a bias, a 3-d tensor
STEPS, STEPS_PER_EPOCH = 25, 5
SCALES = [1.0, 1.0, 1e3, 1.0, 1e-3, 0.1, 10.0]  # gradient scale by step, cycled: some steps very different
TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}


def grid(cls, **choices) -> list:
    """Every combination of `choices` the schema accepts, as configs of `cls`."""
    configs = []
    for values in itertools.product(*choices.values()):
        try:
            configs.append(cls(**dict(zip(choices, values))))
        except ValidationError:  # e.g. nesterov without momentum
            pass
    return configs


MATRIX = (
    grid(
        SGDConfig,
        lr=[0.05],
        momentum=[0.0, 0.9],
        dampening=[0.0, 0.5],
        nesterov=[False, True],
        weight_decay=[0.0, 0.01],
    )
    + grid(
        AdagradConfig,
        lr=[0.1],
        lr_decay=[0.0, 0.01],
        weight_decay=[0.0, 0.01],
        initial_accumulator_value=[0.0, 0.1],
        eps=[1e-10, 1e-6],
    )
    + grid(
        RMSpropConfig,
        lr=[0.01],
        alpha=[0.99, 0.9],
        eps=[1e-8, 1e-4],
        weight_decay=[0.0, 0.01],
        momentum=[0.0, 0.9],
        centered=[False, True],
    )
    + grid(
        AdamConfig,
        lr=[0.01],
        betas=[(0.9, 0.999), (0.5, 0.9)],
        eps=[1e-8, 1e-6],
        weight_decay=[0.0, 0.01],
        amsgrad=[False, True],
        decoupled_weight_decay=[False, True],
    )
    + grid(
        AdamWConfig,
        lr=[0.01],
        betas=[(0.9, 0.999), (0.5, 0.9)],
        eps=[1e-8, 1e-6],
        weight_decay=[0.0, 0.01],
        amsgrad=[False, True],
    )
)


def start(m: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """The M members' initial parameters, (M, *shape) each."""
    gen = torch.Generator().manual_seed(0)
    return [torch.randn((m, *shape), generator=gen, dtype=torch.float64).to(dtype) for shape in SHAPES]


def gradients(m: int, dtype: torch.dtype) -> list[list[torch.Tensor]]:
    """Per step, the M members' gradients; member m's scaled by 1 + m % 3 too, so their norms differ."""
    gen = torch.Generator().manual_seed(1)
    member = (1 + torch.arange(m) % 3).double()
    return [
        [
            (
                torch.randn((m, *shape), generator=gen, dtype=torch.float64)
                * SCALES[step % len(SCALES)]
                * member.view(-1, *[1] * len(shape))
            ).to(dtype)
            for shape in SHAPES
        ]
        for step in range(STEPS)
    ]


def val_loss(member: int, epoch: int) -> float:
    """A made-up validation loss for plateau schedules: improves, stalls, improves."""
    return [1.0, 0.9, 0.95, 0.95, 0.5, 0.6][epoch - 1] + 0.01 * member


def solo(cfg, schedule, clip, params0, grads, member, steps=STEPS):
    """One member alone, as engine.train drives torch: clip, step, warm-up, epoch schedule."""
    params = [nn.Parameter(p.clone()) for p in params0]
    opt = optimizer_class(cfg.name)(params, **cfg.model_dump(exclude={"name", "implementation"}), foreach=False)
    scheduler = build_schedule(schedule, opt, STEPS // STEPS_PER_EPOCH)
    warmup = build_warmup(schedule, opt)
    lrs, norms = [], []
    for step in range(steps):
        for p, g in zip(params, grads[step]):
            p.grad = g.clone()
        grads_now = [p.grad for p in params]
        norms.append(nn.utils.clip_grad_norm_(params, clip) if clip else nn.utils.get_total_norm(grads_now))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if warmup is not None and step < warmup.total_iters:
            warmup.step()
        if (step + 1) % STEPS_PER_EPOCH == 0:
            epoch = (step + 1) // STEPS_PER_EPOCH
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss(member, epoch))
            elif scheduler is not None:
                scheduler.step()
    return [p.detach() for p in params], lrs, torch.stack(norms), opt


class Stack:
    """M members trained together: StackedOptimizer, MemberSchedules and clip_grad_norms_."""

    def __init__(self, configs, schedules, clips, params0):
        self.params = [nn.Parameter(p.clone()) for p in params0]
        self.opt = StackedOptimizer(self.params, configs)
        self.lr = MemberSchedules(configs, schedules, STEPS // STEPS_PER_EPOCH)
        self.max_norm = torch.tensor([c or float("inf") for c in clips])
        self.steps, self.lrs, self.norms = 0, [], []

    def run(self, grads, steps: int) -> None:
        for _ in range(steps):
            for p, g in zip(self.params, grads[self.steps]):
                p.grad = g.clone()
            self.norms.append(clip_grad_norms_(self.params, self.max_norm))
            self.lrs.append(self.lr.lr.clone())
            self.opt.step(self.lr.lr)
            self.lr.step()
            self.steps += 1
            if self.steps % STEPS_PER_EPOCH == 0:
                epoch = self.steps // STEPS_PER_EPOCH
                self.lr.epoch_end([val_loss(m, epoch) for m in range(len(self.max_norm))])


def difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest value of b."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def check_members(
    stack: Stack, configs, schedules, clips, params0, grads, dtype, skip=(), exact: bool = False
) -> tuple[float, float]:
    """Each member (but `skip`) against its solo run: the lr of every step, then the gradient norms and the
    parameters within tolerance (`exact`: parameters bit for bit). The largest differences (parameters, norms)."""
    worst = [0.0, 0.0]
    for m, (cfg, schedule, clip) in enumerate(zip(configs, schedules, clips)):
        if m in skip:
            continue
        own = [[g[m] for g in s] for s in grads]
        params, lrs, norms, _ = solo(cfg, schedule, clip, [p[m] for p in params0], own, m)
        assert [lr[m].item() for lr in stack.lrs] == lrs, f"member {m}: {cfg}, {schedule}"
        worst[1] = max(worst[1], difference(torch.stack(stack.norms)[:, m], norms))  # summed in another order
        assert worst[1] <= TOLERANCE[dtype]
        for p_stack, p_solo in zip(stack.params, params):
            d = difference(p_stack[m].detach(), p_solo)
            assert d <= TOLERANCE[dtype], f"member {m}: {cfg}, {schedule}, clip {clip}: {d:.2e}"
            assert not exact or torch.equal(p_stack[m], p_solo), f"member {m}: {cfg}: {d:.2e}"
            worst[0] = max(worst[0], d)
    return worst[0], worst[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order", ["by_kind", "shuffled"])
@pytest.mark.parametrize("kernel", ["for_loop", "auto"])
def test_every_setting_in_one_mixed_group_equals_torch(kernel, dtype, order):
    """All 106 accepted combinations as members of one group, kinds side by side (views) or shuffled
    (gathers). for_loop: bit for bit torch's single-tensor kernel. auto runs Adam, AdamW and Adagrad through
    torch's fused kernels, as gdtrain does on the CPU: as far from for_loop as torch's fused kernel is (1e-7)."""
    configs = [
        cfg.model_copy(update={"implementation": kernel, "lr": cfg.lr * (1 + i % 3)}) for i, cfg in enumerate(MATRIX)
    ]
    if order == "shuffled":
        random.Random(0).shuffle(configs)
    else:
        configs.sort(key=lambda cfg: kind_key(cfg, torch.device("cpu")))
    schedules, clips = [ConstantSchedule()] * len(configs), [None] * len(configs)
    params0, grads = start(len(configs), dtype), gradients(len(configs), dtype)
    stack = Stack(configs, schedules, clips, params0)
    assert len(stack.opt.kinds) == {"for_loop": 14, "auto": 33}[kernel]  # auto: fused kinds split by betas and eps
    views = [isinstance(kind.stack_rows, slice) for kind in stack.opt.kinds]
    assert all(views) if order == "by_kind" else not all(views)
    stack.run(grads, STEPS)
    worst, norms = check_members(stack, configs, schedules, clips, params0, grads, dtype, exact=kernel == "for_loop")
    print(
        f"{len(configs)} members, {kernel}, {dtype}, {order}: largest relative difference {worst:.2e}"
        f" (gradient norms {norms:.2e})"
    )


SCHEDULES = [
    ConstantSchedule(),
    StepSchedule(step_size=2, gamma=0.5),
    ExponentialSchedule(gamma=0.8),
    CosineSchedule(eta_min=1e-4),
    CosineSchedule(t_max=2),
    PlateauSchedule(factor=0.5, patience=1),
]
WARMUPS = [{}, {"warmup_steps": 7}, {"warmup_steps": 3, "warmup_start_factor": 0.5}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", ["for_loop", "auto"])
def test_schedules_warmup_and_clipping_per_member_equal_torch(kernel, dtype):
    """Every schedule × warm-up, with or without clipping, over the five optimizers."""
    kinds = [
        SGDConfig(lr=0.05, momentum=0.9),
        AdagradConfig(),
        RMSpropConfig(centered=True, momentum=0.5),
        AdamConfig(amsgrad=True),
        AdamWConfig(),
    ]
    kinds = [cfg.model_copy(update={"implementation": kernel}) for cfg in kinds]
    schedules = [type(s)(**{**s.model_dump(), **w}) for s in SCHEDULES for w in WARMUPS]
    configs = [kinds[i % len(kinds)] for i in range(len(schedules))]
    clips = [[None, 2.0, 20.0][i % 3] for i in range(len(schedules))]  # gradient norms are about 5 to 5e3
    params0, grads = start(len(configs), dtype), gradients(len(configs), dtype)
    stack = Stack(configs, schedules, clips, params0)
    stack.run(grads, STEPS)
    norms = torch.stack(stack.norms)  # (steps, M)
    assert all((norms[:, m] > clip).any() for m, clip in enumerate(clips) if clip)  # every clipping member clips
    assert all(stack.lrs[-1][m] < configs[m].lr / 1.5 for m, s in enumerate(schedules) if s.name == "plateau")
    worst, norms = check_members(stack, configs, schedules, clips, params0, grads, dtype, exact=kernel == "for_loop")
    print(
        f"{len(configs)} members with schedules and clipping, {kernel}, {dtype}: largest relative difference"
        f" {worst:.2e} (gradient norms {norms:.2e})"
    )


def test_members_that_do_not_clip_keep_their_gradients_bit_for_bit():
    params = [nn.Parameter(p) for p in start(4, torch.float32)]
    grads = gradients(4, torch.float32)[2]  # scale 1e3: every clipping member clips
    for p, g in zip(params, grads):
        p.grad = g.clone()
    norms = clip_grad_norms_(params, torch.tensor([1.0, float("inf"), 2.0, float("inf")]))
    for p, g in zip(params, grads):
        assert torch.equal(p.grad[[1, 3]], g[[1, 3]])
        assert not torch.equal(p.grad[[0, 2]], g[[0, 2]])
    total = torch.stack([torch.linalg.vector_norm(torch.cat([p.grad[m].flatten() for p in params])) for m in range(4)])
    assert total[[0, 2]].tolist() == pytest.approx([1.0, 2.0], rel=1e-5)
    assert torch.equal(norms, torch.stack([nn.utils.get_total_norm([g[m] for g in grads]) for m in range(4)]))


@pytest.mark.parametrize("kernel", ["for_loop", "auto"])
def test_frozen_members_are_not_touched_and_the_others_go_on(kernel):
    configs = [
        SGDConfig(lr=0.05, momentum=0.9),
        AdamConfig(),
        SGDConfig(lr=0.05, momentum=0.9),
        AdamConfig(),
        RMSpropConfig(),
        AdagradConfig(),
    ]
    configs = [cfg.model_copy(update={"implementation": kernel}) for cfg in configs]
    schedules, clips = [ConstantSchedule()] * 6, [None] * 6
    params0, grads = start(6, torch.float32), gradients(6, torch.float32)
    stack = Stack(configs, schedules, clips, params0)
    stack.opt.freeze(torch.tensor([False, False, False, False, False, True]))  # before its first step
    stack.run(grads, 10)
    frozen = torch.tensor([False, True, True, False, False, True])  # members 1 and 2 diverge at step 10
    stack.opt.freeze(frozen)
    at_freeze = [p.detach()[frozen].clone() for p in stack.params]
    state_at_freeze = state_copy(stack.opt)
    stack.run(grads, STEPS - 10)
    for p, before in zip(stack.params, at_freeze):
        assert torch.equal(p.detach()[frozen], before)
    assert torch.equal(stack.params[0].detach()[5], params0[0][5])
    for kind, saved in zip(stack.opt.kinds, state_at_freeze["kinds"]):
        rows = [r for r, m in enumerate(kind.members) if frozen[m]]
        assert torch.equal(kind.step[rows], saved["step"][rows])
        for name, tensors in kind.state.items():
            assert all(torch.equal(t[rows], s[rows]) for t, s in zip(tensors, saved["state"][name]))
    check_members(stack, configs, schedules, clips, params0, grads, torch.float32, skip={1, 2, 5})


def state_copy(opt: StackedOptimizer) -> dict:
    """The optimizer's state through a checkpoint's bytes."""
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trip_continues_bit_for_bit():
    configs = MATRIX[::3]
    schedules = [SCHEDULES[i % len(SCHEDULES)] for i in range(len(configs))]
    schedules = [type(s)(**{**s.model_dump(), "warmup_steps": 15}) if i % 2 else s for i, s in enumerate(schedules)]
    clips = [[None, 2.0][i % 2] for i in range(len(configs))]
    params0, grads = start(len(configs), torch.float32), gradients(len(configs), torch.float32)
    whole = Stack(configs, schedules, clips, params0)
    whole.run(grads, STEPS)
    first = Stack(configs, schedules, clips, params0)
    first.run(grads, 12)
    first.opt.freeze(torch.arange(len(configs)) == 4)
    whole_frozen = Stack(configs, schedules, clips, params0)  # the same freeze, uninterrupted
    whole_frozen.run(grads, 12)
    whole_frozen.opt.freeze(torch.arange(len(configs)) == 4)
    whole_frozen.run(grads, STEPS - 12)
    saved, saved_lr = state_copy(first.opt), first.lr.state_dict()
    resumed = Stack(configs, schedules, clips, [p.detach() for p in first.params])
    resumed.opt.load_state_dict(saved)
    resumed.lr.load_state_dict(saved_lr)
    resumed.steps = 12
    resumed.run(grads, STEPS - 12)
    assert all(torch.equal(a, b) for a, b in zip(resumed.params, whole_frozen.params))
    assert all(torch.equal(a, b) for a, b in zip(resumed.lrs, whole_frozen.lrs[12:]))
    assert not torch.equal(whole.params[0][4], whole_frozen.params[0][4])


def test_state_dict_refuses_other_members():
    params0 = start(2, torch.float32)
    opt = StackedOptimizer([nn.Parameter(p) for p in params0], [SGDConfig(), AdamConfig()])
    other = StackedOptimizer([nn.Parameter(p) for p in params0], [SGDConfig(), AdamConfig(eps=1e-6)])
    with pytest.raises(ValueError, match="other members or settings"):
        other.load_state_dict(opt.state_dict())


def test_parameters_must_stack_one_row_per_config():
    with pytest.raises(ValueError, match=r"\(M, \*shape\) with M = 3"):
        StackedOptimizer([nn.Parameter(torch.zeros(2, 4))], [SGDConfig()] * 3)


@pytest.mark.parametrize(
    "cfg",
    [
        SGDConfig(lr=0.05, momentum=0.9, nesterov=True),
        SGDConfig(),
        AdagradConfig(lr_decay=0.1, initial_accumulator_value=0.1),
        RMSpropConfig(centered=True, momentum=0.9),
        AdamConfig(amsgrad=True),
        AdamWConfig(),
    ],
)
def test_one_members_state_loads_into_torch_optim_and_goes_on_as_the_solo_run(cfg):
    configs = [AdamConfig(), cfg, SGDConfig(momentum=0.5)]
    schedule = StepSchedule(step_size=1, gamma=0.5)
    schedules, clips = [ConstantSchedule(), schedule, ConstantSchedule()], [None] * 3
    params0, grads = start(3, torch.float32), gradients(3, torch.float32)
    own_grads = [[g[1] for g in s] for s in grads]
    settings = cfg.model_dump(exclude={"name", "implementation"})
    stack = Stack(configs, schedules, clips, params0)
    fresh = optimizer_class(cfg.name)([nn.Parameter(p[1].clone()) for p in params0], **settings, foreach=False)
    build_schedule(schedule, fresh, STEPS // STEPS_PER_EPOCH)  # sets initial_lr
    assert_same_state(stack.opt.member_state_dict(1, stack.lr.group(1)), fresh.state_dict())
    stack.run(grads, 12)
    _, _, _, reference = solo(cfg, schedule, None, [p[1] for p in params0], own_grads, 1, steps=12)
    state = stack.opt.member_state_dict(1, stack.lr.group(1))
    assert_same_state(state, reference.state_dict())
    # torch.optim resumed from the member's state goes on as the uninterrupted solo run
    params = [nn.Parameter(p[1].detach().clone()) for p in stack.params]
    resumed = optimizer_class(cfg.name)(params, **settings, foreach=False)
    resumed.load_state_dict(state)
    for step in range(12, STEPS):
        for opt in (resumed, reference):
            for p, g in zip(opt.param_groups[0]["params"], own_grads[step]):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(params, reference.param_groups[0]["params"]):
        assert difference(a.detach(), b.detach()) <= 1e-6


def assert_same_state(state: dict, expected: dict) -> None:
    """torch.optim state dicts alike: settings (the kernel aside), state keys and values."""
    kernel = ("foreach", "fused")  # the member's is what gdtrain picks (fused Adam on CPU); the reference's for_loop
    assert {k: v for k, v in state["param_groups"][0].items() if k not in kernel} == {
        k: v for k, v in expected["param_groups"][0].items() if k not in kernel
    }
    assert state["state"].keys() == expected["state"].keys()
    for i, entry in state["state"].items():
        assert entry.keys() == expected["state"][i].keys()
        for name, value in entry.items():
            torch.testing.assert_close(value, expected["state"][i][name], rtol=1e-6, atol=1e-7)


def test_mixed_kinds_are_split_by_the_switches_of_torchs_formula():
    configs = [
        SGDConfig(),
        SGDConfig(momentum=0.9),
        SGDConfig(momentum=0.5, weight_decay=0.1),
        AdamConfig(),
        AdamConfig(amsgrad=True),
        AdamWConfig(),
        RMSpropConfig(centered=True),
    ]
    opt = StackedOptimizer([nn.Parameter(torch.zeros(len(configs), 3))], configs)
    assert [(k.name, k.switches, k.members) for k in opt.kinds] == [
        ("sgd", (False, False), [0]),
        ("sgd", (True, False), [1, 2]),
        ("adam", (False, False), [3]),
        ("adam", (True, False), [4]),
        ("adamw", (False,), [5]),
        ("rmsprop", (False, True), [6]),
    ]


@pytest.mark.parametrize(
    "cfg", [AdamConfig(weight_decay=0.01), AdamWConfig(amsgrad=True), AdagradConfig(lr_decay=0.01)]
)
def test_members_sharing_every_setting_are_bit_for_bit_a_solo_fused_run(cfg):
    """Seeds of one config: torch's fused kernel updates their rows as it updates a solo run (gdtrain's pick)."""
    params0, grads = start(3, torch.float32), gradients(3, torch.float32)
    stack = Stack([cfg] * 3, [ConstantSchedule()] * 3, [None] * 3, params0)
    stack.run(grads, STEPS)
    for m in range(3):
        params = [nn.Parameter(p[m].clone()) for p in params0]
        opt = optimizer_class(cfg.name)(params, **cfg.model_dump(exclude={"name", "implementation"}), fused=True)
        for step in range(STEPS):
            for p, g in zip(params, grads[step]):
                p.grad = g[m].clone()
            opt.step()
        assert all(torch.equal(a[m], b) for a, b in zip(stack.params, params))


def test_members_sharing_lr_but_not_decay_are_not_given_one_decay():
    """A fused kind with one lr but several weight decays (or Adagrad lr decays) is not a shared-settings one."""
    configs = [
        AdamConfig(),
        AdamConfig(weight_decay=0.1),
        AdamWConfig(),
        AdamWConfig(weight_decay=0.1),
        AdagradConfig(),
        AdagradConfig(lr_decay=0.1),
        AdagradConfig(weight_decay=0.1),
    ]
    schedules, clips = [ConstantSchedule()] * len(configs), [None] * len(configs)
    params0, grads = start(len(configs), torch.float64), gradients(len(configs), torch.float64)
    stack = Stack(configs, schedules, clips, params0)
    assert [len(kind.members) for kind in stack.opt.kinds] == [2, 2, 3]
    stack.run(grads, STEPS)
    check_members(stack, configs, schedules, clips, params0, grads, torch.float64)
