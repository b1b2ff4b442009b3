"""Growing and changing a finished study: `--resume --set seeds=N` or `repeats=R` trains only the
new runs; a resume under a changed study says in one line what changed and what it reuses, and
says nothing when nothing changed; a repeated study killed with SIGKILL and resumed gives the
numbers of an uninterrupted one."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from clihelp import gdtrain, write
from prochelp import launched
from test_study import SMALL, run_folders, small


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished SMALL study (2 optimizers, 2 trials, 2 seeds): its study file's folder."""
    tmp = tmp_path_factory.mktemp("grown")
    result = gdtrain("study", small(tmp), "--runs-dir", tmp / "runs")
    assert result.exit_code == 0, result.output
    return tmp


@pytest.fixture
def copy(done: Path, tmp_path: Path) -> Path:
    """A copy of the finished study for one test to change (mtimes kept): its study file's folder."""
    shutil.copytree(done, tmp_path, dirs_exist_ok=True)
    return tmp_path


def summaries(folder: Path) -> dict[str, int]:
    return {p.name: (p / "summary.json").stat().st_mtime_ns for p in run_folders(folder)}


def resumed(tmp: Path, *sets: str):
    """`gdtrain study study.yaml --runs-dir runs --resume --set ...`, in this process: its result and lines."""
    args = [arg for s in sets for arg in ("--set", s)]
    result = gdtrain("study", tmp / "study.yaml", "--runs-dir", tmp / "runs", "--resume", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def trained(lines: list[str]) -> list[str]:
    """The runs a study's output says it trained (`[3/6] adam-s3: finished  ...`)."""
    return [line.split()[1].rstrip(":") for line in lines if line.startswith("[") and "skipped" not in line]


def changed(lines: list[str]) -> list[str]:
    return [line for line in lines if "changed since it last ran" in line]


def test_more_seeds_then_more_repeats_train_only_the_new_runs(copy: Path) -> None:
    folder = copy / "runs" / "small"
    before = summaries(folder)
    lines = resumed(copy, "seeds=3")
    assert changed(lines) == ["study small: changed since it last ran: seeds 2 → 3; reusing 8 of 10 runs (2 to run)"]
    assert sorted(trained(lines)) == ["adam-s3", "sgd-s3"]
    after = summaries(folder)
    assert {name: after[name] for name in before} == before  # every earlier run untouched
    results = json.loads((folder / "results.json").read_text())
    assert all(entry["reruns"]["seeds"] == [1, 2, 3] for entry in results["optimizers"].values())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(r["run"] for r in manifest["runs"]) == sorted(after)  # the reused runs are members too

    lines = resumed(copy, "seeds=3", "repeats=2")
    assert changed(lines) == [
        "study small: changed since it last ran: repeats 1 → 2; reusing 10 of 20 runs "
        "(4 to run; 6 reruns depend on what the new trials choose)"
    ]
    reruns = {f"{o}-r2-s{seed}" for o in ("sgd", "adam") for seed in (1002, 1003, 1004)}
    assert set(trained(lines)) - reruns == {name for name in trained(lines) if "-r2-t0" in name}
    assert len(trained(lines)) == 4 + 6 and reruns <= set(trained(lines))
    assert {name: t for name, t in summaries(folder).items() if name in after} == after
    results = json.loads((folder / "results.json").read_text())
    assert results["repeats"] == 2 and all(len(e["reruns"]["values"]) == 6 for e in results["optimizers"].values())

    lines = resumed(copy, "seeds=3", "repeats=2")  # nothing changed beyond --resume: no line, nothing trained
    assert changed(lines) == [] and trained(lines) == []
    assert json.loads((folder / "study.json").read_text())["repeats"] == 2


def test_a_changed_study_says_what_changed_and_reuses_only_unchanged_runs(copy: Path) -> None:
    spec = yaml.safe_load(SMALL)
    spec["optimizers"][0]["lr"] = {"log_uniform": [0.01, 0.5]}
    write(copy, yaml.safe_dump(spec), "study.yaml")
    lines = resumed(copy)
    assert changed(lines) == [
        "study small: changed since it last ran: optimizers[sgd].lr.log_uniform [0.01, 1.0] → [0.01, 0.5]; "
        "reusing 4 of 8 runs (2 to run; 2 reruns depend on what the new trials choose)"
    ]
    # sgd's trials drew new lrs, so its chosen lr is new: its trials and reruns train, adam's are reused
    assert sorted(trained(lines)) == ["sgd-s1", "sgd-s2", *sorted(n for n in trained(lines) if n.startswith("sgd-t0"))]
    assert len(trained(lines)) == 4
    assert len([line for line in lines if line.endswith(": skipped")]) == 4
    stored = json.loads((copy / "runs" / "small" / "study.json").read_text())
    assert stored["optimizers"][0]["lr"] == {"log_uniform": [0.01, 0.5]}  # the new definition, once it ran


@pytest.mark.parametrize(
    "sets, line",
    [
        (["train.epochs=3"], "base.train.epochs 2 → 3; reusing 0 of 8 runs (4 to run; 4 reruns depend"),
        (["budget=3", "study.seed=0"], "budget 2 → 3; reusing 4 of 10 runs (2 to run; 4 reruns depend"),
        (["report=loss/val"], "report accuracy/val → loss/val; reusing 8 of 8 runs (0 to run)"),
    ],
)
def test_a_changed_study_is_announced_in_one_line_before_anything_runs(
    copy: Path, monkeypatch: pytest.MonkeyPatch, sets: list[str], line: str
) -> None:
    from gdtrain.execution import sweep

    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kwargs: ([], signal.SIGINT))
    args = [arg for s in sets for arg in ("--set", s)]
    result = gdtrain("study", copy / "study.yaml", "--runs-dir", copy / "runs", "--resume", *args)
    assert result.exit_code == 130
    announced = changed(result.stdout.splitlines())
    assert len(announced) == 1 and announced[0].startswith(f"study small: changed since it last ran: {line}")
    assert result.stdout.splitlines()[-1].endswith("--resume " + " ".join(f"--set {s}" for s in sets))


