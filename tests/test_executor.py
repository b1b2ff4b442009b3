"""`sweep --executor local|slurm`: the points as submitit jobs. Through the local executor, with real
processes: the same runs as the default path, --resume, a job that crashes or is killed, Ctrl-C. Slurm
is not on this machine: its jobs' sbatch script is checked with a stand-in sbatch that runs nothing."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from clihelp import gdtrain, one_error
from gdtrain.execution import executors
from gdtrain.training.tasks import Task
from prochelp import launched, tagged

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
PATIENCE = 600  # seconds to wait for what must happen before calling it a hang (2 shared cores here)


def run_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("config.yaml"))


def finals(folder: Path) -> dict[str, dict[str, float]]:
    """Each run's final metrics by its point's name."""
    return {
        run.name.rsplit("-", 2)[0]: json.loads((run / "summary.json").read_text())["final"]
        for run in run_folders(folder)
    }


def members(folder: Path) -> list[tuple[str, str, str]]:
    """(point, label, status) of each run the manifest lists."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return sorted((run["point"], run["label"], run["status"]) for run in manifest["runs"])


def test_a_local_job_gives_the_run_of_the_default_path_and_resume_skips_finished_points(tmp_path):
    """A sweep runs in this process; one of its runs is taken away, and --resume through the local
    executor runs that point again as a job: the folder's runs, manifest and compare are as before."""
    args = ["sweep", SMOKE, "--grid", "optimizer.name=sgd,adam", "--runs-dir", tmp_path]
    assert gdtrain(*args).exit_code == 0
    folder = tmp_path / "smoke"
    before = finals(folder), members(folder), gdtrain("compare", folder, "--format", "json").stdout
    (adam,) = folder.glob("adam-lr0.01-*")
    adam.rename(tmp_path / adam.name)  # as if that point had never run
    result = gdtrain(*args, "--executor", "local", "--resume")
    assert result.exit_code == 0, result.output
    assert f"as local jobs (logs in {folder / '_jobs'}/)" in result.stdout.splitlines()[0]
    assert "sgd lr=0.01: skipped" in result.stdout and "adam lr=0.01: finished" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("sweep done: 2 runs: 1 finished, 0 failed, 1 skipped")
    assert len(list((folder / "_jobs").glob("*_0_log.out"))) == 1  # one job: the finished point sent none
    after = finals(folder), members(folder), gdtrain("compare", folder, "--format", "json").stdout
    assert after[1] == before[1]
    assert after[0].keys() == before[0].keys()
    for name, metrics in before[0].items():  # the same code ran: the same numbers, up to the threads' rounding
        assert after[0][name] == pytest.approx(metrics, rel=1e-4)
    rows = [[(row["run"], row["status"], row["final"]) for row in json.loads(table)] for table in (before[2], after[2])]
    assert [row[:2] for row in rows[1]] == [row[:2] for row in rows[0]]
    assert [row[2] for row in rows[1]] == pytest.approx([row[2] for row in rows[0]], rel=1e-4)


CRASHES = """\
import os, signal
if "SUBMITIT_LOCAL_JOB_ID" in os.environ:  # in a job's process only: a crash outside the run, or a kill
    from gdtrain.training import tasks
    real_run_point = tasks.run_point

    def crashing(task):
        if task.name.startswith("adam-lr0.02"):
            raise RuntimeError("simulated crash outside the run")
        if task.name.startswith("adam-lr0.03"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_run_point(task)

    tasks.run_point = crashing
"""


