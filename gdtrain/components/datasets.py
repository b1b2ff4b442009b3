"""Datasets as tensors on the training device, and the batches the engine draws from them.

The whole dataset lives on the device; an epoch is one permutation and contiguous slices of it,
so a step costs no per-sample Python, no collate and no host-to-device copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from gdtrain.core.config import BlobsData, Config, ImageData, LinearRegressionData, MoonsData, XorData
from gdtrain.core.errors import UserError


@dataclass(frozen=True)
class Dataset:
    """Train/val (and optional test) tensors. x: (N, D) float32; y: (N,) int64 or (N, T) float32."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    n_classes: int | None  # None for regression
    x_test: Tensor | None = None
    y_test: Tensor | None = None

    @property
    def in_features(self) -> int:
        """Size of one flattened input."""
        return self.x_train.shape[1]

    def out_features(self, loss: str) -> int:
        """Model output size: regression targets, one logit per class, or one logit for bce."""
        if self.n_classes is None:
            return self.y_train.shape[1]
        return 1 if loss == "bce" else self.n_classes

    def to(self, device: torch.device) -> Dataset:
        """The same dataset with every tensor on `device`."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Dataset(
            move(self.x_train),
            move(self.y_train),
            move(self.x_val),
            move(self.y_val),
            self.n_classes,
            move(self.x_test),
            move(self.y_test),
        )


def _linear_regression(cfg: LinearRegressionData, g: torch.Generator) -> tuple[Tensor, Tensor]:
    w = torch.tensor(cfg.weight)  # (D,)
    x = torch.randn(cfg.n_samples, len(w), generator=g)  # (N, D)
    y = x @ w + cfg.bias + cfg.noise * torch.randn(cfg.n_samples, generator=g)
    return x, y.unsqueeze(1)  # (N, 1): one regression target


def _blobs(cfg: BlobsData, g: torch.Generator) -> tuple[Tensor, Tensor]:
    centres = (torch.rand(cfg.n_classes, cfg.n_features, generator=g) * 2 - 1) * cfg.center_box
    y = torch.arange(cfg.n_samples) % cfg.n_classes  # balanced classes
    x = centres[y] + cfg.cluster_std * torch.randn(cfg.n_samples, cfg.n_features, generator=g)
    return x, y


def _moons(cfg: MoonsData, g: torch.Generator) -> tuple[Tensor, Tensor]:
    n_outer = cfg.n_samples // 2
    n_inner = cfg.n_samples - n_outer
    t_outer = torch.linspace(0, math.pi, n_outer)
    t_inner = torch.linspace(0, math.pi, n_inner)
    outer = torch.stack([torch.cos(t_outer), torch.sin(t_outer)], 1)
    inner = torch.stack([1 - torch.cos(t_inner), 0.5 - torch.sin(t_inner)], 1)
    x = torch.cat([outer, inner]) + cfg.noise * torch.randn(cfg.n_samples, 2, generator=g)
    y = torch.cat([torch.zeros(n_outer, dtype=torch.long), torch.ones(n_inner, dtype=torch.long)])
    return x, y


def _xor(cfg: XorData, g: torch.Generator) -> tuple[Tensor, Tensor]:
    half = torch.rand((cfg.n_samples + 1) // 2, 2, generator=g) * 2 - 1
    x = torch.cat([half, -half])[: cfg.n_samples]  # point-symmetric: the best linear model is w = 0
    y = ((x[:, 0] > 0) != (x[:, 1] > 0)).long()  # 1 where the signs differ
    return x + cfg.noise * torch.randn(cfg.n_samples, 2, generator=g), y


SYNTHETIC: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "linear_regression": _linear_regression,
    "blobs": _blobs,
    "moons": _moons,
    "xor": _xor,
}
# Mean and std of the training pixels in [0, 1], for `normalize: standard`.
PIXEL_STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530), "kmnist": (0.1918, 0.3483)}


def _pixels(images: Tensor, cfg: ImageData) -> Tensor:
    """(N, 28, 28) uint8 → (N, 784) float32, scaled as `normalize` says."""
    x = images.reshape(len(images), -1).float()
    if cfg.normalize == "none":
        return x
    x /= 255
    if cfg.normalize == "unit":
        return x
    mean, std = PIXEL_STATS[cfg.name] if cfg.normalize == "standard" else (0.5, 0.5)
    return x.sub_(mean).div_(std)


def _check_sizes(config: Config, n_train: int, n_val: int) -> None:
    try:
        config.check_sizes(n_train, n_val)
    except ValueError as err:
        raise UserError(str(err)) from None


@dataclass(frozen=True)
class Table:
    """A dataset as rows of one table: the training and validation splits are index vectors into
    (x, y), so runs that differ only in their split (stacked members of an image set) share the rows."""

    x: Tensor  # (N, ...) every sample the splits index, as stored (an image set's uint8 pixels)
    y: Tensor
    train: Tensor  # (n_train,) int64 rows, in the order build_dataset keeps them
    val: Tensor
    n_classes: int | None
    features: Callable[[Tensor], Tensor]  # rows of x → (n, D) float32 model inputs
    x_test: Tensor | None = None
    y_test: Tensor | None = None

    def dataset(self) -> Dataset:
        """The splits as a Dataset of their own tensors (rows taken before they are made float: less memory)."""
        return Dataset(
            self.features(self.x[self.train]),
            self.y[self.train],
            self.features(self.x[self.val]),
            self.y[self.val],
            self.n_classes,
            self.x_test,
            self.y_test,
        )


def _images(config: Config, g: torch.Generator, like: Table | None) -> Table:
    """An MNIST-family set: a seeded validation slice of the training images, and the test set;
    with `like` (the same set, another seed) its images, so only the split is drawn."""
    cfg = config.data
    if like is not None:
        order = torch.randperm(len(like.x), generator=g)
        return Table(
            like.x,
            like.y,
            order[cfg.val_size :],
            order[: cfg.val_size],
            cfg.n_classes,
            like.features,
            like.x_test,
            like.y_test,
        )
    from gdtrain.components import idx  # the IDX reader is needed only for image sets

    root = idx.data_root(cfg.root)
    if cfg.download:
        idx.download(cfg.name, root)
    train_images, train_labels, test_images, test_labels = idx.load(cfg.name, root)
    _check_sizes(config, len(train_images) - cfg.val_size, cfg.val_size)
    order = torch.randperm(len(train_images), generator=g)
    return Table(
        train_images,
        train_labels,
        order[cfg.val_size :],
        order[: cfg.val_size],
        cfg.n_classes,
        lambda images: _pixels(images, cfg),
        _pixels(test_images, cfg),
        test_labels,
    )


def table(config: Config, like: Table | None = None) -> Table:
    """The configured dataset on the CPU as one table and its splits: generated or read, split by the
    experiment seed; `like`, a table of the same table_key, is reused instead of made again."""
    g = torch.Generator().manual_seed(config.experiment.seed)
    if isinstance(config.data, ImageData):
        return _images(config, g, like)
    if like is not None:
        return like
    x, y = SYNTHETIC[config.data.name](config.data, g)
    n_val = round(len(x) * config.data.val_fraction)
    order = torch.randperm(len(x), generator=g)
    return Table(x, y, order[n_val:], order[:n_val], config.data.n_classes, Tensor.float)


def table_key(config: Config) -> str:
    """What a table's rows depend on: the data section, and for generated sets the seed too (an
    image set's pixels are the same for every seed; only its split differs)."""
    seed = None if isinstance(config.data, ImageData) else config.experiment.seed
    return f"{config.data.model_dump_json()} {seed}"


def build_dataset(config: Config) -> Dataset:
    """The configured dataset on the CPU: generated or read, split by the experiment seed."""
    return table(config).dataset()


def shuffled_batches(x: Tensor, y: Tensor, batch_size: int, g: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of batches: a permutation drawn from `g`, then contiguous slices (views)."""
    if batch_size >= len(x):  # batch gradient descent: order does not matter
        yield x, y
        return
    order = torch.randperm(len(x), generator=g, device=g.device)
    x, y = x[order], y[order]  # one gather per epoch instead of one per step
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
