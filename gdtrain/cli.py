"""The command line. Only this module reads argv.

Train: run, resume, sweep, study, paths, evaluate, bench. Read and explain: check, compare, list,
data download. Each command is a thin function; the work is in the module it imports. This module
and what it imports at the top are torch-free, so the commands that do not train start at once
(tests/test_startup.py): the others import their modules, and torch with them, when they run.
A UserError becomes one line on stderr and exit code 2; nothing else is caught here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import tempfile
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer

from gdtrain import __version__
from gdtrain.core.config import Config, load_config, to_dict
from gdtrain.core.catalog import DATASET_HELP, LOSS_HELP, MODEL_HELP, OPTIMIZER_HELP, SCHEDULE_HELP
from gdtrain.core.errors import StoppedElsewhere, UserError
from gdtrain.core.yamlio import dump_yaml

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from gdtrain.core.folders import Run

app = typer.Typer(
    help="Train and compare gradient-descent optimizers from YAML experiment configs.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


data_app = typer.Typer(help="Fetch and check the MNIST-family IDX files.", no_args_is_help=True)
app.add_typer(data_app, name="data")


class ImageSet(str, Enum):
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    kmnist = "kmnist"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


ConfigArg = Annotated[Path, typer.Argument(help="YAML experiment config, e.g. configs/smoke.yaml.", show_default=False)]
BatchRunsOpt = Annotated[Optional[int], typer.Option("--batch-runs", metavar="N", help="Most runs trained together as one stacked model (compatible points only); default: as many as fit in memory; 1: each alone.")]
NprocOpt = Annotated[int, typer.Option("--nproc", min=1, help="Processes to train with (DistributedDataParallel through torchrun; gloo on CPU, nccl on GPU).")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="KEY.PATH=VALUE", help="Override a config value; repeatable, e.g. --set optimizer.lr=0.01."),
]

ExecutorOpt = Annotated[Optional[str], typer.Option(
    "--executor", metavar="local|slurm", show_default=False,
    help="Run each point, or each stacked group of points, as a submitit job: local (processes on this machine) or slurm (sbatch); job logs go to "
         "<experiment folder>/_jobs/. Default: in this process, or --jobs worker processes.")]
PartitionOpt = Annotated[Optional[str], typer.Option("--slurm-partition", show_default=False,
                                                     help="The jobs' Slurm partition (with --executor slurm).")]
GpusOpt = Annotated[Optional[int], typer.Option("--slurm-gpus-per-job", min=0, show_default=False,
                                                help="GPUs per Slurm job (with --executor slurm).")]
TimeOpt = Annotated[Optional[int], typer.Option("--slurm-time", min=1, metavar="MINUTES", show_default=False,
                                                help="Each Slurm job's time limit in minutes (with --executor slurm; default 60).")]

ERRORS = "GDTRAIN_ERRORS"  # set by the --nproc launcher: a folder where the workers leave their errors


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a UserError as `error: ...` on stderr and exit 2, with no traceback."""
    try:
        yield
    except UserError as err:
        if not _left_for_launcher(str(err)):
            for line in str(err).splitlines():
                typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    except StoppedElsewhere:  # another rank failed and says why; exit 0, see _report
        raise typer.Exit(0) from None