def test_a_resume_without_a_stored_definition_says_nothing(copy: Path) -> None:
    (copy / "runs" / "small" / "study.json").unlink()  # a study run before study.json existed
    assert changed(resumed(copy, "seeds=3")) == []
    assert json.loads((copy / "runs" / "small" / "study.json").read_text())["seeds"] == 3


def test_a_repeated_study_killed_in_its_reruns_resumes_to_the_uninterrupted_numbers(tmp_path: Path) -> None:
    path = small(tmp_path, repeats=2)
    study = ["-m", "gdtrain", "study", path, "--batch-runs", "1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    with launched(*study, "--runs-dir", whole) as straight:
        assert straight.finish().returncode == 0
    started = time.monotonic()
    with launched(*study, "--runs-dir", cut) as process:
        reruns = lambda: [p for p in (cut / "small").glob("*-s*-*") if "-t0" not in p.name]  # noqa: E731
        while not any((p / "summary.json").is_file() for p in reruns()) and time.monotonic() < started + 300:
            assert process.process.poll() is None, process.output(process.err)
            time.sleep(0.02)
        process.kill()  # SIGKILL to its whole process group
    assert 1 <= sum((p / "summary.json").is_file() for p in reruns()) < 8, "killed too late to test a resume"
    with launched(*study, "--runs-dir", cut, "--resume") as again:
        finish = again.finish()
        assert finish.returncode == 0, finish.stderr
    assert "changed since it last ran" not in finish.stdout
    assert numbers(cut / "small") == numbers(whole / "small")


def numbers(folder: Path) -> dict:
    """What a study concludes: each optimizer's rerun values and letter, each pair's P and p-values; and
    every final figure of each rerun (its loss too: an accuracy on 40 points would hide a last digit)."""
    results = json.loads((folder / "results.json").read_text())
    optimizers = {
        label: (e["reruns"]["values"], e["group"], [final(Path(run)) for run in e["reruns"]["run_dirs"]])
        for label, e in results["optimizers"].items()
    }
    pairs = [(p["a"], p["b"], p["p_a_beats_b"], p["p_value"], p["p_adjusted"], p["verdict"]) for p in results["pairs"]]
    return {"optimizers": optimizers, "pairs": pairs, "best": results["best"]}


def final(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["final"]
