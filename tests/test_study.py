"""`gdtrain study`: the schema's refusals, the samplers, a shrunk quick study end to end, a study
killed mid-way and resumed, and a report whose every number is the one in results.json."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clihelp import gdtrain, one_error, write
from gdtrain.core.config import load_config
from gdtrain.study import spec as studying
from gdtrain.study.report import fmt

ROOT = Path(__file__).resolve().parent.parent

# The shipped quick study, shrunk: two optimizers, two trials, two seeds, two epochs.
SMALL = """
study: {name: small, seed: 0}
base:
  data: {name: moons, n_samples: 200, noise: 0.1}
  model: {name: mlp, hidden_sizes: [8, 8], activation: sigmoid}
  train: {epochs: 2, batch_size: 32, loss: bce, log_every: 2}
optimizers:
  - {name: sgd, lr: {log_uniform: [0.01, 1.0]}}
  - {name: adam, lr: [0.01, 0.05]}
budget: 2
seeds: 2
"""


def small(tmp_path: Path, text: str = SMALL, **changes: object) -> Path:
    doc = yaml.safe_load(text)
    doc.update(changes)
    return write(tmp_path, yaml.safe_dump(doc), "study.yaml")


def run_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if (p / "config.yaml").is_file())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"budgett": 3}, "budgett: unknown"),
        ({"budget": 0}, "budget: must be >= 1"),
        ({"seeds": 1}, "seeds: must be >= 2"),
        ({"sampler": "sobol"}, "sampler: must be one of"),
        ({"select": "accuracy/test"}, "select: accuracy/test is a test metric"),
        ({"select": "accuracy/train"}, "select: this task does not log 'accuracy/train'"),
        ({"optimizers": [{"name": "adamaxx", "lr": [0.1]}]}, "optimizers[0].name: unknown optimizer 'adamaxx'"),
        ({"optimizers": [{"name": "sgd", "lr": []}]}, "optimizers[0].lr: an empty list of choices"),
        ({"optimizers": [{"name": "sgd", "lr": {"log_uniform": [0.1, 0.01]}}]}, "lo must be < hi"),
        ({"optimizers": [{"name": "sgd", "lr": {"log_uniform": [0, 0.1]}}]}, "lo must be > 0"),
        ({"optimizers": [{"name": "sgd", "lr": {"normal": [0, 1]}}]}, "optimizers[0].lr: a search space is"),
        ({"optimizers": [{"name": "sgd", "lr": 0.1}]}, "optimizers[0].lr: every optimizer searches its lr"),
        (
            {"optimizers": [{"name": "sgd", "betas": [0.9, 0.99], "lr": [0.1]}]},
            "optimizers[0].betas: unknown key for sgd",
        ),
        ({"optimizers": [{"name": "sgd", "momentum": 1.5, "lr": [0.1]}]}, "optimizer.momentum: must be in [0, 1)"),
        ({"optimizers": [{"name": "sgd", "lr": [0.1]}, {"name": "sgd", "lr": [0.2]}]}, "share the label 'sgd'"),
        ({"optimizers": []}, "optimizers: "),
        ({"base": 5}, "base: must be a config file (a path relative to the study file) or an inline config"),
        ({"base": None}, "base: must be a config file"),
        ({"optimizers": [{"name": {"a": 1}, "lr": [0.1]}]}, "optimizers[0].name: unknown optimizer {'a': 1}"),
        ({"optimizers": [{"name": "sgd", "lr": [0.1, None]}]}, "optimizers[0].lr: each value must be a number > 0"),
        ({"optimizers": [{"name": "sgd", "lr": [[1]]}]}, "optimizers[0].lr: each value must be a number > 0"),
        ({"optimizers": [{"name": "sgd", "lr": ["", 0.1]}]}, "optimizers[0].lr: each value must be a number > 0"),
        (
            {"base": {"data": {"name": "function", "start": [1.0]}, "train": {"max_steps": 5}}, "select": "loss/val"},
            "select: this task does not log 'loss/val'; use one of: loss/train",
        ),
        (
            {
                "sampler": "grid",
                "budget": 3,
                "optimizers": [{"name": "sgd", "momentum": [0.0, 0.9], "lr": {"log_uniform": [0.01, 1]}}],
            },
            "cannot make exactly budget 3",
        ),
    ],
)
def test_bad_study_is_one_line_and_runs_nothing(tmp_path: Path, change: dict, message: str) -> None:
    path = small(tmp_path, **change)
    line = one_error(gdtrain("study", path, "--runs-dir", tmp_path / "runs"))
    assert message in line, line
    assert not (tmp_path / "runs").exists()


def test_set_reaches_the_base_config_and_the_study(tmp_path: Path) -> None:
    path = small(tmp_path)
    study = studying.load_study(path, ["train.epochs=3", "budget=3", "study.name=other"])
    assert study.spec.budget == 3 and study.name == "other"
    assert all(doc["train"]["epochs"] == 3 for _, _, doc in studying.tuning_points(study))
    assert "optimizer" in one_error(gdtrain("study", path, "--set", "optimizer.lr=0.1"))


def test_samplers_are_reproducible_within_bounds_and_matched_across_optimizers(tmp_path: Path) -> None:
    spec = yaml.safe_load(SMALL) | {
        "budget": 8,
        "optimizers": [
            {"name": "sgd", "lr": {"log_uniform": [1e-3, 1.0]}, "momentum": {"uniform": [0.0, 0.99]}},
            {"name": "adam", "lr": {"log_uniform": [1e-5, 1e-2]}, "betas": [[0.9, 0.999], [0.8, 0.99]]},
        ],
    }
    for sampler in ("quasirandom", "random"):
        path = write(tmp_path, yaml.safe_dump(spec | {"sampler": sampler}), f"{sampler}.yaml")
        study = studying.load_study(path)
        sgd, adam = (studying.samples(study, arm) for arm in study.arms)
        assert sgd == studying.samples(studying.load_study(path), study.arms[0])  # from study.seed alone
        assert len(sgd) == 8 and len({s["lr"] for s in sgd}) == 8
        assert all(1e-3 <= s["lr"] <= 1.0 and 0 <= s["momentum"] <= 0.99 for s in sgd)
        assert all(1e-5 <= s["lr"] <= 1e-2 and s["betas"] in ([0.9, 0.999], [0.8, 0.99]) for s in adam)
        # the same unit-cube points in each space: the lr's position on its log scale agrees

        def position(lr, lo, hi):
            return (math.log(lr) - math.log(lo)) / (math.log(hi) - math.log(lo))

        assert [round(position(s["lr"], 1e-3, 1.0), 2) for s in sgd] == [
            round(position(a["lr"], 1e-5, 1e-2), 2) for a in adam
        ]
    reseeded = studying.load_study(
        write(tmp_path, yaml.safe_dump(spec | {"study": {"name": "x", "seed": 1}}), "s1.yaml")
    )
    assert studying.samples(reseeded, reseeded.arms[0]) != studying.samples(study, study.arms[0])


def test_grid_sampler_is_a_log_grid_with_the_ends(tmp_path: Path) -> None:
    spec = yaml.safe_load(SMALL) | {
        "sampler": "grid",
        "budget": 4,
        "optimizers": [
            {"name": "sgd", "lr": {"log_uniform": [1e-3, 1.0]}},
            {"name": "sgd", "label": "momentum", "momentum": [0.5, 0.9], "lr": {"log_uniform": [0.01, 1.0]}},
        ],
    }
    study = studying.load_study(write(tmp_path, yaml.safe_dump(spec), "grid.yaml"))
    assert [s["lr"] for s in studying.samples(study, study.arms[0])] == [0.001, 0.01, 0.1, 1.0]
    assert studying.samples(study, study.arms[1]) == [
        {"lr": 0.01, "momentum": 0.5},
        {"lr": 0.01, "momentum": 0.9},
        {"lr": 1.0, "momentum": 0.5},
        {"lr": 1.0, "momentum": 0.9},
    ]


def test_reruns_use_seeds_disjoint_from_the_tuning_seed(tmp_path: Path) -> None:
    study = studying.load_study(small(tmp_path, seeds=4, study={"name": "s", "seed": 7}))
    assert {doc["experiment"]["seed"] for _, _, doc in studying.tuning_points(study)} == {7}
    assert studying.rerun_seeds(study) == [8, 9, 10, 11]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    tmp = tmp_path_factory.mktemp("study")
    path = small(tmp)
    result = gdtrain("study", path, "--runs-dir", tmp / "runs")
    assert result.exit_code == 0, result.output
    folder = tmp / "runs" / "small"
    return folder, json.loads((folder / "results.json").read_text()), result.output


def test_a_study_tunes_selects_reruns_and_reports(finished: tuple[Path, dict, str]) -> None:
    folder, results, output = finished
    runs = run_folders(folder)
    assert len(runs) == 2 * 2 + 2 * 2  # trials, then reruns
    assert set(results["optimizers"]) == {"sgd", "adam"}
    for label, entry in results["optimizers"].items():
        trials = entry["trials"]
        assert len(trials) == 2 and all(t["status"] in ("finished", "diverged") for t in trials)
        best = max(trials, key=lambda t: t["select_value"] if t["select_value"] is not None else -1)
        assert entry["chosen_trial"] == best["name"] and entry["chosen"]["lr"] == best["settings"]["lr"]
        reruns = entry["reruns"]
        assert reruns["seeds"] == [1, 2] and len(reruns["values"]) == 2
        for run_dir, value in zip(reruns["run_dirs"], reruns["values"]):
            summary = json.loads((Path(run_dir) / "summary.json").read_text())
            assert summary["final"][results["report"]] == value
            assert load_config(Path(run_dir) / "config.yaml").optimizer.lr == entry["chosen"]["lr"]
        assert reruns["ci"][0] <= reruns["mean"] <= reruns["ci"][1]
        assert len(entry["budget_curve"]) == 2
        chosen = load_config(folder / "chosen" / f"{label}.yaml")  # runnable as it is
        assert chosen.optimizer.lr == entry["chosen"]["lr"]
    assert results["pairs"] and results["pairs"][0]["verdict"] == "no detectable difference"  # 2 seeds never decide
    assert results["best"] == sorted(results["optimizers"], key=lambda n: -results["optimizers"][n]["reruns"]["mean"])
    for name in (
        "report.md",
        "results.csv",
        "lr_sensitivity.png",
        "budget_curve.png",
        "reruns.png",
        "final_per_seed.png",
    ):
        assert (folder / name).stat().st_size > 0, name
    assert "no detectable difference" in output.lower() and str(folder / "report.md") in output


def test_every_number_in_the_report_is_in_results_json(finished: tuple[Path, dict, str]) -> None:
    folder, results, _ = finished
    report = (folder / "report.md").read_text()
    for label, entry in results["optimizers"].items():
        r = entry["reruns"]
        row = next(line for line in report.splitlines() if line.startswith(f"| {entry['group']} | {label} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3:6] == [fmt(r["mean"]), f"{fmt(r['ci'][0])}–{fmt(r['ci'][1])}", fmt(r["median"])]
        assert f"lr={fmt(entry['chosen']['lr'])}" in cells[2]
    matrix = {(p["a"], p["b"]): p["p_a_beats_b"] for p in results["pairs"]}
    below = report.split("## P(row beats column)")[1]
    for (a, _), p in matrix.items():
        row = next(line for line in below.splitlines() if line.startswith(f"| {a} |"))
        assert f"{p:.2f}" in row
    numbers = set(re.findall(r"-?\d+\.\d+", report))  # a t interval may reach below 0
    allowed = (
        {fmt(v) for v in _numbers(results)} | {f"{v:.2f}" for v in _numbers(results)} | {"0.5", "0.05"}
    )  # + the rule
    assert numbers <= allowed, numbers - allowed


def _numbers(data: object) -> list[float]:
    if isinstance(data, dict):
        return [v for value in data.values() for v in _numbers(value)]
    if isinstance(data, list):
        return [v for value in data for v in _numbers(value)] + [1 - v for v in data if isinstance(v, float)]
    return [data, 1 - data] if isinstance(data, float) else []


def test_a_second_study_into_the_same_folder_is_refused(finished: tuple[Path, dict, str], tmp_path: Path) -> None:
    folder, _, _ = finished
    before = sorted(p.name for p in folder.iterdir())
    line = one_error(gdtrain("study", small(tmp_path), "--runs-dir", folder.parent))
    assert "--resume" in line
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_resumed_finished_study_runs_nothing_again(finished: tuple[Path, dict, str]) -> None:
    folder, results, _ = finished
    before = {p.name: (p / "summary.json").stat().st_mtime_ns for p in run_folders(folder)}
    result = gdtrain("study", folder.parent.parent / "study.yaml", "--runs-dir", folder.parent, "--resume")
    assert result.exit_code == 0, result.output
    assert {p.name: (p / "summary.json").stat().st_mtime_ns for p in run_folders(folder)} == before
    assert json.loads((folder / "results.json").read_text())["optimizers"] == results["optimizers"]


def test_a_diverged_trial_is_scored_worst_not_a_failure(tmp_path: Path) -> None:
    regression = """
