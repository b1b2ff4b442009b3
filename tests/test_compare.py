"""One rule for divergence in `gdtrain compare`: a configuration's finished and diverged runs share a
row that says how many diverged; each diverged run ranks below every finished run (no number imputed
for it), so survivors alone never make a row look better than it is, and a configuration whose every
run diverged ranks last. The run folders are written by hand with chosen values: nothing trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clihelp import gdtrain
from gdtrain.core import folders, runs
from gdtrain.core.yamlio import dump_yaml
from gdtrain.report import compare, stats, table


def fake(folder: Path, optimizer: str, lr: float, seed: int, accuracy: float, status: str = "finished") -> None:
    """A run of `optimizer` at `lr` as a sweep leaves it: a finished run ends at `accuracy`; a diverged
    one logs it too, better than any finished run, before its loss becomes infinite."""
    run_dir = folder / f"{optimizer}-lr{lr}-s{seed}-20261125-120000"
    run_dir.mkdir(parents=True)
    config = {"experiment": {"name": "div", "seed": seed}, "optimizer": {"name": optimizer, "lr": lr}}
    (run_dir / "config.yaml").write_text(dump_yaml(config))
    logged = [(1, accuracy - 0.01), (2, accuracy)] if status == "finished" else [(1, 0.999), (2, None)]
    (run_dir / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": 10 * e, "epoch": e, "loss/train": 0.5 if a is not None else float("inf")})[:-1]
            + (f', "accuracy/val": {a}, "loss/val": {1 - a}' if a is not None else "")
            + "}\n"
            for e, a in logged
        )
    )
    runs.write_summary(run_dir, {"status": status, "batch_size": 32, "wall_seconds": 1.0, "samples_per_second": 100.0})


def sweep(folder: Path, configs: dict[tuple[str, float], list[float | None]]) -> Path:
    """Run folders for each (optimizer, lr): one run per value, None for a run that diverged."""
    for (optimizer, lr), values in configs.items():
        for seed, value in enumerate(values):
            fake(
                folder,
                optimizer,
                lr,
                seed,
                0.0 if value is None else value,
                "finished" if value is not None else "diverged",
            )
    return folder


def header(lines: list[str]) -> str:
    """The text table's header line."""
    return next(line for line in lines if {"run", "final"} <= set(line.split()))


def rows(folder: Path, metric: str = "accuracy/val", per_run: bool = False) -> list[dict]:
    result = gdtrain("compare", folder, "--metric", metric, "--format", "json", *(["--per-run"] if per_run else []))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("metric", ["accuracy/val", "loss/val"])
def test_finished_and_diverged_runs_share_a_row_that_says_how_many_diverged(tmp_path, metric):
    folder = sweep(tmp_path / "div", {("sgd", 0.5): [0.96, 0.97, 0.98, None, None], ("adam", 0.01): [0.9] * 5})
    assert sorted(run.status for run in folders.read_runs(folder)).count("diverged") == 2
    found = {r["run"]: r for r in rows(folder, metric)}
    assert set(found) == {
        "sgd lr=0.5",
        "adam lr=0.01",
    }  # one row each: the diverged runs joined their configuration's row
    sgd = found["sgd lr=0.5"]
    assert (sgd["seeds"], sgd["diverged"], sgd["status"]) == (5, 2, "finished")
    finished = [0.96, 0.97, 0.98] if metric == "accuracy/val" else [0.04, 0.03, 0.02]
    assert sgd["final"] == pytest.approx(sum(finished) / 3)  # the finished runs' mean, not the diverged 0.999
    assert sgd["best"] == pytest.approx(sum(finished) / 3)
    assert sgd["group"] is not None and sgd["95% CI"] is not None  # compared, its CI over the finished three
    assert found["adam lr=0.01"]["diverged"] == 0
    # each diverged run ranked lowest, so sgd's three survivors, all better than adam's five, are not
    # enough to call it better: alone they would be (exact p 2/56)
    assert [r["run"] for r in found.values()] == ["sgd lr=0.5", "adam lr=0.01"] and sgd["beats"] == []
    up = metric == "accuracy/val"
    survivors = stats.compare_pair("sgd", finished, "adam", [0.9 if up else 0.1] * 5, up)
    assert survivors.winner == "sgd"
    text = gdtrain("compare", folder, "--metric", metric).stdout
    assert "diverged" in header(text.splitlines()).split() and "2/5" in text and "0/5" in text


