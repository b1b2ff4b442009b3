"""Sweeps and the compare report: grids, seeds, failures that do not stop a sweep, resume, tables, plots."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from clihelp import gdtrain, one_error
from gdtrain.core.config import load_config
from gdtrain.execution import sweep
from gdtrain.training import recipe

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def run_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("config.yaml"))


# --- sweep --------------------------------------------------------------------------------------


def test_grid_runs_the_cross_product_named_by_what_differs(tmp_path):
    result = gdtrain(
        "sweep", SMOKE, "--grid", "optimizer.name=sgd,adam", "--grid", "optimizer.lr=0.1,0.01", "--runs-dir", tmp_path
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name.rsplit("-", 2)[0] for p in run_folders(tmp_path))
    assert names == ["adam-lr0.01", "adam-lr0.1", "sgd-lr0.01", "sgd-lr0.1"]
    assert "[1/4] sgd lr=0.1: finished" in result.stdout  # the label, as compare shows it
    assert all(p.parent == tmp_path / "smoke" for p in run_folders(tmp_path))  # one experiment folder
    assert result.stdout.splitlines()[-1].startswith("sweep done: 4 runs: 4 finished, 0 failed")


def test_seeds_multiply_the_points_and_set_experiment_seed(tmp_path):
    points = sweep.expand(SMOKE, ["optimizer.lr=0.1,0.01"], 3, [])
    assert [p.name for p in points][:3] == ["adam-lr0.1-s0", "adam-lr0.1-s1", "adam-lr0.1-s2"]
    assert [p.label for p in points][:3] == ["adam lr=0.1 s0", "adam lr=0.1 s1", "adam lr=0.1 s2"]
    assert [p.config.experiment.seed for p in points] == [0, 1, 2, 0, 1, 2]
    assert {p.config.optimizer.lr for p in points} == {0.1, 0.01}


def test_grid_section_in_yaml_is_a_reproducible_sweep(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        SMOKE.read_text() + "grid:\n  optimizer.name: [sgd, rmsprop]\n  model.hidden_sizes: [[8], [16, 16]]\n"
    )
    points = sweep.expand(spec, [], None, [])
    assert [p.name for p in points] == [
        "sgd-lr0.01-hidden8",
        "sgd-lr0.01-hidden16,16",
        "rmsprop-lr0.01-hidden8",
        "rmsprop-lr0.01-hidden16,16",
    ]
    assert points[1].label == "sgd lr=0.01 hidden=16,16"
    assert points[1].config.model.hidden_sizes == [16, 16]


def test_null_is_a_grid_value_where_the_setting_takes_it(tmp_path):
    result = gdtrain("sweep", SMOKE, "--grid", "train.grad_clip=null,1.0", "--runs-dir", tmp_path)
    assert result.exit_code == 0, result.output
    clips = sorted(str(load_config(p / "config.yaml").train.grad_clip) for p in run_folders(tmp_path))
    assert clips == ["1.0", "None"]
    assert "optimizer.lr: must be a number, got None" in one_error(
        gdtrain("sweep", SMOKE, "--grid", "optimizer.lr=null,0.1", "--runs-dir", tmp_path / "b")
    )


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("optimizer.lrr=0.1,0.01", "optimizer.lrr: unknown key; did you mean 'lr'?"),
        ("optimizer.lr=", "--grid optimizer.lr: an empty value"),
        ("optimizer.lr=0.1,-1", "optimizer.lr: must be > 0, got -1"),
        ("optimizer.lr", "expected key.path=v1,v2"),
    ],
)
def test_bad_grid_is_one_line_and_runs_nothing(tmp_path, grid, message):
    line = one_error(gdtrain("sweep", SMOKE, "--grid", grid, "--runs-dir", tmp_path))
    assert message in line
    assert run_folders(tmp_path) == []


def test_nothing_to_sweep_is_an_error(tmp_path):
    assert "nothing to sweep" in one_error(gdtrain("sweep", SMOKE, "--runs-dir", tmp_path))


def test_a_diverged_and_a_failed_run_do_not_stop_the_sweep(tmp_path, monkeypatch):
    real_run = recipe.run

    def flaky(config, runs_dir, run_name=None, quiet=False):
        if config.optimizer.lr == 0.02:
            raise RuntimeError("simulated crash")
        return real_run(config, runs_dir, run_name, quiet)

    monkeypatch.setattr(recipe, "run", flaky)
    regression = tmp_path / "reg.yaml"
    regression.write_text("data: {n_samples: 100}\noptimizer: {name: sgd}\ntrain: {epochs: 300, batch_size: full}\n")
    result = gdtrain(
        "sweep", regression, "--grid", "optimizer.lr=10,0.02,0.01", "--runs-dir", tmp_path, "--batch-runs", "1"
    )
    assert result.exit_code == 1
    assert "lr=10: diverged" in result.stdout and "lr=0.02: failed" in result.stdout
    assert "RuntimeError: simulated crash" in result.stdout
    assert "lr=0.01: finished" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("sweep done: 3 runs: 1 finished, 1 diverged, 1 failed")


def test_resume_skips_finished_runs_continues_killed_ones_and_redoes_those_without_a_checkpoint(tmp_path):
    args = ["sweep", SMOKE, "--grid", "optimizer.lr=0.1,0.01", "--runs-dir", tmp_path]
    assert gdtrain(*args).exit_code == 0
    first = run_folders(tmp_path)
    for run_dir in first:
        (run_dir / "summary.json").unlink()  # as if killed before the end
    shutil.rmtree(first[1] / "checkpoints")  # this one before its first checkpoint
    result = gdtrain(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert result.stdout.count(": finished") == 2
    summary = json.loads((first[0] / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["environment"]["resumed_from"].startswith(str(first[0]))
    assert len(run_folders(tmp_path)) == 3  # the first continued in place; a new run replaces the second
    again = gdtrain(*args, "--resume")
    assert again.stdout.count(": skipped") == 2 and ": finished" not in again.stdout
    manifest = json.loads((tmp_path / "smoke" / "manifest.json").read_text())
    assert sorted(r["status"] for r in manifest["runs"]) == ["finished", "finished"]  # the skipped runs are members
    other = gdtrain(*args, "--resume", "--set", "train.epochs=2")  # another config: nothing to skip
    assert other.stdout.count(": finished") == 2


def test_parallel_jobs_match_a_serial_sweep(tmp_path):
    args = ["sweep", SMOKE, "--grid", "optimizer.name=sgd,adam"]
    assert gdtrain(*args, "--runs-dir", tmp_path / "serial").exit_code == 0
    parallel = gdtrain(*args, "--runs-dir", tmp_path / "parallel", "--jobs", "2")
    assert parallel.exit_code == 0, parallel.output
    finals = lambda root: sorted(  # noqa: E731
        (p.name.rsplit("-", 2)[0], json.loads((p / "summary.json").read_text())["final"]["loss/val"])
        for p in run_folders(root)
    )
    serial, jobs = finals(tmp_path / "serial"), finals(tmp_path / "parallel")
    assert [name for name, _ in serial] == [name for name, _ in jobs]
    assert [v for _, v in serial] == pytest.approx([v for _, v in jobs], rel=1e-4)  # threads may round differently


# --- compare ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """sgd and adam at one lr, two seeds each: four finished runs of one experiment."""
    root = tmp_path_factory.mktemp("runs")
    result = gdtrain("sweep", SMOKE, "--grid", "optimizer.name=sgd,adam", "--seeds", "2", "--runs-dir", root)
    assert result.exit_code == 0, result.output
    return root / "smoke"


def test_a_sweep_lists_its_runs_and_their_labels_in_its_manifest(swept):
    manifest = json.loads((swept / "manifest.json").read_text())
    assert manifest["kind"] == "sweep" and manifest["command"].startswith("gdtrain ")
    assert [p["label"] for p in manifest["points"]] == [
        "sgd lr=0.01 s0",
        "sgd lr=0.01 s1",
        "adam lr=0.01 s0",
        "adam lr=0.01 s1",
    ]
    assert sorted(r["run"] for r in manifest["runs"]) == [p.name for p in run_folders(swept)]
    assert all(r["run"].startswith(r["point"] + "-") and r["status"] == "finished" for r in manifest["runs"])
    assert {r["label"] for r in manifest["runs"]} == {p["label"] for p in manifest["points"]}


def test_a_stray_run_beside_a_sweep_is_listed_apart_not_pooled(swept, tmp_path):
    root = tmp_path / "smoke"
    shutil.copytree(swept, root)
    adam = next(p for p in run_folders(root) if p.name.startswith("adam-lr0.01-s0-"))
    stray = root / "adam-lr0.01-20991231-235959"  # `gdtrain run` of the same config, as `make demo` might
    shutil.copytree(adam, stray)
    result = gdtrain("compare", root)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-2].startswith("Not part of the sweep of ") and "(manifest.json)" in lines[-2]
    assert lines[-1].split() == [stray.name, "finished"]
    assert "2 seeds" in result.stdout and "3 seeds" not in result.stdout  # not pooled with the sweep's adam
    rows = json.loads((machine := gdtrain("compare", root, "--format", "json")).stdout)
    assert sum(r["seeds"] for r in rows) == 4 and stray.name in machine.stderr
    everything = json.loads(gdtrain("compare", root, "--all", "--format", "json").stdout)
    # the stray copy repeats adam's seed 0: the same observation, merged, not a fifth seed
    assert sum(r["seeds"] for r in everything) == 4 and sum(r["repeats merged"] for r in everything) == 1


def test_a_run_of_the_sweep_still_training_is_its_own_though_not_listed_yet(swept, tmp_path):
    root = tmp_path / "smoke"
    shutil.copytree(swept, root)
    started = json.loads((root / "manifest.json").read_text())["started"]
    sgd = next(p for p in run_folders(root) if p.name.startswith("sgd-lr0.01-s1-"))
    running = root / f"sgd-lr0.01-s1-{started}-1"  # named by a point, made after the sweep started
    shutil.copytree(sgd, running)
    (running / "summary.json").unlink()
    result = gdtrain("compare", root, "--per-run", "--format", "json")
    assert sorted(r["status"] for r in json.loads(result.stdout)) == ["finished"] * 4 + ["unfinished"]
    assert "Not part" not in result.stderr


def test_compare_pools_seeds_and_sorts_by_the_metric(swept):
    result = gdtrain("compare", swept, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["optimizer"] for r in rows] in (["adam", "sgd"], ["sgd", "adam"])
    assert all(r["seeds"] == 2 and r["status"] == "finished" for r in rows)
    assert rows[0]["final"] >= rows[1]["final"]  # accuracy/val, higher first
    assert rows[0]["final std"] is not None
    summaries = [json.loads((p / "summary.json").read_text()) for p in run_folders(swept)]
    adam = [s["final"]["accuracy/val"] for s, p in zip(summaries, run_folders(swept)) if "adam" in p.name]
    assert next(r for r in rows if r["optimizer"] == "adam")["final"] == pytest.approx(sum(adam) / 2)


def test_compare_per_run_and_loss_metric_sort_ascending(swept):
    result = gdtrain("compare", swept, "--per-run", "--metric", "loss/val", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 4 and all(r["seeds"] == "1" for r in rows)
    finals = [float(r["final"]) for r in rows]
    assert finals == sorted(finals)
    assert sorted(r["run"] for r in rows) == ["adam lr=0.01 s0", "adam lr=0.01 s1", "sgd lr=0.01 s0", "sgd lr=0.01 s1"]


def test_steps_to_target_come_from_the_logged_curve(swept):
    rows = json.loads(gdtrain("compare", swept, "--target", "0.0", "--format", "json").stdout)
    assert all(r["reached target"] == 2 and r["steps to target"] > 0 for r in rows)  # the first epoch reaches 0
    never = json.loads(gdtrain("compare", swept, "--target", "1.5", "--format", "json").stdout)
    assert all(r["reached target"] == 0 and r["steps to target"] is None for r in never)


def test_markdown_table_has_a_header_and_a_row_per_configuration(swept):
    result = gdtrain("compare", swept, "--format", "markdown")
    lines = result.stdout.splitlines()
    assert "| run | final | 95% CI | best (epoch) | samples/s |" in lines[0]  # 2 seeds each: judged
    assert lines[1].startswith("|---|") and len(lines) == 4
    assert "batch 16, 2 seeds, finished." in result.stderr  # said once, above the table, on stderr


def test_unfinished_and_corrupt_runs_are_reported_not_fatal(swept, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(swept, root)
    folders = run_folders(root)
    (folders[0] / "summary.json").unlink()
    (folders[1] / "summary.json").write_text("{not json")
    result = gdtrain("compare", root, "--per-run", "--format", "json")
    assert result.exit_code == 0, result.output
    statuses = sorted(r["status"] for r in json.loads(result.stdout))
    assert statuses == ["corrupt", "finished", "finished", "unfinished"]


def test_only_finished_and_diverged_runs_are_ranked_the_others_listed_below_without_figures(swept, tmp_path):
    root = tmp_path / "ranked"
    shutil.copytree(swept, root)
    folders = run_folders(root)
    for extra in folders[:2]:
        shutil.copytree(extra, extra.with_name(extra.name + "-1"))  # six runs
    folders = run_folders(root)
    for folder, status in zip(folders, ["finished", "diverged", "interrupted", "failed", "unfinished", "corrupt"]):
        metrics = folder / "metrics.jsonl"  # every curve but the finished run's looks better than all
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        if status != "finished":
            metrics.write_text(
                "".join(json.dumps(r | ({"accuracy/val": 1.0} if "accuracy/val" in r else {})) + "\n" for r in rows)
            )
        summary = json.loads((folder / "summary.json").read_text())
        if status == "unfinished":
            (folder / "summary.json").unlink()
        elif status == "corrupt":
            (folder / "summary.json").write_text("{not json")
        else:
            (folder / "summary.json").write_text(json.dumps(summary | {"status": status}))
    result = gdtrain("compare", root, "--per-run", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    # ranked: the diverged run below the finished one, whatever its curve said, and without figures
    assert [r["status"] for r in rows[:2]] == ["finished", "diverged"]
    assert sorted(r["status"] for r in rows[2:]) == ["corrupt", "failed", "interrupted", "unfinished"]
    assert rows[0]["final"] is not None and rows[1]["final"] is None and rows[1]["diverged"] == 1
    assert all(r[c] is None for r in rows[2:] for c in ("final", "best", "best epoch", "wall s", "samples/s"))
    table = gdtrain("compare", root, "--per-run").stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("run "))
    assert [line.split()[-1] for line in table[header + 1 :]] == [r["status"] for r in rows]


def test_runs_without_the_metric_are_noted_and_left_out(swept, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(swept, root / "smoke")
    regression = tmp_path / "reg.yaml"
    regression.write_text("data: {n_samples: 50}\ntrain: {epochs: 1}\n")
    assert gdtrain("run", regression, "--runs-dir", root, "--quiet").exit_code == 0
    result = gdtrain("compare", root, "--format", "json")
    assert result.exit_code == 0
    assert "has no accuracy/val" in result.stderr and result.stderr.startswith("note: ")
    assert sum(r["seeds"] for r in json.loads(result.stdout)) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "accuracy/tset"], "--metric accuracy/tset: no run under"),
    ],
)
def test_compare_bad_metric(swept, args, message):
    assert message in one_error(gdtrain("compare", swept, *args))


def test_compare_an_empty_or_missing_folder(tmp_path):
    assert "no run folders" in one_error(gdtrain("compare", tmp_path))
    assert "no such folder" in one_error(gdtrain("compare", tmp_path / "nope"))


def test_plot_writes_a_png(swept, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cmp.png"
    result = gdtrain("compare", swept, "--plot", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_without_matplotlib_says_what_to_install(swept, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    line = one_error(gdtrain("compare", swept, "--plot", tmp_path / "x.png"))
    assert "pip install 'gdtrain[plot]'" in line
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("spec", sorted((SMOKE.parents[1] / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweeps_expand_to_valid_points(spec):
    points = sweep.expand(spec, [], None, [])
    assert len(points) > 1 and len({p.name for p in points}) == len(points)


def test_run_skip_finished_makes_make_targets_idempotent(tmp_path):
    args = ["run", SMOKE, "--runs-dir", tmp_path, "--quiet", "--skip-finished"]
    assert gdtrain(*args).exit_code == 0
    second = gdtrain(*args)
    assert second.exit_code == 0 and "already finished, skipped" in second.stdout
    assert len(run_folders(tmp_path)) == 1
    assert gdtrain(*args, "--set", "optimizer.lr=0.02").exit_code == 0  # another config runs
    assert len(run_folders(tmp_path)) == 2


def test_a_stacked_member_that_ends_early_is_said_when_it_ends_and_piped_output_has_no_bar(tmp_path):
    result = gdtrain(
        "sweep", SMOKE, "--grid", "optimizer.lr=0.01,1e30", "--set", "train.epochs=3", "--runs-dir", tmp_path
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert "1 group(s) of 2 runs" in result.stdout
    assert lines[0].startswith("[1/2] adam lr=1e+30: diverged")  # while lr=0.01, first in the grid, trained on
    assert lines[1].startswith("[2/2] adam lr=0.01: finished")
    assert "\r" not in result.output and "step/s" not in result.output
