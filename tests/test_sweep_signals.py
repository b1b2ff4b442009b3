"""Sweeps under Ctrl-C and kill, with real processes and real signals: the running points stop
with a checkpoint, the queue is cancelled, the counts and the --resume command are printed, the
workers die with their parent, and a killed worker costs its own point only. The sweeps here train
one point at a time (--batch-runs 1); tests/test_stacked.py stops stacked groups."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clihelp import gdtrain
from gdtrain.training import checkpoints, recipe, tasks

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
LONG = ["--set", "train.epochs=5000"]  # minutes of training: every test stops it long before
MARK = "GDTRAIN_TEST_SWEEP"  # in the environment of every process a test starts, and of their children
PATIENCE = 600  # seconds to wait for what must happen before calling it a hang (2 shared cores here)


def marked(mark: str) -> dict[int, str]:
    """The live processes whose environment carries `mark`, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):  # not a process, gone, or not ours
            continue
        if f"{MARK}={mark}".encode() in environ:
            found[int(entry.name)] = cmdline
    return found


def wait_until_gone(pids: set[int] | None, mark: str) -> None:
    """Wait for the processes (all marked ones when None) to exit; fail naming any still alive."""
    deadline = time.monotonic() + PATIENCE
    while True:
        alive = {pid: cmd for pid, cmd in marked(mark).items() if pids is None or pid in pids}
        if not alive:
            return
        assert time.monotonic() < deadline, f"processes left behind: {alive}"
        time.sleep(0.1)