def _left_for_launcher(message: str) -> bool:
    """Under the --nproc launcher, leave a worker's error for it to print once for all ranks (they
    often all meet the same one); False when there is no launcher, or its folder is gone."""
    if ERRORS not in os.environ or "RANK" not in os.environ:
        return False
    try:
        Path(os.environ[ERRORS], f"rank-{int(os.environ['RANK']):05d}").write_text(message)
    except OSError:
        return False
    return True


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gdtrain {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Train and compare gradient-descent optimizers from YAML experiment configs."""


def _load(config: Path, overrides: list[str] | None, device: Device | None = None) -> Config:
    extra = [f"train.device={device.value}"] if device is not None else []
    return load_config(config, (overrides or []) + extra)


@app.command()
def run(
    config: ConfigArg,
    overrides: SetOpt = None,
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="Run name (default: <optimizer>-lr<lr>).")] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Folder that holds the experiments' run folders.")] = Path("runs"),
    device: Annotated[Optional[Device], typer.Option("--device", help="Overrides train.device.", case_sensitive=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    skip_finished: Annotated[bool, typer.Option("--skip-finished", help="Do nothing if a finished run of this exact config and name is already there (for make).")] = False,
    nproc: NprocOpt = 1,
) -> None:
    """Train one experiment into runs/<experiment>/<name>-<timestamp>/ and log it to TensorBoard."""
    from gdtrain.training import recipe  # torch: only the commands that train import it
    from gdtrain.core import runs

    if nproc > 1:
        with user_errors():  # what one process can check, before torchrun starts several
            cfg = _load(config, overrides, device)
            if cfg.train.batch_size != "full" and cfg.train.batch_size < nproc:
                raise UserError(f"train.batch_size: {cfg.train.batch_size} cannot be shared by {nproc} processes; "
                                f"use at least {nproc}, or fewer processes")
        sets = [arg for o in overrides or [] for arg in ("--set", o)]
        _torchrun(nproc, ["run", str(config), *sets, "--runs-dir", str(runs_dir), *(["--name", name] if name else []),
                          *(["--device", device.value] if device else []), *(["--quiet"] if quiet else [])])
    with user_errors():
        cfg = _load(config, overrides, device)
        done = runs.finished_run(runs_dir, cfg, runs.run_name(cfg, name)) if skip_finished else None
        if done is not None:
            typer.echo(f"already finished, skipped: {done}")
            return
        run_dir, outcome = _interruptible(lambda: recipe.run(cfg, runs_dir, name, quiet, say=typer.echo), runs_dir)
    _report(run_dir, outcome, cfg)


def _torchrun(nproc: int, args: list[str]) -> NoReturn:
    """Be `torchrun --standalone --nproc-per-node N -m gdtrain ARGS`, in this process; exit as rank 0 did.

    torchrun starts each worker in a session of its own, so a Ctrl-C at the terminal reaches this
    process only. Its handler passes SIGINT or SIGTERM on to every worker's process group, once,
    and waits for them (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s, then SIGKILL): they stop together
    at their next agreement with a checkpoint, and rank 0 prints the resume line.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run as launch

    from gdtrain.training.distributed import AGENT

    argv = ["--standalone", f"--nproc-per-node={nproc}", "-m", "gdtrain", *args]
    typer.echo(f"launching: torchrun {shlex.join(argv)}", err=True)
    os.environ[AGENT] = str(os.getpid())  # the workers' parent: they stop when it dies (distributed.die_with_parent)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun gives each worker, without its 4-line banner
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_unexplained)
    with tempfile.TemporaryDirectory(prefix="gdtrain-errors-") as errors:
        os.environ[ERRORS] = errors
        try:
            launch(parse_args(argv))
        except SignalException as err:  # the workers have stopped (or been killed after the timeout)
            raise typer.Exit(128 + err.sigval) from None
        except KeyboardInterrupt:  # Ctrl-C before torchrun's handler was in place: no worker yet
            raise typer.Exit(130) from None
        except ChildFailedError as err:
            # The lowest rank's UserError, once: often every rank met the same one, and the
            # first to exit 2 made torchrun stop the others, perhaps before they could say it.
            reported = sorted(Path(errors).iterdir())
            for line in (reported[0].read_text() if reported else "").splitlines():
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(2 if reported else _failure_status(err.failures)) from None
    raise typer.Exit(0)


CHOSEN = (1, 2, 130, 143)  # rank 0's status once it has said why: diverged or a crash, bad input, a signal


def _unexplained(record: logging.LogRecord) -> bool:
    """False for torchrun's "failed (exitcode: N) local_rank: 0" when rank 0 chose N and has said why."""
    return not (str(record.msg).startswith("failed (exitcode") and tuple(record.args or ())[:2] in {(c, 0) for c in CHOSEN})


