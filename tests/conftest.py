"""What every test shares: a test's `module:Class` configs add folders to the import path for that test only."""

from __future__ import annotations

import os
import sys

import pytest

from gdtrain.core import user


@pytest.fixture(autouse=True)
def isolated_import_path(monkeypatch):
    """user.add_folder changes sys.path, user.SEARCH and PYTHONPATH (for worker processes): undone after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(user, "SEARCH", [])
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
