"""A line's learned w and b: printed at the end, in summary.json beside the true ones, and logged to
metrics.jsonl and TensorBoard at every epoch's end, for a run alone and for a stacked sweep member."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clihelp import gdtrain, write

# 160 training samples in batches of 20: 8 steps an epoch, logged at steps 3 and 6 and at its end.
LINE = """experiment: {name: line, seed: 0}
data: {name: linear_regression, n_samples: 200, weight: [2.0], bias: 3.0, noise: 0.1}
model: {name: linear}
optimizer: {name: sgd, lr: 0.05}
train: {epochs: 4, batch_size: 20, log_every: 3}
"""
EPOCH_ENDS = [8, 16, 24, 32]


def only_run(folder: Path) -> Path:
    """The one run folder of an experiment folder."""
    (run_dir,) = (path for path in folder.iterdir() if (path / "summary.json").is_file())
    return run_dir


def learned(run_dir: Path) -> tuple[float, float]:
    """w and b of the run's model.pt."""
    state = torch.load(run_dir / "model.pt", weights_only=True)
    return state["0.weight"].item(), state["0.bias"].item()


def check_line(run_dir: Path) -> tuple[float, float]:
    """Assert summary.json, metrics.jsonl and TensorBoard all hold model.pt's w and b; return them."""
    w, b = learned(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["line"] == {"w": [w], "b": b, "true_w": [2.0], "true_b": 3.0}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {line["step"]: (line["line/w"], line["line/b"]) for line in lines if "line/w" in line}
    assert set(EPOCH_ENDS) <= set(logged)
    assert logged[EPOCH_ENDS[-1]] == (w, b)
    ws = [logged[step][0] for step in EPOCH_ENDS]
    assert abs(ws[0] - 2.0) > abs(ws[-1] - 2.0)  # the class watches w approach 2
    board = EventAccumulator(str(run_dir))
    board.Reload()
    for tag, value in (("line/w", w), ("line/b", b)):
        events = {event.step: event.value for event in board.Scalars(tag)}
        assert set(EPOCH_ENDS) <= set(events)
        assert events[EPOCH_ENDS[-1]] == pytest.approx(value, rel=1e-6)
    return w, b


def test_a_run_alone_prints_records_and_logs_its_w_and_b(tmp_path):
    result = gdtrain("run", write(tmp_path, LINE), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run_dir = only_run(tmp_path / "runs" / "line")
    w, b = check_line(run_dir)
    assert f"learned w {w:.6g}, b {b:.6g} (true w 2, b 3)" in result.stdout
    assert w == pytest.approx(2.0, abs=0.3) and b == pytest.approx(3.0, abs=0.3)


def test_a_stacked_sweep_member_records_and_logs_its_w_and_b_as_alone(tmp_path):
    config = write(tmp_path, LINE)
    result = gdtrain("sweep", config, "--grid", "optimizer.lr=0.05,0.02", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "stacked: 2 runs train as 1 group(s) of 2 runs" in result.stdout
    members = sorted((tmp_path / "runs" / "line").glob("sgd-lr0.05*"))
    assert len(members) == 1
    w, b = check_line(members[0])
    assert f"line/w {w:.4g}" in result.stdout
    alone = gdtrain("run", config, "--runs-dir", tmp_path / "alone")
    assert alone.exit_code == 0, alone.output
    run_dir = only_run(tmp_path / "alone" / "line")
    assert (w, b) == pytest.approx(learned(run_dir), rel=1e-5)


def test_several_features_give_one_w_each(tmp_path):
    config = write(tmp_path, LINE.replace("weight: [2.0]", "weight: [2.0, -1.0]").replace("epochs: 4", "epochs: 1"))
    result = gdtrain("run", config, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run_dir = only_run(tmp_path / "runs" / "line")
    weight = torch.load(run_dir / "model.pt", weights_only=True)["0.weight"][0].tolist()
    line = json.loads((run_dir / "summary.json").read_text())["line"]
    assert line["w"] == weight and line["true_w"] == [2.0, -1.0]
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-2])  # the last step's, before loss/val
    assert [last["line/w1"], last["line/w2"]] == weight
    assert "(true w [2, -1], b 3)" in result.stdout


def test_a_model_that_is_not_a_line_logs_no_w_or_b(tmp_path):
    config = write(tmp_path, LINE.replace("{name: linear}", "{name: mlp, hidden_sizes: [4]}"))
    result = gdtrain("run", config, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run_dir = only_run(tmp_path / "runs" / "line")
    assert "line" not in json.loads((run_dir / "summary.json").read_text())
    assert "line/" not in (run_dir / "metrics.jsonl").read_text() and "learned w" not in result.stdout
