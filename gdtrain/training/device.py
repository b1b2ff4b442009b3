"""`train.device`: where a run trains (CUDA when present unless told otherwise), and on a CPU with how
many threads: the cores other processes leave free.

Two OpenMP threads on a 2-core machine where something else runs wait on each other and train up to
several times slower than one thread (`gdtrain bench --load`, docs/performance.md), while on a quiet
machine they train ~1.8x faster than one. So each run (or stacked group) starting on the CPU measures
the cores busy outside this process and takes the rest, at least one, at
most what the process had (a sweep's worker has its share). OMP_NUM_THREADS, when set, is kept as
it is. The count is in each run's provenance; a different count changes the last digits of results.
"""

from __future__ import annotations

import os
import time

import torch

from gdtrain.core.errors import UserError

WINDOW = 0.1  # seconds of the first measure of the other processes' CPU use
REFIT = 2.0  # seconds between measures: a run or group that starts sooner keeps the last count
_cap: int | None = None  # the process's own thread count before the first fit: the most it takes
_since: tuple[float, float, float] | None = None  # the last measure's _sample


def resolve_device(setting: str) -> torch.device:
    """auto → CUDA when present, else CPU; asking for CUDA without a GPU is a user error. On the CPU,
    torch's threads are fitted to the free cores."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda requested but no CUDA GPU is available; use --device auto or cpu")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if setting == "auto" else setting)
    if device.type == "cpu":
        fit_threads()
    return device


def _sample() -> tuple[float, float, float]:
    """(busy seconds of every core since boot, this process's CPU seconds, the monotonic clock)."""
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]  # cpu user nice system idle iowait ...
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # idle and iowait are not busy
    times = os.times()
    return busy, times.user + times.system, time.monotonic()


def busy_elsewhere(since: tuple[float, float, float]) -> float:
    """Cores that processes other than this one kept busy, on average, from `since` (a _sample) to now."""
    busy, mine, now = _sample()
    seconds = max(now - since[2], 1e-3)
    return max(0.0, (busy - since[0] - (mine - since[1])) / seconds)


def fit_threads() -> int:
    """Set torch's intra-op threads to the cores free of other work (at least 1, at most the process's
    own count) and return the count. Measured over WINDOW seconds at the first call, then over the time
    since the last measure when REFIT seconds have passed (no wait). Unchanged where OMP_NUM_THREADS
    says or /proc/stat is missing."""
    global _cap, _since
    if _cap is None:
        _cap = torch.get_num_threads()
    if "OMP_NUM_THREADS" in os.environ or not os.path.exists("/proc/stat"):
        return torch.get_num_threads()
    if _since is None:
        _since = _sample()
        time.sleep(WINDOW)
    elif time.monotonic() - _since[2] < REFIT:
        return torch.get_num_threads()
    others, _since = busy_elsewhere(_since), _sample()
    cores = len(os.sched_getaffinity(0))
    threads = max(1, min(_cap, cores - round(others)))
    torch.set_num_threads(threads)
    return threads
