"""What a run will need in memory, estimated from the config and the data's sizes before anything is
allocated, and what the device has free: a run that cannot fit is refused with one line that gives
both figures and the key to lower, instead of failing, or stalling a machine without swap, halfway
through allocating it.

Sizes come from the config, or for image files from their IDX headers, and are counted in Python
ints, so no size overflows. The figures are upper bounds: benchmarks/memory.py compares them with
the peak RSS of real runs.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gdtrain.core.config import (
    BlobsData,
    Config,
    FunctionData,
    ImageData,
    LinearModel,
    LinearRegressionData,
    MLPModel,
    OptimizerConfig,
)
from gdtrain.core.errors import UserError

if TYPE_CHECKING:  # torch is imported only when a run starts; `gdtrain check` stays quick
    import torch

FLOAT, LABEL = 4, 8  # bytes: data, weights, state and activations are float32; class labels int64
NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as about 2**63
PER_LAYER = (
    24_000  # bytes of each Linear beyond its numbers: module, tensors, autograd and optimizer entries (measured 16.5k)
)
MARGIN = 1.2  # on top of the estimate: allocator slack, and memory others take while the run starts
OVERHEAD = 128_000_000  # bytes a run takes after it starts besides its tensors (measured 91-93 MB)


@dataclass(frozen=True)
class Sizes:
    """How large the dataset will be, known before any of it is made."""

    n_train: int
    n_val: int
    n_test: int  # 0: no test set
    in_features: int
    targets: int | None  # float32 regression targets per sample; None: one int64 class label
    n_classes: int | None
    source: str  # what sets the sizes, for messages: config keys or the files' headers
    sample_keys: tuple[str, ...]  # what sets the number of samples, e.g. ("data.n_samples",)
    feature_key: str | None  # what sets in_features; None: fixed (moons and xor are 2-D)

    def out_features(self, loss: str) -> int:
        """Model outputs, as Dataset.out_features gives them."""
        if self.n_classes is None:
            return self.targets or 1
        return 1 if loss == "bce" else self.n_classes


def data_sizes(config: Config) -> Sizes:
    """The sizes build_dataset will make: from the config, or from the IDX headers (read nothing else)."""
    cfg = config.data
    if isinstance(cfg, ImageData):
        from gdtrain.components import idx

        root = idx.data_root(cfg.root)
        if cfg.download:
            idx.download(cfg.name, root)
        train, test, paths = idx.shapes(cfg.name, root)
        try:
            config.check_sizes(train[0] - cfg.val_size, cfg.val_size)
        except ValueError as err:
            raise UserError(str(err)) from None
        pixels = "×".join(map(str, train[1:]))
        return Sizes(
            train[0] - cfg.val_size,
            cfg.val_size,
            test[0],
            math.prod(train[1:]),
            None,
            cfg.n_classes,
            f"{paths[0]} and {paths[2].name}: {train[0]} + {test[0]} images of {pixels} pixels",
            (f"the number of images in {paths[0].parent}",),
            "the image size",
        )
    n_val = round(cfg.n_samples * cfg.val_fraction)
    if isinstance(cfg, LinearRegressionData):
        features, feature_key = len(cfg.weight), "the length of data.weight"
    elif isinstance(cfg, BlobsData):
        features, feature_key = cfg.n_features, "data.n_features"
    else:
        features, feature_key = 2, None  # moons and xor are 2-D
    targets = 1 if cfg.task == "regression" else None
    return Sizes(
        cfg.n_samples - n_val,
        n_val,
        0,
        features,
        targets,
        cfg.n_classes,
        f"data.n_samples {cfg.n_samples} × {features} features",
        ("data.n_samples",),
        feature_key,
    )


@dataclass(frozen=True)
class Part:
    """One share of a run's memory: its bytes, how they are counted and which keys make it smaller."""

    name: str
    bytes: int
    what: str
    fix: str


def state_copies(cfg: OptimizerConfig) -> float:
    """Tensors of each parameter's size that the optimizer keeps as state, measured (probe_state)."""
    return probe_state(json.dumps(cfg.model_dump(mode="json"), sort_keys=True))


