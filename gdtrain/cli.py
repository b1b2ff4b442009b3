"""The command line. Only this module reads argv.

Train: run, resume, sweep, study, paths, evaluate, bench. Read and explain: check, compare, list,
data download. Each command is thin: it parses its options, calls the library inside user_errors()
and prints. At the top this module imports Typer and nothing heavy, so `--help` and `--version`
start as fast as any Typer app (benchmarks/startup.py): each command imports what it needs when it
runs, the config schema (pydantic builds it at import) and torch among them, and the commands that
do not train never import torch (tests/test_startup.py). A UserError becomes one line on stderr and
exit code 2; nothing else is caught here. A command's docstring is its help, one line in the command
list however long: two pass the line length (noqa).
"""

# No `from __future__ import annotations`: Typer would then build every command's options from
# strings, evaluating each annotation again: 10 ms of `--help`'s 150 (benchmarks/startup.py).
import contextlib
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from gdtrain import __version__
from gdtrain.core.errors import StoppedElsewhere, UserError

if TYPE_CHECKING:
    from gdtrain.core.config import Config

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


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"


class Weights(str, Enum):
    best = "best"
    last = "last"


ConfigArg = Annotated[Path, typer.Argument(help="YAML experiment config, e.g. configs/smoke.yaml.", show_default=False)]
RunDirArg = Annotated[Path, typer.Argument(help="The run folder, runs/<experiment>/<run>.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY.PATH=VALUE",
        help="Override a config value; repeatable, e.g. --set optimizer.lr=0.01.",
    ),
]
RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="Folder that holds the experiments' run folders.")]
DeviceOpt = Annotated[Device | None, typer.Option("--device", help="Overrides train.device.", case_sensitive=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Processes to train with (DistributedDataParallel through torchrun; gloo on CPU, nccl on GPU).",
    ),
]
JobsOpt = Annotated[
    int,
    typer.Option(
        "--jobs",
        "-j",
        min=1,
        help="Runs at once, each in its own process with its share of the CPU threads; with --executor, jobs at once.",
    ),
]
BatchRunsOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-runs",
        metavar="N",
        help="Most runs trained together as one stacked model (compatible points only); default: as many as fit in "
        "memory; 1: each alone.",
    ),
]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor",
        metavar="local|slurm",
        show_default=False,
        help="Run each point, or each stacked group of points, as a submitit job: local (processes on this machine) "
        "or slurm (sbatch); job logs go to <experiment folder>/_jobs/. Default: in this process, or --jobs "
        "worker processes.",
    ),
]
PartitionOpt = Annotated[
    str | None,
    typer.Option("--slurm-partition", show_default=False, help="The jobs' Slurm partition (with --executor slurm)."),
]
GpusOpt = Annotated[
    int | None,
    typer.Option("--slurm-gpus-per-job", min=0, show_default=False, help="GPUs per Slurm job (with --executor slurm)."),
]
TimeOpt = Annotated[
    int | None,
    typer.Option(
        "--slurm-time",
        min=1,
        metavar="MINUTES",
        show_default=False,
        help="Each Slurm job's time limit in minutes (with --executor slurm; default 60).",
    ),
]

T = TypeVar("T")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a UserError as `error: ...` on stderr and exit 2, with no traceback."""
    try:
        yield
    except UserError as err:
        from gdtrain.training.launch import left_for_launcher

        if not left_for_launcher(str(err)):  # under `--nproc`, the launcher prints it once for all ranks
            for line in str(err).splitlines():
                typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    except StoppedElsewhere:  # another rank failed and says why; exit 0, see training/closing.py
        raise typer.Exit(0) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gdtrain {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train and compare gradient-descent optimizers from YAML experiment configs."""


def _load(config: Path, overrides: list[str] | None, device: Device | None = None) -> "Config":
    from gdtrain.core.config import load_config

    extra = [f"train.device={device.value}"] if device is not None else []
    return load_config(config, (overrides or []) + extra)


def _sets(overrides: list[str] | None) -> list[str]:
    """The --set options again, for the processes torchrun starts."""
    return [arg for o in overrides or [] for arg in ("--set", o)]


def _interruptible(train: Callable[[], T], where: Path) -> T:
    """Run `train`; a second Ctrl-C, which stops without a checkpoint, exits as closing.stopped_at_once says."""
    from gdtrain.training.closing import stopped_at_once

    try:
        return train()
    except KeyboardInterrupt:
        raise typer.Exit(stopped_at_once(where, typer.echo)) from None