def test_a_job_that_crashes_or_is_killed_fails_its_own_point_naming_its_log(tmp_path, monkeypatch):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(CRASHES)  # loaded by the jobs' Python at its start
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), *sys.path]))
    result = gdtrain(
        "sweep",
        SMOKE,
        "--grid",
        "optimizer.lr=0.01,0.02,0.03",
        "--executor",
        "local",
        "--jobs",
        "3",
        "--batch-runs",
        "1",  # each point alone, through tasks.run_point, which the hook breaks
        "--runs-dir",
        tmp_path / "runs",
    )
    assert result.exit_code == 1, result.output
    lines = {line.split("] ")[1].split(":")[0]: line for line in result.stdout.splitlines() if line.startswith("[")}
    assert ": finished" in lines["adam lr=0.01"]
    raised, killed = lines["adam lr=0.02"], lines["adam lr=0.03"]
    assert ": failed" in raised and "raised RuntimeError: simulated crash outside the run" in raised
    assert ": failed" in killed and "ended without a result (its process was killed or died)" in killed
    log = Path(raised.split("its log: ")[1])
    assert log.parent == tmp_path / "runs" / "smoke" / "_jobs" and "simulated crash" in log.read_text()
    assert Path(killed.split("its log: ")[1]).is_file()
    assert result.stdout.splitlines()[-1].startswith("sweep done: 3 runs: 1 finished, 2 failed")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "ray"], "error: --executor 'ray': unknown executor; choose one of: local, slurm"),
        (
            ["--slurm-partition", "gpu", "--slurm-time", "30"],
            "error: --slurm-partition, --slurm-time: Slurm options need --executor slurm; add it, or leave them out",
        ),
        (
            ["--executor", "local", "--slurm-gpus-per-job", "1"],
            "error: --slurm-gpus-per-job: Slurm options need --executor slurm; add it, or leave them out",
        ),
        (
            ["--executor", "slurm"],
            "error: --executor slurm: Slurm's sbatch and srun not found on PATH; run gdtrain on a "
            "Slurm login node, or use --executor local",
        ),
    ],
)
@pytest.mark.parametrize("command", ["sweep", "study"])
def test_bad_executor_options_are_one_line_before_anything_is_made(tmp_path, monkeypatch, command, args, message):
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    target = (
        [SMOKE, "--grid", "optimizer.lr=0.1,0.01"]
        if command == "sweep"
        else [Path(__file__).resolve().parents[1] / "studies" / "quick.yaml"]
    )
    assert one_error(gdtrain(command, *target, *args, "--runs-dir", tmp_path / "runs")) == message
    assert not (tmp_path / "runs").exists()


SBATCH = """\
#!/bin/sh
cp "$1" "{copy}"
echo "Submitted batch job 4242"
"""


def test_slurm_jobs_are_one_array_with_the_options_and_their_logs_in_the_experiment_folder(tmp_path, monkeypatch):
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    for tool, text in [("sbatch", SBATCH.format(copy=script)), ("srun", "#!/bin/sh\nexit 1\n")]:
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = executors.job_options("slurm", "gpu", 2, 30)
    assert options.args() == [
        "--executor",
        "slurm",
        "--slurm-partition",
        "gpu",
        "--slurm-gpus-per-job",
        "2",
        "--slurm-time",
        "30",
    ]
    folder = tmp_path / "runs" / "smoke" / executors.JOBS
    units = [[Task({}, f"adam-lr0.0{i}", str(tmp_path / "runs"), "smoke")] for i in (1, 2, 3)]
    submitted = executors.submit(executors.make_executor(options, folder, jobs=2), units, None, local=False)
    assert [one.job.job_id for one in submitted] == ["4242_0", "4242_1", "4242_2"]
    sbatch = script.read_text().splitlines()
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --time=30",
        "#SBATCH --nodes=1",
        "#SBATCH --array=0-2%2",
        f"#SBATCH --output={folder}/%A_%a_0_log.out",
    ]:
        assert line in sbatch
    assert submitted[1].job.paths.stderr == folder / "4242_1_0_log.err"


