"""`gdtrain bench --load`: the stacked MNIST loop on a quiet and on a busy machine with one thread, with
all cores (torch's default) and with the cores gdtrain fits to the load (gdtrain/training/device.py).

An OpenMP thread that waits for its team spins on its core; when another process holds a core, the
team's threads wait on each other, and all cores train slower than one thread. Each cell runs in a
fresh process, its thread count fixed by OMP_NUM_THREADS or fitted; "busy" adds one spinning process
per core, started here and stopped with its process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# The three ways a process can run: (label, OMP_NUM_THREADS; None: fitted by gdtrain).
WAYS = [
    ("1 thread", "1"),
    ("all cores (torch's default)", str(len(os.sched_getaffinity(0)))),
    ("gdtrain (fitted)", None),
]
CHILD = "import sys; from gdtrain.contention import child; child(int(sys.argv[1]))"


def child(runs: int) -> None:
    """In a fresh process: print the run-samples/s of `runs` stacked runs of the bench's MLP, best of three."""
    import torch

    from gdtrain import bench
    from gdtrain.training.device import fit_threads

    fit_threads()  # as a run starting here would (it keeps OMP_NUM_THREADS where that is set)
    images, labels, _ = bench.mnist_or_random(None)
    steps, batch = 30, 128
    data = bench._dataset(images[: steps * batch + 1000], labels[: steps * batch + 1000], torch.device("cpu"))
    config = bench._config(batch, max_steps=steps)
    best = min(
        seconds / samples
        for seconds, samples in (bench.stacked_run(data, config, runs, torch.device("cpu")) for _ in range(3))
    )
    print(f"{1 / (runs * best):.1f}")  # a per-run sample rate: best is seconds per sample of the group


def _rate(threads: str | None, runs: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(runs)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(done.stdout.split()[-1])


@contextmanager
def busy(cores: int) -> Iterator[None]:
    """`cores` processes that spin, as another job on the machine would; stopped with their group."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(cores)
    ]
    try:
        time.sleep(0.5)
        yield
    finally:
        for p in spinners:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def load_table(runs: int, echo: Callable[[str], None]) -> None:
    """`echo` the table: run-samples/s of `runs` stacked runs, each way of running, quiet and busy."""
    cores = len(os.sched_getaffinity(0))
    echo("")
    echo(
        f"{runs} runs stacked, run-samples/s (higher is better), each cell a fresh process, best of 3; busy: "
        f"{cores} other processes spinning, one per core:"
    )
    echo("")
    echo("| machine | " + " | ".join(label for label, _ in WAYS) + " |")
    echo("|---|" + "---|" * len(WAYS))
    for state in ("quiet", "busy"):
        load = os.getloadavg()[0]
        if state == "quiet":
            rates = [_rate(threads, runs) for _, threads in WAYS]
        else:
            with busy(cores):
                rates = [_rate(threads, runs) for _, threads in WAYS]
        cells = " | ".join(f"{r:,.0f} ({r / rates[0]:.2f}x)" for r in rates)
        echo(f"| {state} (load {load:.1f} before) | {cells} |")