def _failure_status(failures: dict[int, ProcessFailure]) -> int:
    """The launcher's exit status when a worker exited non-zero: rank 0's own status when it chose
    it (it has printed why); else 1, with a line per failed worker (killed by a signal, say)."""
    main = failures.get(0)
    if main is not None and main.exitcode in CHOSEN:
        return main.exitcode
    for rank, failure in sorted(failures.items()):
        how = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit status {failure.exitcode}"
        typer.echo(f"error: rank {rank} (pid {failure.pid}) stopped: {how}", err=True)
    return 1


def _world() -> tuple[int, int]:
    """(rank, processes) of this process, from torchrun's environment; (0, 1) alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _interruptible(train, where: Path):
    """Run `train`; a second Ctrl-C, which stops without a checkpoint, exits 130 with one line."""
    try:
        return train()
    except KeyboardInterrupt:
        rank, size = _world()
        if rank != 0:  # rank 0 says it; exit 0, see _report
            raise typer.Exit(0) from None
        nproc = f"--nproc {size} " if size > 1 else ""
        typer.echo(f"error: stopped at once by a second interrupt; the run under {where} keeps its last "
                   f"checkpoint: gdtrain resume {nproc}<run folder>", err=True)
        raise typer.Exit(130) from None


def _report(run_dir: Path, outcome, cfg: Config) -> None:
    """The closing lines of run and resume (from rank 0 only), and their exit code."""
    from gdtrain.core.runs import resume_command

    rank, size = _world()
    if rank != 0:
        # Rank 0 reports the run and exits with its status. The others exit 0 once they have
        # stopped with it: torchrun stops every worker as soon as one exits non-zero, which could
        # cut rank 0 short while it writes summary.json or prints why it stopped.
        raise typer.Exit(0)
    if outcome.status == "interrupted":
        typer.echo(f"interrupted at step {outcome.steps}, checkpoint saved; continue with: "
                   f"{resume_command(run_dir, size)}", err=True)
        raise typer.Exit(128 + (outcome.signal or 2))
    if outcome.status == "diverged":
        typer.echo(
            f"error: diverged at step {outcome.diverged_at_step}: the loss became NaN or infinite; "
            f"try a smaller learning rate than optimizer.lr={cfg.optimizer.lr:g} (run folder: {run_dir})",
            err=True,
        )
        raise typer.Exit(1)
    shown = ", ".join(f"{tag} {value:.4g}" for tag, value in outcome.final.items() if "/" in tag)
    early = " (stopped early)" if outcome.stopped_early else ""
    typer.echo(f"finished{early}: {outcome.epochs} epochs, {outcome.steps} steps; {shown}")
    typer.echo(f"run folder: {run_dir}   (tensorboard --logdir {run_dir.parent})")
    if (run_dir / "path.png").is_file():
        typer.echo(f"picture: {run_dir / 'path.png'}")


@app.command()
def paths(
    config: ConfigArg,
    optimizers: Annotated[str, typer.Option("--optimizers", "-o", help="Comma-separated: sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw; NAME:LR gives that one its own lr (default: optimizer.lr).")] = "sgd,momentum,rmsprop,adam",
    overrides: SetOpt = None,
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="Name of the folder with the picture (default: paths).")] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Folder that holds the experiments' run folders.")] = Path("runs"),
    device: Annotated[Optional[Device], typer.Option("--device", help="Overrides train.device.", case_sensitive=False)] = None,
) -> None:
    """Run each optimizer on a `data: {name: function}` config and draw all their paths in one figure."""
    from gdtrain.training import descent

    with user_errors():
        cfg = _load(config, overrides, device)
        run_dir, descents = descent.run_paths(cfg, optimizers, runs_dir, name)
    for d in descents:
        end = ", ".join(f"{v:.4g}" for v in d.points[-1].tolist())
        typer.echo(f"{d.run_dir.name:<40} {d.outcome.status:<9} x ({end})  f {float(d.values[-1]):.4g}")
    typer.echo(f"picture: {run_dir / 'paths.png'}   (tensorboard --logdir {run_dir.parent}, tab Images)")
    diverged = [d for d in descents if d.outcome.status == "diverged"]
    if diverged:
        which = ", ".join(f"{d.run_dir.name} at step {d.outcome.diverged_at_step}" for d in diverged)
        typer.echo(f"error: diverged: {which}; try a smaller lr (NAME:LR in --optimizers)", err=True)
        raise typer.Exit(1)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="The run folder, runs/<experiment>/<run>.", show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    nproc: NprocOpt = 1,
) -> None:
    """Continue an interrupted run from its newest checkpoint, into the same folder."""
    from gdtrain.training import recipe

    if nproc > 1:
        with user_errors():
            _load(run_dir / "config.yaml", None)
            with recipe.own(run_dir):  # refused here in one line, not in rank 0 among torchrun's reports
                pass
        _torchrun(nproc, ["resume", str(run_dir), *(["--quiet"] if quiet else [])])
    with user_errors():
        outcome = _interruptible(lambda: recipe.resume(run_dir, quiet, say=typer.echo), run_dir)
        cfg = _load(run_dir / "config.yaml", None)
    _report(run_dir, outcome, cfg)


class Weights(str, Enum):
    best = "best"
    last = "last"


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="The run folder, runs/<experiment>/<run>.", show_default=False)],
    checkpoint: Annotated[Weights, typer.Option("--checkpoint", "-c", help="best: lowest validation loss; last: the final (or newest) weights.")] = Weights.last,
) -> None:
    """Validation and test metrics of a saved run's best or last weights."""
    from gdtrain.training import recipe

    with user_errors():
        path, results = recipe.evaluate_run(run_dir, checkpoint.value)
    typer.echo(f"{path}: " + ", ".join(f"{tag} {value:.4f}" for tag, value in results.items()))