def probe_state(cfg_json: str) -> float:
    """_probe_state with the global RNG untouched: a run's initial weights never depend on whether
    this process probed the optimizer already (the answer is cached)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return _probe_state(cfg_json)


@functools.cache
def _probe_state(cfg_json: str) -> float:
    """Build the optimizer on a 64 x 64 weight and its bias, take one step, and count the floats its
    state holds per parameter element (Adam 2, SGD with momentum 1, Adafactor's row and column
    averages a fraction): a user's class is sized as torch's are. Scalars (step counts) do not count."""
    import torch

    from gdtrain.components.optimizers import build_optimizer, parts, set_mode
    from gdtrain.core.config import validate

    cfg = validate({"optimizer": json.loads(cfg_json)}, "optimizer").optimizer
    model = torch.nn.Linear(64, 64)
    optimizer = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    set_mode(optimizer, training=True)
    try:
        optimizer.step()
    except Exception as err:  # a user's class: its first step fails here, before any folder
        text = " ".join(str(err).split())
        raise UserError(
            f"optimizer: {cfg.name}'s first step on a test tensor raised {type(err).__name__}: {text}"
        ) from None
    held = sum(
        t.numel()
        for part in parts(optimizer)
        for state in part.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 1
    )
    return held / sum(p.numel() for p in model.parameters())


def widths(config: Config, sizes: Sizes) -> list[int]:
    """Layer widths from input to output, e.g. [784, 128, 10]."""
    hidden = [] if isinstance(config.model, LinearModel) else config.model.hidden_sizes
    return [sizes.in_features, *hidden, sizes.out_features(config.train.loss)]


def _width_keys(config: Config, sizes: Sizes, layers: list[int], at: list[int]) -> list[str]:
    """What sets the widths at positions `at` of `layers` (a fixed width has no key)."""
    keys = []
    for i in at:
        if i == 0 and sizes.feature_key is not None:
            keys.append(sizes.feature_key)
        elif 0 < i < len(layers) - 1:
            keys.append("model.hidden_sizes")
        elif i == len(layers) - 1 and isinstance(config.data, BlobsData) and config.train.loss != "bce":
            keys.append("data.n_classes")
    return keys


def _fix(*keys: str | None) -> str:
    """`lower a or b`, each key once."""
    return "lower " + " or ".join(dict.fromkeys(key for key in keys if key))


def estimate(config: Config, sizes: Sizes, batch_size: int) -> list[Part]:
    """The run's memory in four parts: the data, the model (with gradients and optimizer state), and
    the activations of a training batch and of an evaluation batch, which are never alive together."""
    layers = widths(config, sizes)
    shown = " → ".join(map(str, layers))
    n = sizes.n_train + sizes.n_val + sizes.n_test
    row = sizes.in_features * FLOAT + (sizes.targets * FLOAT if sizes.targets else LABEL)  # one sample's x and y
    # Building peaks at three copies of a generated set (blobs: centres[y], noise, their sum; then
    # the split), or for image files at their uint8 bytes twice beside the float32 set; each epoch
    # adds a shuffled copy of the training set (not for full batches). Permutations: int64 indices.
    if isinstance(config.data, ImageData):
        building = n * (row + 2 * sizes.in_features + LABEL)
    else:
        building = n * (3 * row + LABEL)
    shuffled = 0 if batch_size >= sizes.n_train else sizes.n_train * (row + LABEL)
    data = Part(
        "the data",
        max(building, n * row + shuffled),
        f"{sizes.source} needs ~{{size}} (x float32 and y of every split, with the copies made while "
        "building or shuffling)",
        _fix(*sizes.sample_keys, sizes.feature_key),
    )

    bias = not isinstance(config.model, LinearModel) or config.model.bias
    params = sum(a * b + b * bias for a, b in zip(layers, layers[1:]))
    state = state_copies(config.optimizer)
    big = max(range(len(layers) - 1), key=lambda i: layers[i] * layers[i + 1])  # the largest weight matrix
    model = Part(
        "the model",
        int(params * FLOAT * (3 + state)) + (len(layers) - 1) * PER_LAYER,
        f"{shown} is {params} parameters and needs ~{{size}} (weights, gradients, a copy of the best "
        f"and {config.optimizer.name}'s {state:.3g} state tensors, float32)",
        _fix(*_width_keys(config, sizes, layers, [big, big + 1])),
    )

    # Forward keeps each layer's output for backward (dropout a mask and its output too), backward
    # holds two layers' gradients at a time; evaluation holds a layer's input, output and activation.
    wide = max(range(len(layers)), key=lambda i: layers[i])
    dropout = isinstance(config.model, MLPModel) and config.model.dropout > 0
    saved = sum(layers) * (3 if dropout else 2) + 2 * max(layers)
    train = Part(
        "a training batch",
        batch_size * saved * FLOAT,
        f"train.batch_size {batch_size} × {shown} activations need ~{{size}} (float32, forward and backward)",
        _fix("train.batch_size", *_width_keys(config, sizes, layers, [wide])),
    )
    eval_batch = min(config.train.eval_batch_size, max(sizes.n_val, sizes.n_test))
    pair = max(a + b for a, b in zip(layers, layers[1:]))
    evaluation = Part(
        "an evaluation batch",
        eval_batch * (pair + max(layers) + 2 * layers[-1]) * FLOAT,
        f"train.eval_batch_size {eval_batch} × {shown} activations need ~{{size}} (float32)",
        _fix("train.eval_batch_size", *_width_keys(config, sizes, layers, [wide])),
    )
    return [data, model, train, evaluation]


def total(parts: list[Part]) -> int:
    """Bytes the run may take at its peak: every part (only the larger batch) plus a margin and the
    fixed cost of a run (TensorBoard's writer, modules imported once training starts)."""
    data, model, train, evaluation = parts
    return int((data.bytes + model.bytes + max(train.bytes, evaluation.bytes)) * MARGIN) + OVERHEAD


def _proc_bytes(path: str, key: str) -> int | None:
    """A `kB` figure of a /proc file (MemAvailable in /proc/meminfo, VmSize in /proc/self/status), in bytes."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith(f"{key}:")), None)


def cgroup_free(proc: Path = Path("/proc/self/cgroup"), mount: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes left under the tightest cgroup memory limit over this process (v2 or v1), or None."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    free = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            root, files = mount, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            root, files = mount / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        folder = root / path.strip("/")
        for level in [folder, *folder.parents]:  # a parent's limit binds too; in a container only the root exists
            try:
                limit, used = ((level / name).read_text().strip() for name in files)
            except OSError:
                limit, used = "max", "0"
            if limit.isdigit() and int(limit) < NO_LIMIT:
                free.append(int(limit) - int(used))
            if level == root:
                break
    return min(free, default=None)


def host_available() -> tuple[int, str] | None:
    """Bytes this process can still allocate on the host, and which limit says so; None if unknown."""
    limits = []
    if (avail := _proc_bytes("/proc/meminfo", "MemAvailable")) is not None:
        limits.append((avail, "MemAvailable in /proc/meminfo"))
    elif hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:  # no /proc (macOS): all of the RAM
        limits.append((os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the machine's memory"))
    if (free := cgroup_free()) is not None:
        limits.append((max(free, 0), "left under the cgroup's memory limit"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and (used := _proc_bytes("/proc/self/status", "VmSize")) is not None:
        limits.append((max(soft - used, 0), "left under ulimit -v"))
    return min(limits, default=None)


def available(device: torch.device) -> tuple[int, str] | None:
    """Bytes free for the run on `device`, and where that figure comes from; None if unknown."""
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device}"
    return host_available()


def size(n: int) -> str:
    """Bytes for a message: `3.2 GB`, `870 kB`."""
    for unit, scale in (("EB", 1e18), ("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def check(config: Config, sizes: Sizes, batch_size: int, device: torch.device, processes: int = 1) -> None:
    """Refuse, in one line naming the largest part and the keys to lower, a run that needs more memory
    than `device` has free. Each of `processes` on a CPU host holds a whole copy of the run."""
    parts = estimate(config, sizes, batch_size)
    limits = [(total(parts) * (processes if device.type == "cpu" else 1), available(device), parts)]
    if device.type == "cuda":  # the data is built on the host, then copied to the GPU
        limits.append(((int(parts[0].bytes * MARGIN) + OVERHEAD) * processes, host_available(), parts[:1]))
    for need, free, counted in limits:
        if free is not None and need > free[0]:
            largest = max(counted, key=lambda part: part.bytes)
            copies = f" for {processes} processes" if processes > 1 else ""
            raise UserError(
                f"{largest.name} does not fit in memory: {largest.what.format(size=size(largest.bytes))}; "
                f"the run needs ~{size(need)} in all{copies}, margin included, but {size(free[0])} is "
                f"available ({free[1]}); {largest.fix}"
            )


def describe(config: Config) -> str | None:
    """`# memory: ...`, the estimate for `gdtrain check`; None when there is nothing to estimate."""
    if isinstance(config.data, FunctionData):
        return None
    if isinstance(config.data, ImageData):
        return "# memory: estimated from the IDX files' headers when a run starts"
    sizes = data_sizes(config)
    batch_size = sizes.n_train if config.train.batch_size == "full" else config.train.batch_size
    parts = estimate(config, sizes, batch_size)
    shares = ", ".join(f"{part.name.split(' ', 1)[1]} {size(part.bytes)}" for part in parts)
    return (
        f"# memory: ~{size(total(parts))} at the peak, margin included ({shares}); "
        "a run is refused when its device has less free"
    )
