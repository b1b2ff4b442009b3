"""Which points of a sweep or study train together as one stacked group (gdtrain/stacked/loop.py), and how many.

Points are compatible when their configs are equal but for what each member may have of its own:
the seed (initialisation, data order, validation split), the optimizer and all its settings, the
schedule and warm-up, gradient clipping, early stopping (patience, min_delta) and keep_last. So a
group shares the model's architecture and sizes, the data, loss, precision, batch size and number
of steps; interrupted points join a group only with points stopped at the same step. fp16,
torch.compile and function descents always train alone (stacked/loop.py says why); every optimizer
stacks, those without a vectorised rule through their own solo optimizer per member (stacked/generic.py). Grouping never
changes what a run computes, only how fast: a group too large for the device's free memory, or
for `--batch-runs`, is split into groups of near-equal size, and members using the same optimizer
rule sit next to each other (stacked/optimizer.py updates them through a view instead of a gather).
A member computes the same in any group, up to summation order: its rows of each batched matmul,
its loss, dropout masks (its own generator), gradient norm and update are its own, so a group of 2
or of 21, or of one (a compatible point left over still trains on the stacked engine), agrees with
another in the 7th-8th digit, and bit for bit when the groups are the same. So a resume that
regroups the points (other jobs, other memory, points finished meanwhile) continues each as the
uninterrupted sweep would have (tests/test_stacked.py; a run alone, the solo engine, differs as much).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from gdtrain.core import runs
from gdtrain.core.config import Config, FunctionData, OptimizerConfig, to_dict, validate
from gdtrain.training import memory
from gdtrain.training.checkpoints import STEP_FILE, step_of
from gdtrain.training.tasks import Task

if TYPE_CHECKING:
    import torch

FREE = (
    "experiment.seed",
    "optimizer.",
    "schedule.",
    "train.grad_clip",
    "train.patience",
    "train.min_delta",
    "train.keep_last",
)


def key(config: Config, task: Task) -> str | None:
    """What members of one group share, the step they continue from included; None for a point
    that always trains alone."""
    shared = compatible(config)
    return None if shared is None else shared + f" at step {resumed_step(task)}"


def compatible(config: Config) -> str | None:
    """What points that could train together share, wherever they stand; None: always alone."""
    train = config.train
    if isinstance(config.data, FunctionData) or train.precision == "fp16" or train.compile:
        return None
    return json.dumps(
        {k: v for k, v in runs.flatten(to_dict(config)).items() if not k.startswith(FREE)}, sort_keys=True
    )


def resumed_step(task: Task) -> int:
    """The step of the checkpoint the task continues from; 0 when it starts anew."""
    if task.resume is None:
        return 0
    return task.resume_step if task.resume_step is not None else max(checkpoint_steps(task), default=0)


def checkpoint_steps(task: Task) -> set[int]:
    """The steps of the checkpoints in the run folder the task continues."""
    folder = Path(task.resume) / "checkpoints"
    return {step_of(p) for p in (folder.iterdir() if folder.is_dir() else []) if STEP_FILE.fullmatch(p.name)}


def align(tasks: list[Task], configs: dict[str, Config]) -> list[Task]:
    """Interrupted points that could train together continue from the newest step all of them have
    a checkpoint of, when there is one. A group killed while it wrote its members' checkpoints
    left some at the new step and some at the one before (stacked.loop keeps the older one until
    every member has the new): continued together, they compute what the uninterrupted group did."""
    together: dict[str, list[Task]] = {}
    for task in tasks:
        shared = compatible(configs[task.name])
        if task.resume is not None and shared is not None:
            together.setdefault(shared, []).append(task)
    step: dict[str, int] = {}
    for peers in together.values():
        common = set.intersection(*(checkpoint_steps(t) for t in peers))
        if len(peers) > 1 and common:
            step |= {t.name: max(common) for t in peers}
    return [dataclasses.replace(t, resume_step=step[t.name]) if t.name in step else t for t in tasks]


def member_bytes(config: Config, sizes: memory.Sizes, batch_size: int) -> int:
    """Memory one more member adds to a group: its weights, gradients, best copy and optimizer state,
    the optimizer's scratch (two tensors per parameter, two more when its rows are gathered), its
    batch's and evaluation's activations, and its split and epoch order as indices."""
    _, model, train, evaluation = memory.estimate(config, sizes, batch_size)
    params = int(model.bytes // (memory.FLOAT * (3 + memory.state_copies(config.optimizer))))
    indices = (2 * sizes.n_train + sizes.n_val) * memory.LABEL
    return model.bytes + 4 * params * memory.FLOAT + max(train.bytes, evaluation.bytes) + indices


def fit(config: Config, device: torch.device) -> int | None:
    """How many members like `config` fit in the device's free memory together; None when unknown.
    The data counts once: members share it (gdtrain/stacked/data.py)."""
    sizes = memory.data_sizes(config)
    batch_size = sizes.n_train if config.train.batch_size == "full" else config.train.batch_size
    free = memory.available(device)
    if free is None:
        return None
    data = memory.estimate(config, sizes, batch_size)[0].bytes
    room = (free[0] - memory.OVERHEAD) / memory.MARGIN - data
    return max(1, int(room // member_bytes(config, sizes, batch_size)))


def _order(cfg: OptimizerConfig, device: torch.device) -> tuple:
    """Where a member sits in its group: by its rule's kind, the members with their own optimizer after."""
    from gdtrain.stacked.generic import vectorised
    from gdtrain.stacked.optimizer import kind_key

    return (False, kind_key(cfg, device)) if vectorised(cfg) else (True, cfg.name)


def plan(tasks: list[Task], batch_runs: int | None, jobs: int = 1) -> list[list[Task]]:
    """The tasks as groups, in the order their first point comes: compatible points together, at most
    `batch_runs` (None: as many as fit) and, with `jobs` processes, split so that each has a group."""
    from gdtrain.training.device import resolve_device

    configs = {task.name: validate(task.raw, task.name) for task in tasks}
    tasks = align(tasks, configs) if batch_runs != 1 else tasks
    by_key: dict[str, list[Task]] = {}
    alone: list[tuple[int, list[Task]]] = []
    first: dict[str, int] = {}
    for i, task in enumerate(tasks):
        k = key(configs[task.name], task) if batch_runs != 1 else None
        if k is None:
            alone.append((i, [task]))
            continue
        first.setdefault(k, i)
        by_key.setdefault(k, []).append(task)
    units = list(alone)
    for k, members in by_key.items():
        config = configs[members[0].name]
        device = resolve_device(config.train.device)
        cap = min(x for x in (batch_runs, fit(config, device), len(members)) if x)
        if jobs > 1:
            cap = min(cap, math.ceil(len(members) / jobs))
        # a stable sort: within a kind, points keep the grid's order; members without a rule go last
        members.sort(key=lambda t: _order(configs[t.name].optimizer, device))
        count = math.ceil(len(members) / cap)  # near-equal sizes: 21 capped at 8 is 7 + 7 + 7
        members = [dataclasses.replace(task, stacked=True) for task in members]
        for j in range(count):
            units.append((first[k], members[j * len(members) // count : (j + 1) * len(members) // count]))
    return [unit for _, unit in sorted(units, key=lambda u: u[0])]