@app.command()
def sweep(
    config: ConfigArg,
    grid: Annotated[Optional[list[str]], typer.Option("--grid", "-g", metavar="KEY.PATH=V1,V2", help="Values to sweep; repeatable, the runs are the cross product, e.g. --grid optimizer.lr=0.1,0.01.")] = None,
    seeds: Annotated[Optional[int], typer.Option("--seeds", min=1, help="Also run each point with this many seeds (experiment.seed, seed+1, ...).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Runs at once, each in its own process with its share of the CPU threads; with --executor, jobs at once.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Skip points that already have a finished (or diverged) run with the same config.")] = False,
    batch_runs: BatchRunsOpt = None,
    overrides: SetOpt = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Folder that holds the experiments' run folders.")] = Path("runs"),
    executor: ExecutorOpt = None,
    slurm_partition: PartitionOpt = None,
    slurm_gpus_per_job: GpusOpt = None,
    slurm_time: TimeOpt = None,
) -> None:
    """Run a grid of configs (from --grid and the config's grid: section) into one experiment folder."""
    from gdtrain.execution import options
    from gdtrain.execution import sweep as sweeping

    with user_errors():
        execution = options.execution(jobs, batch_runs, executor, slurm_partition, slurm_gpus_per_job, slurm_time,
                                      resume)
        status = sweeping.sweep_file(config, grid or [], seeds, overrides or [], runs_dir, execution, typer.echo)
    raise typer.Exit(status)


@app.command()
def study(
    study_file: Annotated[Path, typer.Argument(metavar="STUDY", help="YAML study file, e.g. studies/quick.yaml.", show_default=False)],
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Folder that holds the study folder <runs-dir>/<study-name>/.")] = Path("runs"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue a study: runs already done are never run twice.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Runs at once, each in its own process with its share of the CPU threads; with --executor, jobs at once.")] = 1,
    batch_runs: BatchRunsOpt = None,
    overrides: SetOpt = None,
    executor: ExecutorOpt = None,
    slurm_partition: PartitionOpt = None,
    slurm_gpus_per_job: GpusOpt = None,
    slurm_time: TimeOpt = None,
) -> None:
    """Tune each optimizer on an equal budget, rerun the best over seeds, and state which is better and how surely."""
    from gdtrain.execution import options
    from gdtrain.study import runner, spec
    from gdtrain.study.report import verdict_lines

    with user_errors():
        execution = options.execution(jobs, batch_runs, executor, slurm_partition, slurm_gpus_per_job, slurm_time,
                                      resume)
        planned = spec.load_study(study_file, overrides or [])
        folder, results, code = runner.run_study(planned, runs_dir, execution, typer.echo)
    if results is None:
        raise typer.Exit(code)
    typer.echo("")
    for line in verdict_lines(results):
        typer.echo(line.replace("**", ""))
    typer.echo(f"report: {folder / 'report.md'}   (tensorboard --logdir {folder})")


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"