def test_a_study_passes_the_executor_on_and_names_it_in_its_resume_command(tmp_path, monkeypatch):
    from gdtrain.execution import sweep

    seen = []

    def stopped(points, runs_dir, execution, report, manifest=None, say=None, title=""):
        seen.append(execution.job_options)
        return [], signal.SIGINT

    monkeypatch.setattr(sweep, "run_sweep", stopped)
    result = gdtrain(
        "study",
        Path(__file__).resolve().parents[1] / "studies" / "quick.yaml",
        "--executor",
        "local",
        "--jobs",
        "2",
        "--runs-dir",
        tmp_path,
    )
    assert result.exit_code == 130
    assert seen == [executors.JobOptions("local")]
    assert f"as local jobs (logs in {tmp_path / 'quick' / '_jobs'}/)" in result.stdout
    assert result.stdout.splitlines()[-1].endswith(f"--runs-dir {tmp_path} --resume --jobs 2 --executor local")


def wait_for_checkpoints(runs: Path, count: int, process) -> list[Path]:
    """The run folders, once `count` of them hold a step checkpoint: their runs train, their handlers in place."""
    deadline = time.monotonic() + PATIENCE
    while True:
        started = [d for d in run_folders(runs) if list(d.glob("checkpoints/step-*.pt"))]
        if len(started) >= count:
            return started
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)


def test_ctrl_c_stops_local_jobs_with_checkpoints_and_leaves_no_process(tmp_path):
    runs = tmp_path / "runs"
    args = [
        "-m",
        "gdtrain",
        "sweep",
        SMOKE,
        "--grid",
        "optimizer.lr=0.01,0.02,0.03",
        "--set",
        "train.epochs=5000",
        "--executor",
        "local",
        "--jobs",
        "2",
        "--batch-runs",
        "1",
        "--runs-dir",
        runs,
    ]  # a job per point
    with launched(*args) as sweep:
        running = wait_for_checkpoints(runs, 2, sweep.process)
        assert len(tagged(sweep.tag)) == 5  # the sweep, and per job submitit's controller and the job's process
        os.killpg(sweep.process.pid, signal.SIGINT)  # the group: as Ctrl-C at a terminal
        done = sweep.finish(PATIENCE)
        assert tagged(sweep.tag) == {}, done  # no job outlives the sweep
    assert done.returncode == 130, done
    assert run_folders(runs) == running  # the queued point never started
    for run_dir in running:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "interrupted" and Path(summary["checkpoint"]).is_file(), summary
    logs = [log.read_text() for log in (runs / "smoke" / "_jobs").glob("*_0_log.err")]
    assert len(logs) == 2 and all(log.count("SIGINT: stopping after this step") == 1 for log in logs), logs  # once
    last = done.stdout.splitlines()[-1]
    assert last.startswith(
        "sweep stopped by SIGINT: 3 points: 0 finished, 0 diverged, 0 failed, 2 interrupted, "
        "1 not started; continue with: gdtrain sweep "
    ), done.stdout
    assert last.endswith(f"--jobs 2 --batch-runs 1 --executor local --set train.epochs=5000 --runs-dir {runs} --resume")
    assert "Traceback" not in done.stderr


WATCHER = """\
import os, signal, sys, time
from gdtrain.core.signals import die_with_process
signal.signal(signal.SIGTERM, lambda signum, frame: (print("SIGTERM", flush=True), os._exit(0)))
die_with_process(int(sys.argv[1]))
print("watching", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("when", ["while it runs", "before it runs"])
def test_a_local_job_takes_sigterm_when_its_sweep_dies_even_by_kill_9(tmp_path, when):
    import subprocess

    sweep = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if when == "before it runs":
        sweep.kill()
        sweep.wait()
    job = subprocess.Popen([sys.executable, "-c", WATCHER, str(sweep.pid)], stdout=subprocess.PIPE, text=True)
    try:
        if when == "while it runs":
            assert job.stdout.readline() == "watching\n"
            sweep.kill()
            sweep.wait()
        assert job.stdout.readline() == "SIGTERM\n"
        assert job.wait(PATIENCE) == 0
    finally:
        for process in (sweep, job):
            process.kill()
            process.wait()