def test_divergences_rank_a_row_below_what_its_survivors_alone_would_say(tmp_path):
    # finished runs alone: sgd 0.975 against adam 0.92, sgd first; with its three divergences ranked
    # lowest, sgd's mean pooled rank is 5 against adam's 6
    folder = sweep(
        tmp_path / "div", {("sgd", 0.5): [0.97, 0.98, None, None, None], ("adam", 0.01): [0.90, 0.91, 0.92, 0.93, 0.94]}
    )
    found = rows(folder)
    assert [r["run"] for r in found] == ["adam lr=0.01", "sgd lr=0.5"]
    assert found[1]["final"] > found[0]["final"] and found[1]["diverged"] == 3
    assert [r["group"] for r in found] == ["a", "a"]  # ranked, not claimed: no detectable difference at 5 seeds


def test_a_configuration_whose_every_run_diverged_ranks_last_and_can_be_beaten(tmp_path):
    folder = sweep(
        tmp_path / "div",
        {("sgd", 5.0): [None] * 5, ("sgd", 0.001): [0.30, 0.31, 0.32, 0.33, 0.34], ("adam", 0.01): [0.5, 0.5, None]},
    )
    found = rows(folder)
    assert [r["run"] for r in found] == ["adam lr=0.01", "sgd lr=0.001", "sgd lr=5"]
    wild = found[-1]
    assert (wild["status"], wild["diverged"], wild["seeds"]) == ("diverged", 5, 5)
    assert wild["final"] is None and wild["95% CI"] is None and wild["beats"] == []
    assert "sgd lr=5" in found[1]["beats"]  # 5 finished against 5 diverged: exact p 2/252, Holm over 3 pairs
    assert found[1]["group"] != wild["group"] and found[0]["95% CI"] is not None
    text = gdtrain("compare", folder).stdout.splitlines()
    assert header(text).split()[:5] == ["group", "run", "seeds", "diverged", "final"]
    last = text[-1].split()
    assert last[:6] == ["b", "sgd", "lr=5", "5", "5/5", "-"]  # its figures: none


def test_one_run_rows_and_runs_cut_short_come_after_the_compared_ones(tmp_path):
    folder = sweep(tmp_path / "div", {("sgd", 5.0): [None, None], ("adam", 0.01): [0.9], ("sgd", 0.1): [None]})
    fake(folder, "rmsprop", 0.01, 0, 0.99, "interrupted")
    found = rows(folder)
    assert [(r["run"], r["group"]) for r in found] == [
        ("sgd lr=5", "a"),  # compared: two runs, both diverged
        ("adam lr=0.01", None),  # one run each, not compared, finished first
        ("sgd lr=0.1", None),
        ("rmsprop lr=0.01", None),
    ]
    assert [r["diverged"] for r in found] == [2, 0, 1, None]  # a run cut short is no result


def test_per_run_rows_put_a_diverged_run_below_every_finished_one(tmp_path):
    folder = sweep(tmp_path / "div", {("sgd", 0.5): [0.2, None], ("adam", 0.01): [0.1]})
    found = rows(folder, per_run=True)
    assert [(r["run"], r["status"], r["diverged"]) for r in found] == [
        ("sgd lr=0.5 s0", "finished", 0),
        ("adam lr=0.01 s0", "finished", 0),
        ("sgd lr=0.5 s1", "diverged", 1),
    ]
    assert found[-1]["final"] is None