@app.command()
def compare(
    folder: Annotated[Path, typer.Argument(help="A runs folder, e.g. runs/<experiment>; every run folder below it is read.", show_default=False)],
    metric: Annotated[Optional[str], typer.Option("--metric", "-m", help="Tag to compare (default: accuracy/val, else loss/val).")] = None,
    target: Annotated[Optional[float], typer.Option("--target", help="Report the first step where the metric reaches this value.")] = None,
    per_run: Annotated[bool, typer.Option("--per-run", help="One row per run instead of one per configuration (mean ± std over seeds).")] = False,
    fmt: Annotated[Format, typer.Option("--format", "-f", case_sensitive=False, help="Output format.")] = Format.table,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also write a PNG of the loss and metric curves, overlaid (needs matplotlib).")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every run folder, also those a sweep's or study's manifest.json does not list.")] = False,
) -> None:
    """Tabulate the runs under a folder by a metric, best first; optionally plot their curves."""
    from gdtrain.core import folders
    from gdtrain.report import compare as comparing
    from gdtrain.report import table as comparetable
    from gdtrain.core.manifest import describe

    with user_errors():
        if plot is not None:
            from gdtrain.core.plotting import require_matplotlib

            require_matplotlib("--plot")
        runs = folders.read_runs(folder)
        manifest, others = None, []
        if not everything:
            manifest, runs, others = folders.members(folder, runs)
            if manifest is not None and not runs:
                raise UserError(f"{folder}: none of its run folders is part of {describe(manifest)} yet; "
                                f"--all compares every run folder in it")
        metric = metric or comparing.default_metric(runs)
        logged = {tag for run in runs for row in run.rows for tag in row} - {"step", "epoch"}
        if metric not in logged:
            raise UserError(f"--metric {metric}: no run under {folder} logged it; logged: {', '.join(sorted(logged)) or 'nothing'}")
        lacking = [run for run in runs if run.status == "finished" and not run.curve(metric)]
        for run in lacking:
            typer.echo(f"note: {run.path} has no {metric} (it logged {', '.join(sorted({t for r in run.rows for t in r} - {'step', 'epoch'}))}); left out", err=True)
        runs = [run for run in runs if run not in lacking]
        rows = comparing.group(runs, metric, target, per_run)
        if not per_run:
            rows = comparing.rank(rows, metric)
        records = comparetable.table(rows)
        for line in comparetable.title(records, metric, target):  # stdout stays the table alone but in text
            typer.echo(line, err=fmt != Format.table)
        typer.echo(comparetable.render(records, fmt.value, target))
        if others:
            _set_apart(others, manifest, folder, fmt)
        if plot is not None:
            from gdtrain.report.curveplot import plot as draw

            ranked = [row for row in rows if row.status in comparing.RANKED]  # the others have no figures
            draw(ranked, metric, f"{folder}: {len(ranked)} configurations, {sum(len(r.runs) for r in ranked)} runs", plot)
            typer.echo(f"plot: {plot}", err=fmt != Format.table)


def _set_apart(others: list[Run], manifest: dict[str, Any], folder: Path, fmt: Format) -> None:
    """The run folders beside a sweep's or study's that its manifest does not list: after the table
    (text and markdown), on stderr for csv and json."""
    from gdtrain.core.manifest import describe

    machine = fmt in (Format.csv, Format.json)
    if not machine:
        typer.echo("")
    typer.echo(f"Not part of {describe(manifest)}, so not in the table; --all includes them:", err=machine)
    for run in others:
        typer.echo(f"{'- ' if fmt == Format.markdown else '  '}{run.path.relative_to(folder)}  {run.status}", err=machine)


