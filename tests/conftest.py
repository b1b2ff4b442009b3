"""What every test shares: a test's `module:Class` configs add folders to the import path for that test only."""

from __future__ import annotations

import os
import sys

# Runs in tests train on one thread, as a fixed count: a count fitted to the machine's load (gdtrain's
# default, training/device.py) could differ between a run and its resume and change their last digits.
# tests/test_threads.py tests the fitting itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from gdtrain.core import user  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_import_path(monkeypatch):
    """user.add_folder changes sys.path, user.SEARCH and PYTHONPATH (for worker processes): undone after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(user, "SEARCH", [])
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
