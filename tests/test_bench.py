"""`gdtrain bench`'s stacked table runs on tiny sizes: one row per batch size and number of runs (no speed asserted)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from gdtrain.cli import app


def table_rows(stdout: str, header: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with `header`."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine two threads waiting on each other make tiny steps 10-30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_stacked_table_has_a_row_per_batch_size_and_number_of_runs(tmp_path, one_thread):
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--data-root",
            str(tmp_path),
            "--samples",
            "1000",
            "--device",
            "cpu",
            "--batch-sizes",
            "16,100",
            "--no-variants",
            "--runs",
            "1,3",
            "--stacked-steps",
            "60",
        ],
    )  # 60 × 16 > 900 images: a last batch of 4, a 2nd epoch
    assert result.exit_code == 0, result.output
    assert "each run 60 steps" in result.stdout and "not all of them" in result.stdout
    rows = table_rows(result.stdout, "| N | batch | together |")
    assert [row[:2] for row in rows] == [["1", "16"], ["3", "16"], ["1", "100"], ["3", "100"]]
    for row in rows:
        assert all(float(cell.replace(",", "")) > 0 for cell in row[2:4])
        assert row[4].endswith("x") and row[5].endswith("x the floor") and row[6].endswith("x the floor")
    steps = table_rows(result.stdout, "| M | vectorised | generic | alone |")  # one optimizer step each way
    assert [row[0] for row in steps] == ["1", "3"]
    assert all(float(cell) > 0 for row in steps for cell in row[1:4])


def test_no_stacked_leaves_the_table_out(tmp_path, one_thread):
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--data-root",
            str(tmp_path),
            "--samples",
            "1000",
            "--device",
            "cpu",
            "--batch-sizes",
            "100",
            "--no-variants",
            "--no-stacked",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "together" not in result.stdout and "vectorised" not in result.stdout


def test_bad_runs_are_one_line_errors():
    for runs in ("0,8", "8,x", ""):
        result = CliRunner().invoke(app, ["bench", "--runs", runs])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == f"error: --runs: expected whole numbers >= 1 separated by commas, got {runs!r}"
