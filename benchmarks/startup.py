"""How long `gdtrain --help` and `gdtrain --version` take to answer, against a bare Typer app's `--help`.

    python benchmarks/startup.py [--repeat 5]

Each command runs in a fresh interpreter of this venv, `--repeat` times; the best wall-clock time
counts (the others measure the machine's other load). The bare app is two Typer commands and
nothing else: what any Typer CLI pays to start. gdtrain's `--help` and `--version` import neither
torch nor the config schema (pydantic builds it at import; tests/test_startup.py checks), so their
start-up is Typer's plus gdtrain's option declarations. `--version` answers before Typer imports
rich to render help, hence faster than the bare app's `--help`.

Measured on a shared 2-core AMD EPYC VM, Python 3.11, best of 5: bare Typer app --help 136 ms,
gdtrain --help 145 ms (1.07x), gdtrain --version 74 ms (0.54x); before the config schema left them,
--help was 2.1x and --version 1.8x the bare app's --help.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE = """\
import typer

app = typer.Typer()


@app.command()
def hello(name: str, count: int = 1) -> None:
    print(name * count)


@app.command()
def bye() -> None:
    print("bye")


app()
"""


def best_seconds(command: list[str], repeat: int) -> float:
    """The shortest wall-clock time of `repeat` runs of `command`, each checked to exit 0."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return min(times)


def cpu_name() -> str:
    """The CPU's model name and the cores this process may use (Linux's /proc/cpuinfo)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def main() -> None:
    """Print the three figures in ms and their ratios to the bare app's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command; the best counts")
    args = parser.parse_args()
    script = Path(sys.executable).parent / "gdtrain"  # the console script pip installed beside this python
    gdtrain = [str(script)] if script.is_file() else [sys.executable, "-m", "gdtrain"]
    with tempfile.TemporaryDirectory() as folder:
        bare = Path(folder) / "bare.py"
        bare.write_text(BARE)
        figures = {
            "bare Typer app --help": best_seconds([sys.executable, str(bare), "--help"], args.repeat),
            "gdtrain --help": best_seconds([*gdtrain, "--help"], args.repeat),
            "gdtrain --version": best_seconds([*gdtrain, "--version"], args.repeat),
        }
    print(f"best of {args.repeat} wall-clock runs; {cpu_name()}; Python {sys.version.split()[0]}")
    base = figures["bare Typer app --help"]
    for name, seconds in figures.items():
        print(f"  {name:<24} {seconds * 1000:6.0f} ms  {seconds / base:4.2f}x")


if __name__ == "__main__":
    main()