@app.command()
def check(config: ConfigArg, overrides: SetOpt = None) -> None:
    """Validate a config and print it fully resolved, every default filled in, with its memory estimate; touches no data."""
    from gdtrain.training.memory import describe  # no torch: check stays quick

    with user_errors():
        cfg = _load(config, overrides)
    typer.echo(dump_yaml(to_dict(cfg)).rstrip())
    if (estimate := describe(cfg)) is not None:
        typer.echo(estimate)


@data_app.command("download")
def download(
    dataset: Annotated[ImageSet, typer.Argument(metavar="DATASET", help="mnist, fashion_mnist or kmnist.", show_default=False)],
    root: Annotated[Optional[Path], typer.Option("--root", help="Folder for <Folder>/raw/ (default: $GDTRAIN_DATA, else ./data).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait on each mirror.")] = 10.0,
) -> None:
    """Download the four IDX files from the public mirrors, md5-checked, into <root>/<Folder>/raw/."""
    from gdtrain.components import idx

    folder = idx.data_root(None if root is None else str(root))
    with user_errors():
        paths = idx.download(dataset.value, folder, timeout=timeout)
    typer.echo(f"{dataset.value}: {len(paths)} files in {paths[0].parent}")


@app.command()
def bench(
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Folder holding MNIST/raw/ (default: $GDTRAIN_DATA, else ./data); random data of MNIST's shape when absent.")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "32,256",
    device: Annotated[Device, typer.Option("--device", case_sensitive=False)] = Device.auto,
    samples: Annotated[Optional[int], typer.Option("--samples", min=1000, help="Images per epoch (default: all 60,000).")] = None,
    variants: Annotated[bool, typer.Option("--variants/--no-variants", help="Also time bf16 autocast and torch.compile (compiling takes ~30 s).")] = True,
    stacked: Annotated[bool, typer.Option("--stacked/--no-stacked", help="Also time N runs trained together as one stacked model against the same N runs one after another (1-3 min).")] = True,
    runs: Annotated[str, typer.Option("--runs", help="The stacked table's numbers of runs N, comma-separated.")] = "1,8,21,64",
    stacked_steps: Annotated[int, typer.Option("--stacked-steps", min=1, help="Steps each run of the stacked table takes (not whole epochs).")] = 50,
) -> None:
    """Seconds per epoch of the tutorials' MNIST MLP: gdtrain vs hand-written loops vs the matmul floor; stacked runs."""
    from gdtrain import bench as benchmark
    from gdtrain.components.idx import data_root as default_root
    from gdtrain.training.device import resolve_device

    with user_errors():
        sizes, members = _whole_numbers("--batch-sizes", batch_sizes), _whole_numbers("--runs", runs)
        root = data_root or default_root(None)
        benchmark.run_bench(root, sizes, resolve_device(device.value), typer.echo, samples, variants,
                            members if stacked else None, stacked_steps)


def _whole_numbers(option: str, text: str) -> list[int]:
    """`text`'s comma-separated whole numbers >= 1; a UserError naming `option` otherwise."""
    numbers = [int(b) for b in text.split(",") if b.strip().isdigit() and int(b) > 0]
    if not numbers or len(numbers) != len(text.split(",")):
        raise UserError(f"{option}: expected whole numbers >= 1 separated by commas, got {text!r}")
    return numbers


@app.command("list")
def list_components() -> None:
    """List the models, datasets, optimizers, schedules and losses gdtrain knows."""
    for title, table in [("models", MODEL_HELP), ("datasets", DATASET_HELP), ("optimizers", OPTIMIZER_HELP),
                         ("schedules", SCHEDULE_HELP), ("losses", LOSS_HELP)]:
        typer.echo(f"{title}:")
        for key, text in table.items():
            typer.echo(f"  {key:<18} {text}")


def main() -> None:
    """Console-script entry point."""
    app()