@app.command()
def run(
    config: ConfigArg,
    overrides: SetOpt = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Run name (default: <optimizer>-lr<lr>).")] = None,
    runs_dir: RunsDirOpt = Path("runs"),
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
    skip_finished: Annotated[
        bool,
        typer.Option(
            "--skip-finished",
            help="Do nothing if a finished run of this exact config and name is already there (for make).",
        ),
    ] = False,
    nproc: NprocOpt = 1,
) -> None:
    """Train one experiment into runs/<experiment>/<name>-<timestamp>/ and log it to TensorBoard."""
    from gdtrain.core import runs
    from gdtrain.training import closing, launch, recipe  # torch: only the commands that train import it

    if nproc > 1:
        with user_errors():  # what one process can check, before torchrun starts several
            launch.check_shares(_load(config, overrides, device), nproc)
        raise typer.Exit(
            launch.torchrun(
                nproc,
                [
                    "run",
                    str(config),
                    *_sets(overrides),
                    "--runs-dir",
                    str(runs_dir),
                    *(["--name", name] if name else []),
                    *(["--device", device.value] if device else []),
                    *(["--quiet"] if quiet else []),
                ],
                typer.echo,
            )
        )
    with user_errors():
        cfg = _load(config, overrides, device)
        done = runs.finished_run(runs_dir, cfg, runs.run_name(cfg, name)) if skip_finished else None
        if done is not None:
            typer.echo(f"already finished, skipped: {done}")
            return
        run_dir, outcome = _interruptible(lambda: recipe.run(cfg, runs_dir, name, quiet, say=typer.echo), runs_dir)
    raise typer.Exit(closing.ending(run_dir, outcome, cfg, typer.echo))


@app.command()
def paths(
    config: ConfigArg,
    optimizers: Annotated[
        str,
        typer.Option(
            "--optimizers",
            "-o",
            help="Comma-separated names from `gdtrain list` (and momentum, nesterov; not muon, which needs "
            "matrices, nor a module:Class); NAME:LR gives that one its own lr (default: optimizer.lr).",
        ),
    ] = "sgd,momentum,rmsprop,adam",
    overrides: SetOpt = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Name of the folder with the picture (default: paths).")
    ] = None,
    runs_dir: RunsDirOpt = Path("runs"),
    device: DeviceOpt = None,
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
def resume(run_dir: RunDirArg, quiet: QuietOpt = False, nproc: NprocOpt = 1) -> None:
    """Continue an interrupted run from its newest checkpoint, into the same folder."""
    from gdtrain.training import closing, launch, recipe

    if nproc > 1:
        with user_errors():
            _load(run_dir / "config.yaml", None)
            with recipe.own(run_dir):  # refused here in one line, not in rank 0 among torchrun's reports
                pass
        raise typer.Exit(launch.torchrun(nproc, ["resume", str(run_dir), *(["--quiet"] if quiet else [])], typer.echo))
    with user_errors():
        outcome = _interruptible(lambda: recipe.resume(run_dir, quiet, say=typer.echo), run_dir)
        cfg = _load(run_dir / "config.yaml", None)
    raise typer.Exit(closing.ending(run_dir, outcome, cfg, typer.echo))


@app.command()
def evaluate(
    run_dir: RunDirArg,
    checkpoint: Annotated[
        Weights,
        typer.Option("--checkpoint", "-c", help="best: lowest validation loss; last: the final (or newest) weights."),
    ] = Weights.last,
) -> None:
    """Validation and test metrics of a saved run's best or last weights."""
    from gdtrain.training import recipe

    with user_errors():
        path, results = recipe.evaluate_run(run_dir, checkpoint.value)
    typer.echo(f"{path}: " + ", ".join(f"{tag} {value:.4f}" for tag, value in results.items()))


@app.command()
def sweep(
    config: ConfigArg,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            "-g",
            metavar="KEY.PATH=V1,V2",
            help="Values to sweep; repeatable, the runs are the cross product, e.g. --grid optimizer.lr=0.1,0.01.",
        ),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option("--seeds", min=1, help="Also run each point with this many seeds (experiment.seed, seed+1, ...)."),
    ] = None,
    jobs: JobsOpt = 1,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Skip points that already have a finished (or diverged) run with the same config."
        ),
    ] = False,
    batch_runs: BatchRunsOpt = None,
    overrides: SetOpt = None,
    runs_dir: RunsDirOpt = Path("runs"),
    executor: ExecutorOpt = None,
    slurm_partition: PartitionOpt = None,
    slurm_gpus_per_job: GpusOpt = None,
    slurm_time: TimeOpt = None,
) -> None:
    """Run a grid of configs (from --grid and the config's grid: section) into one experiment folder."""
    from gdtrain.execution import options
    from gdtrain.execution import sweep as sweeping

    with user_errors():
        execution = options.execution(
            jobs, batch_runs, executor, slurm_partition, slurm_gpus_per_job, slurm_time, resume
        )
        status, _ = sweeping.sweep_file(config, grid or [], seeds, overrides or [], runs_dir, execution, typer.echo)
    raise typer.Exit(status)


