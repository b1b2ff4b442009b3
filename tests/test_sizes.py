"""Sizes that cannot fit: a run whose data, model, optimizer state or batches would not fit in the
device's memory is refused before anything is allocated, in one line that gives the estimate, the
limit and the key to lower; exit 2, no run folder. The limit is patched low, so no test allocates
what it refuses; the data-file cases are in tests/test_mnist.py."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clihelp import gdtrain, one_error, write
from gdtrain.components.optimizers import build_optimizer
from gdtrain.core.config import load_config, validate
from gdtrain.core.errors import UserError
from gdtrain.training import memory, recipe

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SMOKE = CONFIGS / "smoke.yaml"
LIMIT = 1_000_000  # bytes: less than any run needs


@pytest.fixture
def low_limit(monkeypatch):
    """The device has LIMIT bytes free; building the data would fail the test."""
    monkeypatch.setattr(memory, "available", lambda device: (LIMIT, "patched"))

    def allocates(config):
        raise AssertionError("the dataset was built: the check must come before any allocation")

    monkeypatch.setattr(recipe, "build_dataset", allocates)


def refused(tmp_path: Path, *overrides: str, config: Path = SMOKE) -> str:
    """The one error line of `gdtrain run` on `config` with `overrides`, having made no run folder."""
    sets = [arg for o in overrides for arg in ("--set", o)]
    line = one_error(gdtrain("run", config, *sets, "--runs-dir", tmp_path / "runs", "--quiet"))
    assert not (tmp_path / "runs").exists()
    return line


# Each size key, at a size that fits any machine (so the test, reverted, trains in seconds) but not
# in LIMIT; the part it makes the largest, and the key the message tells you to lower.
CASES = {
    "n_samples": (["data.n_samples=100000"], "the data", "data.n_samples 100000 × 2 features", "data.n_samples"),
    "n_features": (["data.n_features=20000"], "the data", "data.n_samples 200 × 20000 features", "data.n_features"),
    "n_classes": (["data.n_classes=100000"], "an evaluation batch", "2 → 16 → 100000", "data.n_classes"),
    "hidden_sizes": (
        ["model.hidden_sizes=[2000, 2000]"],
        "the model",
        "2 → 2000 → 2000 → 3 is 4014003 parameters",
        "model.hidden_sizes",
    ),
    "batch_size": (
        ["data.n_samples=5000", "model.hidden_sizes=[1024]", "train.batch_size=full"],
        "a training batch",
        "train.batch_size 4000 × 2 → 1024 → 3",
        "train.batch_size",
    ),
    "eval_batch_size": (
        ["data.n_samples=50000", "data.val_fraction=0.5", "model.hidden_sizes=[512]", "train.eval_batch_size=25000"],
        "an evaluation batch",
        "train.eval_batch_size 25000 ×",
        "train.eval_batch_size",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_size_key_is_refused_with_the_estimate_the_limit_and_the_key(tmp_path, low_limit, case):
    overrides, part, what, key = case
    line = refused(tmp_path, *overrides, "train.epochs=1")
    assert line.startswith(f"error: {part} does not fit in memory: ") and what in line
    assert " ~" in line and f"but {memory.size(LIMIT)} is available (patched)" in line
    fix = line.rsplit("; ", 1)[1]
    assert fix.startswith("lower ") and key in fix.removeprefix("lower ").split(" or ")


# Sizes no machine holds, each far past its RAM in one allocation (so the test, reverted, fails at
# once instead of allocating); sizes near 2**63 are counted in Python ints and never overflow.
ABSURD = {
    "n_samples": (["data.n_samples=10000000000000"], "data.n_samples"),
    "n_samples_2**63": ([f"data.n_samples={2**63 - 1}"], "data.n_samples"),
    "n_features": ([f"data.n_features={2**62}"], "data.n_features"),
    "n_classes": ([f"data.n_classes={2**62}"], "data.n_classes"),
    "hidden_sizes": (["model.hidden_sizes=[1000000, 1000000]"], "model.hidden_sizes"),
    "batch_size": (
        ["data.n_samples=10000000000", "model.hidden_sizes=[10000]", "train.batch_size=full"],
        "train.batch_size",
    ),
}


@pytest.mark.parametrize("case", ABSURD.values(), ids=ABSURD.keys())
def test_absurd_sizes_are_refused_at_the_real_limit(tmp_path, case):
    overrides, key = case
    line = refused(tmp_path, *overrides)
    assert "does not fit in memory" in line and "is available (" in line
    assert key in line.rsplit("; ", 1)[1]


def test_a_run_that_fits_its_limit_trains(tmp_path, monkeypatch):
    config = load_config(SMOKE)
    sizes = memory.data_sizes(config)
    need = memory.total(memory.estimate(config, sizes, config.train.batch_size))
    monkeypatch.setattr(memory, "available", lambda device: (need, "patched"))
    _, outcome = recipe.run(config, tmp_path / "runs", quiet=True)
    assert outcome.status == "finished"


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(CONFIGS.glob("*.yaml")) if "mnist" not in p.name and "path_" not in p.name],
    ids=lambda p: p.stem,
)
def test_shipped_synthetic_configs_need_little(path):
    """A machine with 512 MB free runs every shipped synthetic config (MNIST: tests/test_mnist.py)."""
    config = load_config(path)
    sizes = memory.data_sizes(config)
    batch_size = sizes.n_train if config.train.batch_size == "full" else config.train.batch_size
    assert memory.total(memory.estimate(config, sizes, batch_size)) < 512_000_000


def test_every_cpu_process_holds_a_whole_copy(monkeypatch):
    config = load_config(SMOKE, ["data.n_samples=1000000"])
    sizes = memory.data_sizes(config)
    need = memory.total(memory.estimate(config, sizes, 16))
    monkeypatch.setattr(memory, "available", lambda device: (need * 3 // 2, "patched"))
    memory.check(config, sizes, 16, torch.device("cpu"), processes=1)
    with pytest.raises(UserError, match=r"in all for 2 processes"):
        memory.check(config, sizes, 16, torch.device("cpu"), processes=2)


@pytest.mark.parametrize(
    ("name", "amsgrad", "momentum", "centered", "copies"),
    [
        ("sgd", None, 0.0, None, 0),
        ("sgd", None, 0.9, None, 1),
        ("adagrad", None, None, None, 1),
        ("rmsprop", None, 0.0, False, 1),
        ("rmsprop", None, 0.9, True, 3),
        ("adam", False, None, None, 2),
        ("adamw", True, None, None, 3),
    ],
)
def test_optimizer_state_is_counted_as_torch_keeps_it(name, amsgrad, momentum, centered, copies):
    settings = {
        k: v for k, v in (("amsgrad", amsgrad), ("momentum", momentum), ("centered", centered)) if v is not None
    }
    config = validate({"optimizer": {"name": name, **settings}}, "test")
    assert memory.state_copies(config.optimizer) == copies
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(config.optimizer, model)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    kept = sum(
        isinstance(t, torch.Tensor) and t.shape == p.shape
        for p in model.parameters()
        for t in optimizer.state[p].values()
    )
    assert kept == 2 * copies  # two parameters, weight and bias


def test_check_prints_the_estimate_as_a_comment(tmp_path):
    result = gdtrain("check", SMOKE)
    assert result.exit_code == 0
    last = result.stdout.splitlines()[-1]
    assert last.startswith("# memory: ~") and "data " in last and "model " in last
    image = gdtrain("check", write(tmp_path, "data: {name: mnist}\ntrain: {loss: cross_entropy}\n"))
    assert image.stdout.splitlines()[-1] == "# memory: estimated from the IDX files' headers when a run starts"


# --- the limit ------------------------------------------------------------------------------------


def cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake /proc/self/cgroup and /sys/fs/cgroup tree."""
    (tmp_path / "cgroup").write_text(proc)
    for name, text in files.items():
        (tmp_path / "sys" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys" / name).write_text(text)
    return tmp_path / "cgroup", tmp_path / "sys"


@pytest.mark.parametrize(
    ("proc", "files", "free"),
    [
        ("0::/job\n", {"job/memory.max": "3000000\n", "job/memory.current": "1000000\n"}, 2_000_000),  # v2
        (
            "0::/job\n",
            {
                "memory.max": "5000000\n",
                "memory.current": "4000000\n",  # the parent binds
                "job/memory.max": "max\n",
                "job/memory.current": "5\n",
            },
            1_000_000,
        ),
        ("0::/\n", {"memory.max": "max\n", "memory.current": "1\n"}, None),
        (
            "4:memory:/job\n0::/\n",
            {
                "memory/job/memory.limit_in_bytes": "3000000\n",  # v1
                "memory/job/memory.usage_in_bytes": "500000\n",
            },
            2_500_000,
        ),
        (
            "4:memory:/job\n",
            {
                "memory/job/memory.limit_in_bytes": "9223372036854771712\n",
                "memory/job/memory.usage_in_bytes": "500000\n",
            },
            None,
        ),
    ],
)
def test_the_cgroup_limit_is_read_from_v1_and_v2(tmp_path, proc, files, free):
    assert memory.cgroup_free(*cgroup(tmp_path, proc, files)) == free


def test_the_host_limit_is_memavailable_on_linux():
    free, where = memory.host_available()
    assert 0 < free and where


def test_ulimit_v_is_a_limit_too():
    """A real process under `ulimit -v`: what is left under it is what may be allocated."""
    code = "from gdtrain.training.memory import host_available; print(*host_available(), sep='|')"
    limit = 300_000_000  # bytes: the interpreter with gdtrain.memory takes about 40 MB of it

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=lower, check=True
    ).stdout
    free, where = out.strip().split("|")
    assert 0 < int(free) < limit and where == "left under ulimit -v"