def test_the_title_says_how_divergence_is_read(tmp_path):
    records = table.table(
        compare.rank(
            compare.group(
                folders.read_runs(sweep(tmp_path / "div", {("sgd", 0.5): [0.9, None, None]})),
                "accuracy/val",
                None,
                False,
            ),
            "accuracy/val",
        )
    )
    said = " ".join(table.title(records, "accuracy/val", None))
    assert "ranks below every finished run" in said and "mean over the finished seeds" in said
    calm = table.table(
        compare.group(
            folders.read_runs(sweep(tmp_path / "calm", {("sgd", 0.5): [0.9], ("adam", 0.1): [0.8]})),
            "accuracy/val",
            None,
            False,
        )
    )
    assert "No run diverged." in " ".join(table.title(calm, "accuracy/val", None))
    assert "diverged" not in table.render(calm, "text", None)  # no column when nothing diverged


def test_an_interval_over_fewer_than_five_seeds_is_marked_unreliable(tmp_path):
    folder = sweep(tmp_path / "ci", {("sgd", 0.1): [0.90, 0.91, 0.92, 0.93, 0.94], ("adam", 0.01): [0.5, 0.6, 0.7]})
    found = {r["run"]: r for r in rows(folder)}
    assert found["sgd lr=0.1"]["95% CI reliable"] is True and found["adam lr=0.01"]["95% CI reliable"] is False
    lines = gdtrain("compare", folder).stdout.splitlines()
    assert "unreliable: a 95% CI (3 finished seeds): its coverage was measured to hold from 5" in " ".join(lines)
    assert "unreliable" in next(line for line in lines if "adam lr=0.01" in line)
    assert "unreliable" not in next(line for line in lines if "sgd lr=0.1" in line)
    markdown = gdtrain("compare", folder, "--format", "markdown").stdout
    assert "unreliable |" in next(line for line in markdown.splitlines() if "adam lr=0.01" in line)
    csv_text = gdtrain("compare", folder, "--format", "csv").stdout.splitlines()
    assert "95% CI reliable" in csv_text[0].split(",")


def test_when_every_interval_is_unreliable_the_title_says_it_once(tmp_path):
    folder = sweep(tmp_path / "ci", {("sgd", 0.1): [0.90, 0.91, 0.92], ("adam", 0.01): [0.5, 0.6, 0.7]})
    lines = gdtrain("compare", folder).stdout.splitlines()
    assert any("Every row's 95% CI is unreliable (3 finished seeds)" in line for line in lines)
    assert not any("unreliable" in line for line in lines[lines.index(header(lines)) :])


def test_repeats_of_one_configuration_and_seed_are_one_observation(tmp_path):
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    for _ in range(2):
        assert gdtrain("run", smoke, "--runs-dir", tmp_path, "--quiet").exit_code == 0
    assert gdtrain("run", smoke, "--runs-dir", tmp_path, "--quiet", "--set", "experiment.seed=1").exit_code == 0
    (row,) = rows(tmp_path / "smoke")
    assert row["seeds"] == 2 and row["repeats merged"] == 1  # seeds 0 and 1; seed 0's second run merged
    text = gdtrain("compare", tmp_path / "smoke").stdout
    assert "Repeats merged: 1 run folder(s) repeat the configuration and seed of another run" in " ".join(text.split())
    (alone,) = [r for r in rows(tmp_path / "smoke", per_run=True) if r["repeats merged"]] or [None]
    assert alone is None  # --per-run shows every run folder


def test_a_stacked_run_s_samples_per_second_names_its_group(tmp_path):
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    result = gdtrain("sweep", smoke, "--grid", "optimizer.lr=0.01,0.02", "--seeds", "2", "--runs-dir", tmp_path)
    assert result.exit_code == 0 and "1 group(s) of 4 runs" in result.stdout, result.output
    assert {row["stacked with"] for row in rows(tmp_path / "smoke")} == {4}
    text = gdtrain("compare", tmp_path / "smoke").stdout
    table_rows = [line for line in text.splitlines() if "adam lr=" in line]
    assert len(table_rows) == 2 and all(line.rstrip().endswith("(x4)") for line in table_rows), text
    assert "(xN): a run trained stacked, N runs at once" in text
    gdtrain("run", smoke, "--runs-dir", tmp_path, "--quiet", "--set", "optimizer.lr=0.03")
    every = json.loads(gdtrain("compare", tmp_path / "smoke", "--all", "--format", "json").stdout)
    assert [r["stacked with"] for r in every if r["lr"] == 0.03] == [None]  # a run alone