@app.command()
def study(
    study_file: Annotated[
        Path, typer.Argument(metavar="STUDY", help="YAML study file, e.g. studies/quick.yaml.", show_default=False)
    ],
    runs_dir: Annotated[
        Path, typer.Option("--runs-dir", help="Folder that holds the study folder <runs-dir>/<study-name>/.")
    ] = Path("runs"),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a study: runs already done are never run twice.")
    ] = False,
    jobs: JobsOpt = 1,
    batch_runs: BatchRunsOpt = None,
    overrides: SetOpt = None,
    executor: ExecutorOpt = None,
    slurm_partition: PartitionOpt = None,
    slurm_gpus_per_job: GpusOpt = None,
    slurm_time: TimeOpt = None,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan", help="Print the runs, a measured time estimate and what the design can claim; run nothing."
        ),
    ] = False,
) -> None:
    """Tune each optimizer on an equal budget, rerun the best over seeds, and state which is better and how surely."""
    from gdtrain.execution import options
    from gdtrain.study import runner, spec
    from gdtrain.study.report import verdict_lines

    with user_errors():
        execution = options.execution(
            jobs, batch_runs, executor, slurm_partition, slurm_gpus_per_job, slurm_time, resume
        )
        planned = spec.load_study(study_file, overrides or [])
        if plan:
            from gdtrain.study.plan import show

            return show(planned, runs_dir, execution, typer.echo)
        folder, results, code = runner.run_study(planned, runs_dir, execution, typer.echo)
    if results is None:
        raise typer.Exit(code)
    typer.echo("")
    for line in verdict_lines(results):
        typer.echo(line.replace("**", ""))
    typer.echo(f"report: {folder / 'report.md'}   (tensorboard --logdir {folder / 'board'}: one line per optimizer)")


@app.command()
def compare(
    folder: Annotated[
        Path,
        typer.Argument(
            help="A runs folder, e.g. runs/<experiment>; every run folder below it is read.", show_default=False
        ),
    ],
    metric: Annotated[
        str | None, typer.Option("--metric", "-m", help="Tag to compare (default: accuracy/val, else loss/val).")
    ] = None,
    target: Annotated[
        float | None, typer.Option("--target", help="Report the first step where the metric reaches this value.")
    ] = None,
    per_run: Annotated[
        bool,
        typer.Option("--per-run", help="One row per run instead of one per configuration (mean ± std over seeds)."),
    ] = False,
    fmt: Annotated[Format, typer.Option("--format", "-f", case_sensitive=False, help="Output format.")] = Format.table,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Also write a PNG of the loss and metric curves, overlaid (needs matplotlib)."),
    ] = None,
    everything: Annotated[
        bool,
        typer.Option("--all", help="Every run folder, also those a sweep's or study's manifest.json does not list."),
    ] = False,
) -> None:
    """Tabulate the runs under a folder by a metric, best first; optionally plot their curves."""
    from gdtrain.report.comparison import compare_folder

    with user_errors():
        compare_folder(folder, metric, target, per_run, fmt.value, plot, everything, typer.echo)


@app.command()
def check(config: ConfigArg, overrides: SetOpt = None) -> None:
    """Validate a config and print it fully resolved, every default filled in, with its memory estimate; touches no data."""  # noqa: E501
    from gdtrain.core.config import to_dict
    from gdtrain.core.yamlio import dump_yaml
    from gdtrain.training.memory import describe  # no torch: check stays quick

    with user_errors():
        cfg = _load(config, overrides)
        estimate = describe(cfg)  # a user's class takes its first step here (the state probe): its error is one line
    typer.echo(dump_yaml(to_dict(cfg)).rstrip())
    if estimate is not None:
        typer.echo(estimate)
    for line in _imports(cfg):
        typer.echo(line)


