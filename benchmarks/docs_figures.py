"""The README's shipped-configs table, measured: each config's result and wall time, with the machine.

    python benchmarks/docs_figures.py [--write README.md] [--only synthetic]

Runs each shipped config as `make <config>` does (`gdtrain run`, its own process, so the time
includes start-up), into a temporary folder, and prints the table as a markdown block headed by the
machine (CPU model, cores, torch, date, the load average's range during the runs): the learned w and
b of the linear-regression configs, the validation or test accuracy of the others, the wall time.
`--write README.md` also puts the block between the README's markers and its raw figures in
docs/figures.json, which tests/test_docs.py checks the README block against (so a test never
trains). `make docs-figures` runs it with --write; the MNIST configs read $GDTRAIN_DATA (`--only
synthetic` leaves them out and keeps their last figures). About 3 minutes on a quiet 2-core CPU, 6
under a load average of 2-3 (the MNIST configs slow most).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures.json"  # what the last --write measured: the README block is rendered from it
BEGIN, END = "<!-- shipped configs: from benchmarks/docs_figures.py -->", "<!-- end of shipped configs -->"
# (the README row's name, the config it runs, what it shows); one config stands for mnist_mlp_* and path_*.
ROWS = [
    ("synthetic_linreg_bgd", "synthetic_linreg_bgd", "batch GD, y = 2x + 3, SGD lr 0.01, 400 epochs"),
    ("synthetic_linreg_sgd", "synthetic_linreg_sgd", "stochastic GD (batch 1), 3 epochs"),
    ("synthetic_linreg_minibatch", "synthetic_linreg_minibatch", "mini-batch GD (batch 32), 20 epochs"),
    (
        "synthetic_blobs_softmax",
        "synthetic_blobs_softmax",
        "softmax regression, 4 overlapping blobs, momentum + cosine",
    ),
    ("synthetic_moons_mlp", "synthetic_moons_mlp", "MLP + BCE on two moons (a linear model: 86%)"),
    ("synthetic_xor_mlp", "synthetic_xor_mlp", "MLP + BCE on XOR (a linear model: chance, loss ln 2)"),
    ("smoke", "smoke", "seconds-long end-to-end check used by tests, CI and `make smoke`"),
    ("mnist_sgd", "mnist_sgd", "the tutorials' softmax regression on MNIST (needs the data, below)"),
    ("mnist_adam", "mnist_adam", "the tutorials' MLP on MNIST, Adam"),
    ("mnist_mlp_*", "mnist_mlp_sgd", "the same MLP with sgd, momentum, nesterov, adagrad, rmsprop, adamw"),
    (
        "path_*",
        "path_quadratic_sgd",
        "an optimizer's path on x², x² + 10y² or Rosenbrock (`make paths` draws them all)",
    ),
]


def machine() -> dict[str, Any]:
    """The CPU's model name, its cores, torch's version, today's date and the load average now."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        model = names[0] if names else model
    torch_version = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch_version,
        "date": datetime.date.today().isoformat(),
        "load": [os.getloadavg()[0]] * 2,  # the 1-minute load average's lowest and highest, updated by each run
    }


def measure(config: str, runs_dir: Path) -> dict[str, Any]:
    """Run configs/<config>.yaml as `make <config>` does; its summary's figures and the wall time (s)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "gdtrain", "run", str(ROOT / "configs" / f"{config}.yaml"), "--runs-dir", str(runs_dir)],
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - started
    (summary,) = runs_dir.glob("*/*/summary.json")
    found = json.loads(summary.read_text())
    return {"seconds": round(seconds, 1), "final": found.get("final", {}), "line": found.get("line")}


def result(row: str, figures: dict[str, Any]) -> str:
    """The table's result cell: w and b, a test or validation accuracy, or the path's picture."""
    if row == "mnist_mlp_*":
        return "see `make compare-mnist`"
    if row == "path_*":
        return "`path.png`"
    if figures["line"] is not None:
        return f"w {figures['line']['w'][0]:.5f}, b {figures['line']['b']:.5f}"
    final = figures["final"]
    if "accuracy/test" in final:
        return f"test acc {100 * final['accuracy/test']:.2f}%"
    return f"val acc {100 * final['accuracy/val']:.0f}%"


def render(measured: dict[str, Any]) -> str:
    """The README block: where and when it was measured, then the table."""
    box = measured["machine"]
    low, high = box["load"]
    load = f", load average {low:.1f}" + (f" to {high:.1f}" if f"{high:.1f}" != f"{low:.1f}" else "")
    said = (
        f"`make` runs them all, `make <config-name>` one. Measured by `make docs-figures` on {box['cpu']} "
        f"({box['cores']} cores), torch {box['torch']}, {box['date']}{load}; wall time of `gdtrain run`, "
        "start-up (importing torch) and a checkpoint per epoch included:"
    )
    lines = [
        textwrap.fill(said, width=100, break_on_hyphens=False),
        "",
        "| config | what it shows | result | time |",
        "|---|---|---|---|",
    ]
    for row, _, shows in ROWS:
        figures = measured["configs"][row]
        each = " each" if row.endswith("*") and not row.startswith("path") else ""
        lines.append(f"| `{row}` | {shows} | {result(row, figures)} | {figures['seconds']:g} s{each} |")
    return "\n".join(lines)


def write(page: Path, block: str) -> None:
    """Put `block` between the markers of `page` (the README)."""
    text = page.read_text(encoding="utf-8")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    page.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}", encoding="utf-8")


def main() -> None:
    """Measure every row (or the synthetic ones), print the block; with --write, update the README."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="the page whose block to replace (README.md)")
    parser.add_argument("--only", choices=["synthetic"], help="leave out the configs that need MNIST")
    args = parser.parse_args()
    measured = json.loads(FIGURES.read_text()) if FIGURES.is_file() else {"configs": {}}
    measured["machine"] = machine()
    for row, config, _ in ROWS:
        if args.only and config.startswith("mnist"):
            continue
        with tempfile.TemporaryDirectory() as runs_dir:
            measured["configs"][row] = measure(config, Path(runs_dir))
        now = os.getloadavg()[0]  # other work on the machine slows every wall time: the block says how much
        measured["machine"]["load"] = [
            min(measured["machine"]["load"][0], now),
            max(measured["machine"]["load"][1], now),
        ]
        print(
            f"{row}: {result(row, measured['configs'][row])}, {measured['configs'][row]['seconds']} s", file=sys.stderr
        )
    block = render(measured)
    print(block)
    if args.write is not None:
        FIGURES.write_text(json.dumps(measured, indent=2) + "\n", encoding="utf-8")
        write(args.write, block)


if __name__ == "__main__":
    main()
