"""What `run` and `resume` say when their run ends, and their exit status.

Rank 0 reports the run and exits with its status. The other ranks exit 0 once they have stopped
with it: torchrun stops every worker as soon as one exits non-zero, which could cut rank 0 short
while it writes summary.json or prints why it stopped. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gdtrain.core.runs import resume_command
from gdtrain.training.launch import world

if TYPE_CHECKING:
    from gdtrain.core.config import Config
    from gdtrain.training.lifecycle import Outcome


def ending(run_dir: Path, outcome: Outcome, cfg: Config, say: Callable[..., None]) -> int:
    """Say how the run ended (from rank 0 only; `say` has typer.echo's signature); its exit status:
    128 + the signal that interrupted it, 1 when it diverged, else 0."""
    rank, size = world()
    if rank != 0:
        return 0
    if outcome.status == "interrupted":
        say(
            f"interrupted at step {outcome.steps}, checkpoint saved; continue with: {resume_command(run_dir, size)}",
            err=True,
        )
        return 128 + (outcome.signal or 2)
    if outcome.status == "diverged":
        say(
            f"error: diverged at step {outcome.diverged_at_step}: the loss became NaN or infinite; "
            f"try a smaller learning rate than optimizer.lr={cfg.optimizer.lr:g} (run folder: {run_dir})",
            err=True,
        )
        return 1
    shown = ", ".join(f"{tag} {value:.4g}" for tag, value in outcome.final.items() if "/" in tag)
    early = " (stopped early)" if outcome.stopped_early else ""
    say(f"finished{early}: {outcome.epochs} epochs, {outcome.steps} steps; {shown}")
    from gdtrain.training.lifecycle import line_summary  # torch, which the run just ended has loaded

    if fitted := line_summary(cfg, outcome.final):
        learned = f"w {_numbers(fitted['w'])}, b {fitted['b']:.6g}"
        say(f"learned {learned} (true w {_numbers(fitted['true_w'])}, b {fitted['true_b']:g})")
    say(f"run folder: {run_dir}   (tensorboard --logdir {run_dir.parent})")
    if (run_dir / "path.png").is_file():
        say(f"picture: {run_dir / 'path.png'}")
    return 0


def _numbers(values: list[float]) -> str:
    """One w as a number, several as a list: `1.99598` or `[1.99598, -0.50012]`."""
    shown = [f"{value:.6g}" for value in values]
    return shown[0] if len(shown) == 1 else f"[{', '.join(shown)}]"


def stopped_at_once(where: Path, say: Callable[..., None]) -> int:
    """A second Ctrl-C stopped the run without a checkpoint: rank 0 says so (exit 130), the others
    exit 0."""
    rank, size = world()
    if rank != 0:
        return 0
    nproc = f"--nproc {size} " if size > 1 else ""
    say(
        f"error: stopped at once by a second interrupt; the run under {where} keeps its last "
        f"checkpoint: gdtrain resume {nproc}<run folder>",
        err=True,
    )
    return 130
