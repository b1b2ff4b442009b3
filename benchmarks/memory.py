"""gdtrain/training/memory.py's estimate against the measured peak memory of real runs.

    python benchmarks/memory.py [--data-root DIR]

Each case runs in a fresh process: its peak RSS (VmHWM) is read at the end, less its RSS when
recipe.build starts (where the check runs, torch already imported). `estimate` is the sum of the
parts (the larger batch only) plus the 128 MB a run takes besides its tensors; `the check` adds the
20% margin: a run is refused when that is more than is free. Prints a markdown table; about 6
CPU-minutes and at most ~1 GB at a time on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name → (config, overrides): three shipped configs, then runs scaled up so that each part dominates.
CASES = {
    "smoke": ("smoke", []),
    "synthetic_moons_mlp": ("synthetic_moons_mlp", []),
    "mnist_adam (1 epoch)": ("mnist_adam", ["train.epochs=1"]),
    "blobs 2M × 20, linear": (
        "smoke",
        [
            "data.n_samples=2000000",
            "data.n_features=20",
            "model={name: linear}",
            "optimizer={name: sgd}",
            "train.epochs=1",
            "train.batch_size=256",
        ],
    ),
    "moons 10M, linear": (
        "synthetic_moons_mlp",
        ["data.n_samples=10000000", "model={name: linear}", "train.epochs=1", "train.batch_size=4096"],
    ),
    "mlp [4096, 4096], adam": ("synthetic_moons_mlp", ["model.hidden_sizes=[4096, 4096]", "train.epochs=1"]),
    "full batch 800k × [64, 64]": (
        "synthetic_moons_mlp",
        ["data.n_samples=1000000", "model.hidden_sizes=[64, 64]", "train.batch_size=full", "train.epochs=2"],
    ),
    "eval batch 200k × [256]": (
        "synthetic_xor_mlp",
        [
            "data.n_samples=400000",
            "data.val_fraction=0.5",
            "model.hidden_sizes=[256]",
            "train.eval_batch_size=200000",
            "train.epochs=1",
            "train.batch_size=4096",
        ],
    ),
}


def measure(config: str, overrides: list[str]) -> None:
    """In this process: run the config, print the estimate and the measured peak as JSON."""
    from gdtrain.core.config import load_config
    from gdtrain.training import memory, recipe

    def rss(key: str) -> int:
        return next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith(f"{key}:")
        )

    cfg = load_config(ROOT / "configs" / f"{config}.yaml", overrides)
    sizes = memory.data_sizes(cfg)
    parts = memory.estimate(cfg, sizes, sizes.n_train if cfg.train.batch_size == "full" else cfg.train.batch_size)
    start: dict[str, int] = {}
    build = recipe.build

    def measured_build(config):  # the baseline is taken where the check runs
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        start["rss"] = rss("VmRSS")
        return build(config)

    recipe.build = measured_build
    with tempfile.TemporaryDirectory() as runs:
        recipe.run(cfg, Path(runs), quiet=True)
    estimate = sum(p.bytes for p in parts) - min(parts[2].bytes, parts[3].bytes) + memory.OVERHEAD
    print(
        json.dumps(
            {
                "peak": rss("VmHWM") - start["rss"],
                "estimate": estimate,
                "check": memory.total(parts),
                "largest": max(parts, key=lambda p: p.bytes).name,
            }
        )
    )


def main() -> None:
    """Measure every case in its own process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # CONFIG OVERRIDE...: one case, in a child
    args = parser.parse_args()
    if args.one:
        return measure(args.one[0], args.one[1:])
    from gdtrain.training.memory import size

    print("| case | largest part | measured peak | estimate | ratio | the check |")
    print("|---|---|---|---|---|---|")
    for name, (config, overrides) in CASES.items():
        if config.startswith("mnist"):
            if not (Path(args.data_root) / "MNIST" / "raw").is_dir():
                continue
            overrides = [*overrides, f"data.root={args.data_root}"]
        out = subprocess.run(
            [sys.executable, __file__, "--one", config, *overrides],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        row = json.loads(out.splitlines()[-1])
        print(
            f"| {name} | {row['largest']} | {size(row['peak'])} | {size(row['estimate'])} | "
            f"{row['estimate'] / row['peak']:.2f} | {size(row['check'])} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
