"""One short name per configuration, the same in the sweep's folders, compare's rows and the plot's
colours; the compare table fits 100 columns. The run folders here are written by hand: nothing trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clihelp import gdtrain, write
from gdtrain.core import folders, names, runs
from gdtrain.core.config import to_dict
from gdtrain.core.yamlio import dump_yaml
from gdtrain.execution import sweep
from gdtrain.report import compare

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))

MIXED = """
experiment: {name: mixed, seed: 0}
data: {name: moons, n_samples: 200}
model: {name: mlp, hidden_sizes: [8]}
train: {epochs: 2, batch_size: 32, loss: bce}
grid:
  optimizer:
    - {name: sgd, lr: 0.1, momentum: 0.9}
    - {name: sgd, lr: 0.1, momentum: 0.9, nesterov: true}
    - {name: adam, lr: 0.001}
    - {name: adam, lr: 0.001, betas: [0.8, 0.99]}
    - {name: adamw, lr: 0.001, weight_decay: 0.1}
  experiment.seed: [0, 1]
"""


def flat(points: list[sweep.Point]) -> list[dict]:
    return [runs.flatten(to_dict(p.config)) for p in points]


def test_a_mixed_grid_is_named_by_what_varies_optimizer_first_lr_always(tmp_path):
    points = sweep.expand(write(tmp_path, MIXED), [], None, [])
    assert [p.label for p in points] == [
        "sgd lr=0.1 s0",
        "sgd lr=0.1 s1",  # momentum is 0.9 for every sgd point: not said
        "sgd lr=0.1 nesterov s0",
        "sgd lr=0.1 nesterov s1",  # a true flag is its bare word
        "adam lr=0.001 betas=0.9,0.999 s0",
        "adam lr=0.001 betas=0.9,0.999 s1",
        "adam lr=0.001 betas=0.8,0.99 s0",
        "adam lr=0.001 betas=0.8,0.99 s1",
        "adamw lr=0.001 s0",
        "adamw lr=0.001 s1",  # one adamw: its weight_decay tells it from no other adamw
    ]
    assert [p.name for p in points][::2] == [
        "sgd-lr0.1-s0",
        "sgd-lr0.1-nesterov-s0",
        "adam-lr0.001-betas0.9,0.999-s0",
        "adam-lr0.001-betas0.8,0.99-s0",
        "adamw-lr0.001-s0",
    ]
    assert names.labels(flat(points), seeds=False)[::2] == [
        "sgd lr=0.1",
        "sgd lr=0.1 nesterov",
        "adam lr=0.001 betas=0.9,0.999",
        "adam lr=0.001 betas=0.8,0.99",
        "adamw lr=0.001",
    ]


def test_short_forms_of_varying_settings():
    base = {
        "optimizer.name": "sgd",
        "optimizer.lr": 0.01,
        "optimizer.momentum": 0.0,
        "optimizer.weight_decay": 0.0,
        "train.batch_size": 32,
        "experiment.seed": 0,
    }
    configs = [base, base | {"optimizer.momentum": 0.9, "optimizer.weight_decay": 0.0005, "train.batch_size": 64}]
    assert names.labels(configs) == ["sgd lr=0.01 mom=0 wd=0 batch=32", "sgd lr=0.01 mom=0.9 wd=0.0005 batch=64"]
    assert names.folders(configs) == ["sgd-lr0.01-mom0-wd0-batch32", "sgd-lr0.01-mom0.9-wd0.0005-batch64"]
    close = [base, base | {"optimizer.lr": 0.010000001}]  # alike at 6 digits: written out in full
    assert names.labels(close) == ["sgd lr=0.01", "sgd lr=0.010000001"]
    assert names.folders([base | {"model.activation": "tanh"}, base | {"model.activation": "relu"}]) == [
        "sgd-lr0.01-act=tanh",
        "sgd-lr0.01-act=relu",
    ]  # a word keeps its '=': `acttanh` would not read


@pytest.mark.parametrize("spec", SWEEPS, ids=lambda p: p.stem)
def test_shipped_sweeps_names_fit_tensorboards_sidebar_and_are_unique(spec):
    points = sweep.expand(spec, [], None, [])
    rows = set(names.labels(flat(points), seeds=False))
    assert len({p.name for p in points}) == len(points)
    assert all(len(p.name) <= 30 for p in points), [p.name for p in points]  # run folders, before their time
    assert all(len(label) <= 30 for label in rows), rows  # compare's rows, the legends, TensorBoard's groups


def fake_run(folder: Path, point: sweep.Point, accuracy: float, samples_per_second: float, stamp: str) -> Path:
    """A finished run of `point` as a sweep leaves it, written by hand."""
    run_dir = folder / f"{point.name}-{stamp}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_yaml(to_dict(point.config)))
    (run_dir / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": 25 * e, "epoch": e, "loss/train": 0.5 / e, "accuracy/val": accuracy - 0.01 * (3 - e)})
            + "\n"
            for e in (1, 2, 3)
        )
    )
    runs.write_summary(
        run_dir,
        {
            "status": "finished",
            "final": {"accuracy/val": accuracy},
            "batch_size": 32,
            "wall_seconds": 2.0,
            "samples_per_second": samples_per_second,
            "samples_per_second_with_first_epoch": False,
        },
    )
    return run_dir


@pytest.fixture
def shipped(tmp_path) -> tuple[Path, list[sweep.Point]]:
    """The shipped seven-optimizer sweep (21 runs) as finished run folders with made-up figures."""
    points = sweep.expand(ROOT / "sweeps" / "synthetic_optimizers.yaml", [], None, [])
    folder = tmp_path / "synthetic_optimizers"
    for k, point in enumerate(points):
        fake_run(folder, point, 0.9 + 0.004 * (k // 3) + 0.001 * (k % 3), 12345.6 + k, f"20261125-1200{k:02d}")
    return folder, points


def test_compare_of_the_shipped_sweep_fits_100_columns_and_names_its_metric(shipped):
    folder, points = shipped
    result = gdtrain("compare", folder, "--target", "0.95")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100, "\n" + result.stdout
    assert lines[0].startswith("accuracy/val (higher is better)")
    header = next(line for line in lines if "  final  " in line)
    assert "optimizer" not in header and " lr " not in header  # the label says them
    assert "batch" not in header and "status" not in header and "batch 32, 3 seeds, finished." in result.stdout
    start = header.index("run")  # group 1 for every row (3 seeds cannot separate them): said above, no column
    shown = {line[start:].split("  ")[0] for line in lines[lines.index(header) + 1 :]}
    assert shown == set(names.labels(flat(points), seeds=False))  # the sweep's labels, without the seed


def test_compare_rows_and_the_sweeps_labels_agree(shipped):
    folder, points = shipped
    rows = json.loads(gdtrain("compare", folder, "--per-run", "--format", "json").stdout)
    assert sorted(r["run"] for r in rows) == sorted(p.label for p in points)


def test_plot_colours_follow_the_optimizer_and_shade_by_lr(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.colors import rgb_to_hsv

    from gdtrain.report.curveplot import row_colours

    spec = write(
        tmp_path,
        MIXED.split("grid:")[0] + "grid:\n  optimizer.name: [sgd, adam, rmsprop]\n  optimizer.lr: [0.1, 0.01, 0.001]\n",
    )
    points = sweep.expand(spec, [], None, [])
    for k, point in enumerate(points):
        fake_run(tmp_path / "mixed", point, 0.9, 1000.0, f"20261125-1200{k:02d}")
    rows = compare.group(folders.read_runs(tmp_path / "mixed"), "accuracy/val", None, per_run=False)
    colours = dict(zip([row.label for row in rows], row_colours(rows)))
    hue = {label: rgb_to_hsv(c[:3])[0] for label, c in colours.items()}  # 0-1, a circle: red is at both ends
    value = {label: rgb_to_hsv(c[:3])[2] for label, c in colours.items()}

    def apart(a: float, b: float) -> float:
        return min(abs(a - b), 1 - abs(a - b))

    for name in ("sgd", "adam", "rmsprop"):
        mine = [hue[f"{name} lr={lr}"] for lr in ("0.1", "0.01", "0.001")]
        assert max(apart(a, b) for a in mine for b in mine) < 0.08, (name, mine)  # one hue per optimizer
        assert value[f"{name} lr=0.001"] > value[f"{name} lr=0.01"] > value[f"{name} lr=0.1"]  # lighter for smaller lr
    assert (
        min(
            apart(hue[f"{a} lr=0.01"], hue[f"{b} lr=0.01"])
            for a, b in (("sgd", "adam"), ("sgd", "rmsprop"), ("adam", "rmsprop"))
        )
        > 0.1
    )  # optimizers apart