class Sweep:
    """`python -m gdtrain sweep ...` in a session of its own, its output in files."""

    def __init__(self, tmp_path: Path, args: list[str]) -> None:
        self.runs, self.mark = tmp_path / "runs", str(tmp_path)
        self.out, self.err = tmp_path / "stdout", tmp_path / "stderr"
        env = os.environ | {"PYTHONUNBUFFERED": "1", MARK: self.mark}
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gdtrain", "sweep", str(SMOKE), *args, "--runs-dir", str(self.runs)]
                + ([] if "--batch-runs" in args else ["--batch-runs", "1"]),
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )

    def output(self) -> str:
        return f"stdout:\n{self.out.read_text()}\nstderr:\n{self.err.read_text()}"

    def run_dirs(self) -> list[Path]:
        return sorted(p.parent for p in self.runs.glob("smoke/*/config.yaml"))

    def wait_for_checkpoints(self, count: int, name: str = "") -> list[Path]:
        """The run folders, once `count` of them (named `name`-...) hold a step checkpoint: their runs
        are training, with their own signal handlers in place."""
        deadline = time.monotonic() + PATIENCE
        while True:
            started = [d for d in self.run_dirs() if d.name.startswith(name) and list(d.glob("checkpoints/step-*.pt"))]
            if len(started) >= count:
                return started
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.02)

    def workers(self) -> set[int]:
        """The worker processes: marked, other than the sweep itself and multiprocessing's resource tracker."""
        return {
            pid for pid, cmd in marked(self.mark).items() if pid != self.process.pid and "resource_tracker" not in cmd
        }

    def holder(self, run_dir: Path) -> int:
        """The worker process with a file of `run_dir` open (its metrics.jsonl)."""
        for pid in self.workers():
            try:
                if any(os.readlink(fd).startswith(str(run_dir)) for fd in Path(f"/proc/{pid}/fd").iterdir()):
                    return pid
            except OSError:
                continue
        raise AssertionError(f"no worker holds {run_dir}")

    def finish(self) -> tuple[int, list[str]]:
        """Exit status and stdout lines, once the sweep has exited."""
        try:
            code = self.process.wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the sweep did not exit\n{self.output()}") from None
        return code, self.out.read_text().splitlines()

    def kill(self) -> None:
        """SIGKILL the sweep's process group and every process that carries its mark."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for pid in marked(self.mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def start(tmp_path) -> Iterator:
    """start(*args) runs a sweep; whatever happens, the test ends with its processes killed."""
    started: list[Sweep] = []

    def launch(*args: str) -> Sweep:
        started.append(Sweep(tmp_path, list(args)))
        return started[-1]

    yield launch
    for one in started:
        one.kill()


def statuses(run_dirs: list[Path]) -> list[str | None]:
    return [
        json.loads((d / "summary.json").read_text())["status"] if (d / "summary.json").exists() else None
        for d in run_dirs
    ]


def assert_stopped_with_checkpoints(run_dirs: list[Path]) -> None:
    """Each run says interrupted and names a checkpoint that is there."""
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "interrupted", summary
        assert Path(summary["checkpoint"]).is_file() and summary["resume"] == f"gdtrain resume {run_dir}"


# --- Ctrl-C and SIGTERM -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "sig", "code"),
    [("group", signal.SIGINT, 130), ("parent", signal.SIGINT, 130), ("parent", signal.SIGTERM, 143)],
)
def test_a_signal_stops_a_parallel_sweep_with_checkpoints_and_cancels_the_queue(start, to, sig, code):
    run = start("--grid", "optimizer.lr=0.01,0.02,0.03,0.04", *LONG, "--jobs", "2")
    running = run.wait_for_checkpoints(2)
    (os.killpg if to == "group" else os.kill)(run.process.pid, sig)  # the group: as Ctrl-C at a terminal
    status, lines = run.finish()
    assert status == code, run.output()
    assert run.run_dirs() == running  # no queued point started
    assert_stopped_with_checkpoints(running)
    assert lines[-1].startswith(
        f"sweep stopped by {sig.name}: 4 points: 0 finished, 0 diverged, 0 failed, "
        "2 interrupted, 2 not started; continue with: gdtrain sweep "
    ), run.output()
    assert lines[-1].endswith(f"--jobs 2 --batch-runs 1 --set train.epochs=5000 --runs-dir {run.runs} --resume")
    assert "Traceback" not in run.err.read_text() and "Warning" not in run.err.read_text()
    wait_until_gone(None, run.mark)  # no worker outlives the sweep


@pytest.mark.parametrize(("to", "sig", "code"), [("group", signal.SIGINT, 130), ("parent", signal.SIGTERM, 143)])
def test_a_signal_stops_a_sequential_sweep_and_says_so(start, to, sig, code):
    run = start("--grid", "optimizer.lr=0.01,0.02,0.03", *LONG)
    running = run.wait_for_checkpoints(1)
    (os.killpg if to == "group" else os.kill)(run.process.pid, sig)
    status, lines = run.finish()
    assert status == code, run.output()
    assert run.run_dirs() == running
    assert_stopped_with_checkpoints(running)
    assert lines[-1].startswith(
        f"sweep stopped by {sig.name}: 3 points: 0 finished, 0 diverged, 0 failed, "
        "1 interrupted, 2 not started; continue with: gdtrain sweep "
    ), run.output()
    assert lines[-1].endswith("--resume")


# --- kill -9 ----------------------------------------------------------------------------------------


def test_workers_die_with_a_killed_parent_and_save_a_checkpoint(start):
    run = start("--grid", "optimizer.lr=0.01,0.02,0.03,0.04", *LONG, "--jobs", "2")
    running = run.wait_for_checkpoints(2)
    pids = run.workers()
    assert len(pids) == 2, marked(run.mark)
    os.kill(run.process.pid, signal.SIGKILL)
    run.process.wait()
    wait_until_gone(pids, run.mark)  # the workers do not train on, or wait on the pool, without a parent
    assert_stopped_with_checkpoints(running)  # their parent-death signal is SIGTERM: they checkpoint first
    wait_until_gone(None, run.mark)


def test_a_killed_worker_fails_its_own_point_only_and_the_sweep_goes_on(start):
    run = start("--grid", "train.epochs=5000,1,2,3", "--jobs", "2")
    (first,) = run.wait_for_checkpoints(1, "adam-lr0.01-epochs5000-")
    os.kill(run.holder(first), signal.SIGKILL)
    status, lines = run.finish()
    assert status == 1, run.output()
    reported = {
        line.split("] ")[1].split(":")[0]: line.split(": ")[1].split()[0] for line in lines if line.startswith("[")
    }
    assert reported == {
        "adam lr=0.01 epochs=5000": "failed",
        "adam lr=0.01 epochs=1": "finished",
        "adam lr=0.01 epochs=2": "finished",
        "adam lr=0.01 epochs=3": "finished",
    }, run.output()
    failed = next(line for line in lines if line.startswith("[") and "epochs=5000:" in line)
    assert "was killed by SIGKILL while it ran" in failed and f"gdtrain resume {first}" in failed
    on_disk = dict(
        zip([d.name.rsplit("-", 2)[0].removeprefix("adam-lr0.01-") for d in run.run_dirs()], statuses(run.run_dirs()))
    )
    assert on_disk == {"epochs5000": None, "epochs1": "finished", "epochs2": "finished", "epochs3": "finished"}
    assert lines[-1].startswith("sweep done: 4 runs: 3 finished, 1 failed"), run.output()
    assert "BrokenProcessPool" not in run.output()
    wait_until_gone(None, run.mark)


def test_a_dead_worker_whose_run_finished_on_disk_reports_it_finished(tmp_path):
    runs = tmp_path / "runs"
    task = tasks.Task({}, "lr=0.1", str(runs), "smoke")
    from gdtrain.execution import workers

    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(600,))
    process.start()
    holder = workers.Worker(
        process, conn=None, task=[task], before={task.name: frozenset()}
    )  # no pipe: died() reads the disk only
    run_dir = runs / "smoke" / "lr=0.1-20260101-120000"
    run_dir.mkdir(parents=True)
    os.kill(holder.process.pid, signal.SIGKILL)
    (failed,) = holder.died()
    assert failed.status == "failed" and "was killed by SIGKILL while it ran" in failed.error
    (run_dir / "summary.json").write_text(
        json.dumps({"status": "finished", "final": {"loss/val": 0.5}, "wall_seconds": 3.0})
    )
    (finished,) = holder.died()
    assert (finished.status, finished.run_dir, finished.final) == ("finished", str(run_dir), {"loss/val": 0.5})
    resumer = workers.Worker(
        process,
        conn=None,
        task=[tasks.Task({}, "lr=0.1", str(runs), "smoke", str(run_dir))],
        before={"lr=0.1": frozenset([run_dir])},
    )  # it continued an interrupted run in its own folder
    assert resumer.died()[0].status == "finished"


def test_a_worker_whose_parent_died_before_it_asked_for_the_signal_exits(tmp_path):
    """The race PR_SET_PDEATHSIG leaves open: the parent dies before the request is made."""
    asking, alive = tmp_path / "asking", tmp_path / "alive"
    child = (
        "import os, sys, time\n"
        "from gdtrain.core.signals import die_with_parent\n"
        "parent = os.getppid()\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        "while os.getppid() == parent:\n"
        "    time.sleep(0.01)\n"
        f"open({str(asking)!r}, 'w').close()\n"
        "die_with_parent(parent)\n"
        f"open({str(alive)!r}, 'w').close()\n"
    )
    launcher = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"
        "print(child.pid)\n"
    )  # then the launcher exits: the child's parent is gone
    env = os.environ | {MARK: str(tmp_path)}
    try:
        pid = int(
            subprocess.run(
                [sys.executable, "-c", launcher], capture_output=True, text=True, env=env, timeout=PATIENCE
            ).stdout
        )
        wait_until_gone({pid}, str(tmp_path))
        assert asking.exists() and not alive.exists()
    finally:
        for orphan in marked(str(tmp_path)):
            os.kill(orphan, signal.SIGKILL)


# --- in this process: the window before a run's handlers, and --resume --------------------------------


def test_a_signal_while_a_point_is_being_set_up_stops_it_at_once(tmp_path, monkeypatch):
    real_build = recipe.build

    def build_then_signal(config):
        parts = real_build(config)
        os.kill(os.getpid(), signal.SIGINT)  # before the run has its own handlers
        return parts

    monkeypatch.setattr(recipe, "build", build_then_signal)
    try:
        result = gdtrain("sweep", SMOKE, "--grid", "optimizer.lr=0.1,0.01", "--runs-dir", tmp_path, "--batch-runs", "1")
    except KeyboardInterrupt:
        pytest.fail("the signal escaped the sweep as KeyboardInterrupt")
    assert result.exit_code == 130, result.output
    assert "lr=0.1: interrupted" in result.stdout and "stopped at once" in result.stdout
    assert "1 interrupted, 1 not started" in result.stdout.splitlines()[-1]
    assert not list(tmp_path.glob("smoke/adam-lr0.01-*"))


def test_resume_continues_interrupted_points_from_their_checkpoints(tmp_path, monkeypatch):
    real_save, saves = checkpoints.Checkpoints.save, []

    def save_then_signal(self, state, step, prune=True):
        real_save(self, state, step, prune)
        saves.append(step)
        if len(saves) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the first point's run

    monkeypatch.setattr(checkpoints.Checkpoints, "save", save_then_signal)
    args = ["sweep", SMOKE, "--grid", "optimizer.lr=0.1,0.01", "--runs-dir", tmp_path]
    stopped = gdtrain(*args)
    assert stopped.exit_code == 130, stopped.output
    (paused,) = tmp_path.glob("smoke/adam-lr0.1-*")
    assert statuses([paused]) == ["interrupted"]
    monkeypatch.undo()
    resumed = gdtrain(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert len(list(tmp_path.glob("smoke/adam-lr0.1-*"))) == 1  # continued in its own folder, not run anew
    summary = json.loads((paused / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["environment"]["resumed_from"].startswith(str(paused))
    assert resumed.stdout.splitlines()[-1].startswith("sweep done: 2 runs: 2 finished, 0 failed")
