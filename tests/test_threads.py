"""Threads fitted to the free cores (gdtrain/training/device.py): one thread when other processes keep every
core busy, all of the process's own when none do, the user's OMP_NUM_THREADS kept, the count in provenance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from gdtrain.training import device

FIT = "from gdtrain.training.device import fit_threads; print(fit_threads())"


def fitted(env: dict[str, str]) -> int:
    done = subprocess.run([sys.executable, "-c", FIT], env=env, capture_output=True, text=True, timeout=120, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_a_machine_whose_cores_are_all_busy_gets_one_thread() -> None:
    cores = len(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(cores)
    ]
    try:
        assert fitted(env) == 1
        assert fitted(env | {"OMP_NUM_THREADS": str(cores)}) == cores  # the user's count is kept, busy or not
    finally:
        for p in spinners:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.parametrize("others, expected", [(0.0, "cap"), (0.3, "cap"), (0.7, "cap-1"), (99.0, 1)])
def test_the_count_is_the_cores_others_leave_free(monkeypatch, others: float, expected: object) -> None:
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(device, "_cap", cores)
    monkeypatch.setattr(device, "_since", None)
    monkeypatch.setattr(device, "WINDOW", 0.0)
    monkeypatch.setattr(device, "busy_elsewhere", lambda since: others)
    before = torch.get_num_threads()
    try:
        got = device.fit_threads()
        assert torch.get_num_threads() == got
    finally:
        torch.set_num_threads(before)
    assert got == {"cap": cores, "cap-1": max(1, cores - 1)}.get(expected, expected)


def test_a_run_records_its_thread_count(tmp_path) -> None:
    from clihelp import gdtrain
    from gdtrain.core.runs import run_folders

    smoke = os.path.join(os.path.dirname(__file__), "..", "configs", "smoke.yaml")
    assert gdtrain("run", smoke, "--runs-dir", tmp_path, "--quiet").exit_code == 0
    (run_dir,) = run_folders(tmp_path / "smoke")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["environment"]["cpu_threads"] == torch.get_num_threads() == 1  # tests fix OMP_NUM_THREADS=1
