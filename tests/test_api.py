"""The Python API (gdtrain/api.py): a config from a dict or a file with overrides, a sweep, a study and
rows, each the command's runs and numbers; a mistake raises UserError with the command's one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import gdtrain
from clihelp import gdtrain as cli
from clihelp import one_error

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def test_import_gdtrain_loads_neither_torch_nor_the_schema():
    code = "import sys, gdtrain; print('torch' in sys.modules, 'gdtrain.core.config' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_a_run_from_a_dict_with_overrides_is_its_run_folder(tmp_path):
    doc = yaml.safe_load(SMOKE.read_text())
    result = gdtrain.run(doc, overrides=["optimizer.lr=0.02", "train.epochs=2"], runs_dir=tmp_path)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert result.status == summary["status"] == "finished"
    assert result.final == summary["final"] and result.best == summary["best"]
    assert result.run_dir.parent == tmp_path / "smoke" and "lr0.02" in result.run_dir.name
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["train"]["epochs"] == 2
    again = gdtrain.run(SMOKE, overrides=["optimizer.lr=0.02", "train.epochs=2"], runs_dir=tmp_path / "file")
    assert again.final["loss/train"] == result.final["loss/train"]  # the file and the dict are one config


def test_a_mistake_raises_the_command_s_one_line(tmp_path):
    line = one_error(cli("run", SMOKE, "--set", "optimizer.lr=-1", "--runs-dir", tmp_path))
    with pytest.raises(gdtrain.UserError) as caught:
        gdtrain.run(SMOKE, overrides=["optimizer.lr=-1"], runs_dir=tmp_path)
    assert line == f"error: {caught.value}"
    with pytest.raises(gdtrain.UserError, match="grid optimizer.lr: give a list of values"):
        gdtrain.sweep(SMOKE, grid={"optimizer.lr": 0.1}, runs_dir=tmp_path)
    assert not (tmp_path / "smoke").exists()


def test_a_sweep_gives_one_result_per_point_and_rows_read_them_back(tmp_path):
    results = gdtrain.sweep(SMOKE, grid={"optimizer.lr": [0.01, 0.02]}, seeds=2, runs_dir=tmp_path)
    assert len(results) == 4 and {r.status for r in results} == {"finished"}
    table = gdtrain.rows(tmp_path / "smoke")
    assert sorted(r["run_dir"] for r in table) == sorted(str(r.run_dir) for r in results)
    by_dir = {r["run_dir"]: r for r in table}
    for result in results:
        row = by_dir[str(result.run_dir)]
        assert row["status"] == "finished" and row["final/loss/val"] == result.final["loss/val"]
        assert row["optimizer.lr"] in (0.01, 0.02) and row["experiment.seed"] in (0, 1)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(gdtrain.UserError, match="pip install pandas"):
            gdtrain.frame(tmp_path / "smoke")
    else:
        assert len(gdtrain.frame(tmp_path / "smoke")) == 4


def test_a_study_gives_its_verdict(tmp_path):
    doc = yaml.safe_load((ROOT / "studies" / "quick.yaml").read_text())
    doc["optimizers"] = doc["optimizers"][2:]  # rmsprop and adam
    doc["budget"], doc["seeds"] = 2, 2
    doc["base"]["train"]["epochs"] = 2
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = gdtrain.run_study(path, runs_dir=tmp_path / "runs")
    assert result.status == 0 and result.folder == tmp_path / "runs" / "quick"
    assert result.verdict and set(result.results["optimizers"]) == {"rmsprop", "adam"}
    assert (result.folder / "report.md").is_file()


def test_counts_and_paths_are_checked_and_runs_record_the_python_call(tmp_path):
    for bad in ({"seeds": 0}, {"jobs": 0}, {"batch_runs": -1}):
        with pytest.raises(gdtrain.UserError, match=f"{next(iter(bad))}: must be a whole number >= 1"):
            gdtrain.sweep(SMOKE, grid={"optimizer.lr": [0.01]}, runs_dir=tmp_path, **bad)
    with pytest.raises(gdtrain.UserError, match="sweep: give the path of a YAML file, got dict"):
        gdtrain.sweep(yaml.safe_load(SMOKE.read_text()), runs_dir=tmp_path)
    assert not (tmp_path / "smoke").exists()
    result = gdtrain.run(SMOKE, runs_dir=tmp_path)
    assert result.summary["environment"]["command"] == f"gdtrain.run('{SMOKE}', runs_dir='{tmp_path}')"
    assert {"run", "sweep", "run_study", "rows", "frame", "UserError"} <= set(dir(gdtrain))
