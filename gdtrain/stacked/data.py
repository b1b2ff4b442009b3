"""The data of M stacked members: one table of rows on the device, each member's splits as indices.

Member m sees exactly its solo run's data: the same table (generated from its seed, or the image
set's files) and the same seeded split (datasets.table), and each epoch the permutation its solo
run draws from its own data-order generator. Members share rows where their solo runs would hold
equal copies (an image set's pixels for every seed; a generated set for members of one seed), so a
group of 21 MNIST runs holds the 60,000 images once. A step gathers its (M, B, D) batch by index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gdtrain.components.datasets import Table, table, table_key
from gdtrain.core.config import Config
from gdtrain.stacked.model import StackedModel, member_correct, member_losses


@dataclass(frozen=True)
class GroupData:
    """Rows shared by the members and each member's splits as row indices."""

    x: Tensor  # (P, D) float32: every row any member uses
    y: Tensor  # (P,) int64 labels or (P, T) float32 targets
    train: Tensor  # (M, n_train) int64: member m's training rows, in its solo run's order
    val: Tensor  # (M, n_val)
    n_classes: int | None
    x_test: Tensor | None = None  # (n_test, D): the same test set for every member
    y_test: Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.x.shape[1]

    def out_features(self, loss: str) -> int:
        """Model output size, as datasets.Dataset.out_features."""
        if self.n_classes is None:
            return self.y.shape[1]
        return 1 if loss == "bce" else self.n_classes


def build(configs: Sequence[Config], device: torch.device) -> GroupData:
    """The members' data on `device`; each distinct table is made once."""
    tables: dict[str, Table] = {}
    mine = []
    for config in configs:
        key = table_key(config)
        mine.append(table(config, tables.get(key)))
        tables.setdefault(key, mine[-1])
    blocks, offsets, start = [], {}, 0
    for t in mine:  # one block of rows per distinct table object
        if id(t.x) not in offsets:
            offsets[id(t.x)] = start
            blocks.append(t)
            start += len(t.x)
    x = torch.cat([t.features(t.x) for t in blocks]) if len(blocks) > 1 else blocks[0].features(blocks[0].x)
    y = torch.cat([t.y for t in blocks]) if len(blocks) > 1 else blocks[0].y
    train = torch.stack([t.train + offsets[id(t.x)] for t in mine])
    val = torch.stack([t.val + offsets[id(t.x)] for t in mine])
    first = mine[0]
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return GroupData(
        x.float().to(device),
        y.to(device),
        train.to(device),
        val.to(device),
        first.n_classes,
        move(first.x_test),
        move(first.y_test),
    )


def epoch_rows(data: GroupData, orders: Sequence[torch.Generator], batch_size: int) -> Tensor:
    """(M, n_train) each member's training rows in this epoch's order: the permutation its solo run
    draws (datasets.shuffled_batches); none is drawn when a batch is the whole set."""
    if batch_size >= data.train.shape[1]:
        return data.train
    n = data.train.shape[1]
    return torch.stack([rows[torch.randperm(n, generator=g, device=g.device)] for rows, g in zip(data.train, orders)])


def batches(data: GroupData, rows: Tensor, batch_size: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """The epoch's (M, B, D) inputs and (M, B[, T]) targets, from its `start`-th batch on. The inputs
    are gathered into one buffer, reused: a new tensor each step, past ~32 MB (64 members at batch
    256), is page-faulted in again every step. The caller is done with a batch (its backward has
    run) when it asks for the next."""
    m = rows.shape[0]
    buffer = torch.empty(m * batch_size, data.x.shape[1], dtype=data.x.dtype, device=data.x.device)
    for first in range(start * batch_size, rows.shape[1], batch_size):
        taken = rows[:, first : first + batch_size]
        n = taken.shape[1]
        x = torch.index_select(data.x, 0, taken.reshape(-1), out=buffer[: m * n])
        yield x.view(m, n, -1), data.y[taken]


@torch.no_grad()
def evaluate(
    model: StackedModel, x: Tensor, y: Tensor, rows: Tensor | None, loss: str, batch_size: int
) -> tuple[list[float], list[float] | None]:
    """Each member's mean loss and accuracy (None for mse) over its rows of (x, y) (rows (M, n)), or,
    with rows None, over all of (x, y) (the shared test set), in batches: engine.evaluate per member."""
    model.training = False
    m = model.members
    n = x.shape[0] if rows is None else rows.shape[1]
    total = torch.zeros(m, dtype=torch.float32, device=x.device)
    correct = torch.zeros(m, dtype=torch.long, device=x.device)
    for start in range(0, n, batch_size):
        if rows is None:
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            xb, yb = xb.expand(m, *xb.shape), yb.expand(m, *yb.shape)
        else:
            taken = rows[:, start : start + batch_size]
            xb, yb = x[taken], y[taken]
        out = model(xb)
        total += member_losses(loss, out, yb) * yb.shape[1]  # mean → sum over the batch
        if loss != "mse":
            correct += member_correct(loss, out, yb)
    model.training = True
    losses = (total.double() / n).tolist()
    return losses, ((correct.double() / n).tolist() if loss != "mse" else None)