def _imports(cfg: "Config") -> list[str]:
    """`# imports signsgd from /path/signsgd.py` for each module:Class the config names: its code ran."""
    import sys

    from gdtrain.core import user

    sections = [cfg.optimizer, getattr(cfg.optimizer, "rest", None)]
    names = [s.name for s in sections if s is not None and ":" in s.name]
    lines = []
    for name in names:
        module = user.split(name)[0]
        version = user.provenance(user.load_class(name))["version"]
        where = getattr(sys.modules[module], "__file__", None) or "built in"
        lines.append(f"# imports {module} from {where}" + (f" (version {version})" if version else ""))
    return lines


@data_app.command("download")
def download(
    dataset: Annotated[
        ImageSet, typer.Argument(metavar="DATASET", help="mnist, fashion_mnist or kmnist.", show_default=False)
    ],
    root: Annotated[
        Path | None, typer.Option("--root", help="Folder for <Folder>/raw/ (default: $GDTRAIN_DATA, else ./data).")
    ] = None,
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
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data-root",
            help="Folder holding MNIST/raw/ (default: $GDTRAIN_DATA, else ./data); random data of MNIST's shape when "
            "absent.",
        ),
    ] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "32,256",
    device: Annotated[Device, typer.Option("--device", case_sensitive=False)] = Device.auto,
    samples: Annotated[
        int | None, typer.Option("--samples", min=1000, help="Images per epoch (default: all 60,000).")
    ] = None,
    variants: Annotated[
        bool,
        typer.Option(
            "--variants/--no-variants", help="Also time bf16 autocast and torch.compile (compiling takes ~30 s)."
        ),
    ] = True,
    stacked: Annotated[
        bool,
        typer.Option(
            "--stacked/--no-stacked",
            help="Also time N runs trained together as one stacked model against the same N runs one after another "
            "(1-3 min).",
        ),
    ] = True,
    runs: Annotated[
        str, typer.Option("--runs", help="The stacked table's numbers of runs N, comma-separated.")
    ] = "1,8,21,64",
    stacked_steps: Annotated[
        int,
        typer.Option("--stacked-steps", min=1, help="Steps each run of the stacked table takes (not whole epochs)."),
    ] = 50,
    load: Annotated[
        bool,
        typer.Option(
            "--load/--no-load",
            help="Also time 16 stacked runs on a quiet and on a busy machine: 1 thread, all cores, fitted (~1 min).",
        ),
    ] = False,
) -> None:
    """Seconds per epoch of the tutorials' MNIST MLP: gdtrain vs hand-written loops vs the matmul floor; stacked runs."""  # noqa: E501
    from gdtrain import bench as benchmark
    from gdtrain.components.idx import data_root as default_root
    from gdtrain.training.device import resolve_device

    with user_errors():
        sizes, members = _whole_numbers("--batch-sizes", batch_sizes), _whole_numbers("--runs", runs)
        root = data_root or default_root(None)
        benchmark.run_bench(
            root,
            sizes,
            resolve_device(device.value),
            typer.echo,
            samples,
            variants,
            members if stacked else None,
            stacked_steps,
        )
        if load:
            from gdtrain.contention import load_table

            load_table(16, typer.echo)


def _whole_numbers(option: str, text: str) -> list[int]:
    """`text`'s comma-separated whole numbers >= 1; a UserError naming `option` otherwise."""
    numbers = [int(b) for b in text.split(",") if b.strip().isdigit() and int(b) > 0]
    if not numbers or len(numbers) != len(text.split(",")):
        raise UserError(f"{option}: expected whole numbers >= 1 separated by commas, got {text!r}")
    return numbers


@app.command("list")
def list_components() -> None:
    """List the models, datasets, optimizers, schedules and losses gdtrain knows."""
    from gdtrain.core.catalog import DATASET_HELP, LOSS_HELP, MODEL_HELP, OPTIMIZER_HELP, SCHEDULE_HELP

    for title, table in [
        ("models", MODEL_HELP),
        ("datasets", DATASET_HELP),
        ("optimizers", OPTIMIZER_HELP),
        ("schedules", SCHEDULE_HELP),
        ("losses", LOSS_HELP),
    ]:
        typer.echo(f"{title}:")
        for key, text in table.items():
            typer.echo(f"  {key:<18} {text}")
        if title == "optimizers":
            typer.echo(f"  {'module:ClassName':<18} your own torch.optim.Optimizer subclass, e.g. signsgd:SignSGD")


def main() -> None:
    """Console-script entry point."""
    app()
