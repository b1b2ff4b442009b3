"""What a run logs: each point to TensorBoard's event files and to metrics.jsonl, in its run folder.

Per-step tags (loss/train, lr, grad_norm) have the optimizer step as TensorBoard's x axis; the
evaluation tags (…/val, …/test) have the epoch, so runs with different batch sizes compare.
metrics.jsonl holds every point with both its step and its epoch; a resumed run rebuilds its event
files from it, so a point is never shown twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from gdtrain.core.runs import EPOCH_TAG_SUFFIXES
from gdtrain.training import board


class Tracker:
    """Sends each logged point to TensorBoard and to metrics.jsonl in the run folder."""

    def __init__(self, run_dir: Path, resume_at: int | None = None) -> None:
        """A new tracker; with `resume_at` (a checkpoint's metrics.jsonl length) one that continues
        it: points logged after the checkpoint are dropped and the event files are rebuilt from
        metrics.jsonl, so TensorBoard shows each step once (only the points' wall times change)."""
        metrics = run_dir / "metrics.jsonl"
        replay: list[dict[str, Any]] = []
        if resume_at is not None:
            with open(metrics, "r+b") as f:
                f.truncate(resume_at)
            replay = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line]
            for old in run_dir.glob("events.out.tfevents.*"):
                old.unlink()
        self.run_dir = run_dir
        self.writer = SummaryWriter(log_dir=str(run_dir))
        for line in replay:
            step, epoch = line.pop("step"), line.pop("epoch")
            for tag, value in line.items():
                self.writer.add_scalar(tag, value, epoch if tag.endswith(EPOCH_TAG_SUFFIXES) else step)
        self.lines = open(metrics, "a", encoding="utf-8")

    def log_step(self, values: dict[str, float], step: int, epoch: int) -> None:
        """Per-step values; TensorBoard's x axis is the optimizer step."""
        assert not any(tag.endswith(EPOCH_TAG_SUFFIXES) for tag in values), values
        self._log(values, step, step, epoch)

    def log_epoch(self, values: dict[str, float], step: int, epoch: int) -> None:
        """Per-epoch values (…/val, …/test); TensorBoard's x axis is the epoch, so batch sizes compare."""
        assert all(tag.endswith(EPOCH_TAG_SUFFIXES) for tag in values), values
        self._log(values, epoch, step, epoch)

    def _log(self, values: dict[str, float], x: int, step: int, epoch: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, x)
        self.lines.write(json.dumps({"step": step, "epoch": epoch, **values}) + "\n")

    def log_hparams(self, flat_config: dict[str, Any]) -> None:
        """This run's HParams session, named by its folder, in its own event file (add_hparams would
        make a sub-run); the experiment that lists every run's hyper-parameters is the experiment
        folder's (board.define)."""
        self.writer.file_writer.add_summary(board.session_start(flat_config, self.run_dir.name))

    def log_end(self, status: str) -> None:
        """The HParams session's end: how the run ended (nothing for an interrupted run)."""
        summary = board.session_end(status)
        if summary is not None:
            self.writer.file_writer.add_summary(summary)

    def flush(self) -> int:
        """Push everything logged so far to disk; the byte length of metrics.jsonl."""
        self.writer.flush()
        self.lines.flush()
        return self.lines.tell()

    def close(self) -> None:
        """Flush and close both outputs."""
        self.writer.close()
        self.lines.close()


class NullTracker:
    """What ranks other than 0 log to: nothing (rank 0 writes the run folder)."""

    def log_step(self, values: dict[str, float], step: int, epoch: int) -> None:
        """Nothing."""

    def log_epoch(self, values: dict[str, float], step: int, epoch: int) -> None:
        """Nothing."""

    def log_hparams(self, flat_config: dict[str, Any]) -> None:
        """Nothing."""

    def log_end(self, status: str) -> None:
        """Nothing."""

    def flush(self) -> int:
        """Nothing to flush."""
        return 0

    def close(self) -> None:
        """Nothing to close."""