study: {name: small, seed: 0}
base:
  data: {name: linear_regression, n_samples: 100}
  train: {epochs: 3, batch_size: 10}
optimizers:
  - {name: sgd, lr: [10.0, 0.3]}  # 10 diverges: plain GD is stable only below 2 / the largest curvature
  - {name: adam, lr: [0.01, 0.1]}
budget: 2
seeds: 2
sampler: grid
"""
    result = gdtrain("study", small(tmp_path, regression), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "runs" / "small" / "results.json").read_text())
    sgd = results["optimizers"]["sgd"]
    assert results["select"] == "loss/val"
    diverged = next(t for t in sgd["trials"] if t["settings"]["lr"] == 10.0)
    assert diverged["status"] == "diverged" and diverged["select_value"] is None
    assert sgd["chosen"]["lr"] == 0.3
    finite = next(t for t in sgd["trials"] if t["settings"]["lr"] == 0.3)["select_value"]
    worst = max(
        t["select_value"] for e in results["optimizers"].values() for t in e["trials"] if t["select_value"] is not None
    )
    assert sgd["budget_curve"][0] == pytest.approx((worst + finite) / 2)  # the diverged trial counts as the worst


def test_a_study_killed_mid_way_resumes_without_running_a_trial_twice(tmp_path: Path) -> None:
    path = small(tmp_path)
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "gdtrain", "study", str(path), "--runs-dir", str(runs)]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(list((runs / "small").glob("*/summary.json"))) < 3 and time.monotonic() < deadline:
            assert process.poll() is None, "the study ended before it could be killed"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    done = {
        p.name: (p / "summary.json").stat().st_mtime_ns
        for p in (runs / "small").glob("*")
        if (p / "summary.json").is_file()
    }
    assert 3 <= len(done) < 8
    result = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    finished_runs = [p for p in run_folders(runs / "small") if (p / "summary.json").is_file()]
    names = [re.sub(r"-\d{8}-\d{6}(-\d+)?$", "", p.name) for p in finished_runs]
    assert sorted(names) == sorted(set(names)) and len(names) == 8  # each trial and rerun finished exactly once
    assert all((runs / "small" / name / "summary.json").stat().st_mtime_ns == mtime for name, mtime in done.items())


def test_shipped_studies_load() -> None:
    for path in sorted((ROOT / "studies").glob("*.yaml")):
        study = studying.load_study(path)
        assert (
            study.spec.seeds >= 2
            and len(studying.tuning_points(study)) == study.spec.budget * len(study.arms) * study.spec.repeats
        )


def test_compare_of_seeded_runs_shows_groups_and_intervals_not_a_bare_ranking(finished: tuple[Path, dict, str]) -> None:
    folder, results, _ = finished
    result = gdtrain("compare", folder)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "higher is better" in lines[0] and "share a letter" in lines[1]  # the title, above the table
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["group", "run"])  # the header
    header = lines[start].split()
    assert header[0] == "group" and "CI" in header
    for entry in results["optimizers"].values():  # the reruns (and the chosen trial) pooled per configuration
        row = next(
            line
            for line in lines[start + 1 :]
            if f"  {entry['chosen']['name']} lr={entry['chosen']['lr']:g}  " in line and " 3 " in line
        )
        assert row.split()[0] == "a"  # 3 seeds each cannot separate them: one letter


def test_a_study_lists_its_runs_in_its_manifest(finished: tuple[Path, dict, str]) -> None:
    folder, results, _ = finished
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "study"
    assert sorted(r["run"] for r in manifest["runs"]) == [p.name for p in run_folders(folder)]
    assert all(r["status"] == "finished" for r in manifest["runs"])
    names = {p["name"] for p in manifest["points"]}  # the study's own names: adam-t01-lr0.01, adam-s1
    assert {r["point"] for r in manifest["runs"]} == names and "adam-s1" in names
    rerun = next(r for r in manifest["runs"] if r["point"] == "adam-s1")
    assert rerun["label"] == f"adam lr={results['optimizers']['adam']['chosen']['lr']:g} s1"


def test_a_stopped_study_s_resume_command_repeats_its_set_options(tmp_path: Path, monkeypatch) -> None:
    from gdtrain.execution import sweep

    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kwargs: ([], signal.SIGINT))
    result = gdtrain("study", ROOT / "studies" / "quick.yaml", "--set", "study.name=quick8", "--runs-dir", tmp_path)
    assert result.exit_code == 130
    assert result.stdout.splitlines()[-1].endswith(f"--runs-dir {tmp_path} --resume --set study.name=quick8")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_report_is_written_says_what_was_kept_and_how_to_go_on(
    tmp_path: Path, monkeypatch, signum: int
) -> None:
    from gdtrain.study import verdict

    analyse = verdict.analyse

    def interrupted(*args: object) -> object:
        os.kill(os.getpid(), signum)  # a real signal, delivered while the report phase runs
        return analyse(*args)

    monkeypatch.setattr(verdict, "analyse", interrupted)
    path = small(tmp_path)
    result = gdtrain("study", path, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 128 + signum
    last = result.stdout.splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"study small stopped by {name} while writing its report: all 8 runs are kept"), last
    assert last.endswith(f"--runs-dir {tmp_path / 'runs'} --resume")
    assert not (tmp_path / "runs" / "small" / "report.md").exists()
    monkeypatch.setattr(verdict, "analyse", analyse)
    again = gdtrain("study", path, "--runs-dir", tmp_path / "runs", "--resume")
    assert again.exit_code == 0 and "study small: tuning (phase 1 of 2), 4 runs" in again.stdout
    assert (tmp_path / "runs" / "small" / "report.md").is_file()
    assert len(run_folders(tmp_path / "runs" / "small")) == 8  # nothing trained twice


def test_a_study_of_a_test_function_selects_and_reports_on_f(tmp_path: Path) -> None:
    base = {"data": {"name": "function", "function": "quadratic", "start": [4.0]}, "train": {"max_steps": 5}}
    study = studying.load_study(small(tmp_path, base=base))
    assert (study.select, study.report) == ("loss/train", "loss/train")


def test_compare_json_rows_carry_their_letters_and_whom_they_beat(finished: tuple[Path, dict, str]) -> None:
    folder, _, _ = finished
    result = gdtrain("compare", folder, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    compared = [row for row in rows if row["group"] is not None]
    assert compared and all(row["group"] == "a" and row["beats"] == [] for row in compared)  # 3 seeds: no claim
    assert all(row["beats"] is None for row in rows if row["group"] is None)  # one seed: not compared


def test_one_optimizer_has_one_colour_in_every_picture_and_the_budget_counts_whole_trials(
    tmp_path: Path, monkeypatch
) -> None:
    from gdtrain.core import plotting
    from gdtrain.study import plot

    seen: dict = {}

    def styles(results):
        seen["results"] = results
        return seen.setdefault("styles", original(results))

    original = plot.styles
    monkeypatch.setattr(plot, "styles", styles)
    optimizers = [
        {"name": "sgd", "label": "momentum", "momentum": 0.9, "lr": {"log_uniform": [0.01, 1.0]}},
        {"name": "rmsprop", "lr": {"log_uniform": [0.001, 0.1]}},
    ]
    result = gdtrain("study", small(tmp_path, optimizers=optimizers, budget=3), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    rmsprop = seen["styles"]["rmsprop"]["color"]
    assert rmsprop == plotting.shades(["rmsprop"], [0])[0]  # compare --plot's colour of an rmsprop row
    assert rmsprop == plotting.label_styles({"rmsprop lr 0.3": "rmsprop"})["rmsprop lr 0.3"]["color"]  # paths'
    elsewhere = plotting.label_styles({"adam": "adam", "rmsprop": "rmsprop", "sgd": "sgd", "nesterov": "sgd"})
    assert elsewhere["rmsprop"]["color"] == rmsprop  # not its place in a list
    momentum = seen["styles"]["momentum"]
    assert momentum["color"] in plotting.shades(["sgd", "sgd", "sgd"], [0, 1, 2]) + plotting.shades(["sgd"], [0])
    other = seen["styles"]["rmsprop"]
    assert (momentum["marker"], momentum["ls"]) != (other["marker"], other["ls"])
    fig = plot._budget(seen["results"], seen["styles"])
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
