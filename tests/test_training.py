"""What training does: recovered parameters, accuracy, regimes, schedules, logging, divergence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gdtrain.components.models import build_model
from gdtrain.core.config import load_config, validate
from gdtrain.core.runs import run_folders
from gdtrain.training import engine, lifecycle, recipe
from gdtrain.training.determinism import seed_everything

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def train(tmp_path: Path, raw: dict | None = None, config: str | None = None, overrides: list[str] = ()):
    """Run one experiment into tmp_path; return (run folder, outcome)."""
    cfg = load_config(CONFIGS / config, list(overrides)) if config else validate(raw, "test")
    return recipe.run(cfg, tmp_path, quiet=True)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tiny(**train_settings) -> dict:
    """A seconds-long regression experiment with the given train settings."""
    return {
        "data": {"name": "linear_regression", "n_samples": 100},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "train": {"log_every": 1, **train_settings},
    }


@pytest.mark.parametrize("name", ["synthetic_linreg_bgd", "synthetic_linreg_sgd", "synthetic_linreg_minibatch"])
def test_linear_regression_recovers_w_and_b(tmp_path, name):
    run_dir, outcome = train(tmp_path, config=f"{name}.yaml")
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert outcome.status == "finished"
    assert state["0.weight"].item() == pytest.approx(2.0, abs=0.05)
    assert state["0.bias"].item() == pytest.approx(3.0, abs=0.05)


def test_mlp_learns_moons_where_linear_stops_short(tmp_path):
    _, mlp = train(tmp_path, config="synthetic_moons_mlp.yaml")
    _, linear = train(tmp_path, config="synthetic_moons_mlp.yaml", overrides=["model={name: linear}"])
    assert mlp.final["accuracy/val"] >= 0.95
    assert linear.final["accuracy/val"] < 0.9


def test_linear_model_stays_at_chance_on_xor_and_mlp_learns_it(tmp_path):
    _, mlp = train(tmp_path, config="synthetic_xor_mlp.yaml")
    _, linear = train(tmp_path, config="synthetic_xor_mlp.yaml", overrides=["model={name: linear}"])
    assert mlp.final["accuracy/val"] >= 0.95
    assert linear.final["loss/val"] > 0.65  # ln 2 = 0.693 is the loss of a coin flip
    assert 0.3 < linear.final["accuracy/val"] < 0.7


@pytest.mark.parametrize(("batch_size", "steps_per_epoch"), [("full", 1), (1, 80), (32, 3), (80, 1)])
def test_batch_size_picks_the_regime(tmp_path, batch_size, steps_per_epoch):
    _, outcome = train(tmp_path, tiny(epochs=2, batch_size=batch_size))
    assert outcome.steps == 2 * steps_per_epoch
    assert outcome.samples == 2 * 80


def test_step_budget_stops_mid_epoch(tmp_path):
    run_dir, outcome = train(tmp_path, tiny(max_steps=7, batch_size=16))  # 5 steps per epoch
    assert (outcome.steps, outcome.epochs) == (7, 2)
    assert [m["step"] for m in metrics(run_dir) if "loss/train" in m] == list(range(1, 8))


def test_same_config_and_seed_give_the_same_curve(tmp_path):
    raw = {**tiny(epochs=3, batch_size=8), "model": {"name": "mlp", "hidden_sizes": [8], "dropout": 0.2}}
    first, _ = train(tmp_path / "a", raw)
    second, _ = train(tmp_path / "b", raw)
    other, _ = train(tmp_path / "c", {**raw, "experiment": {"seed": 1}})
    curve = lambda run: [(m["step"], m.get("loss/train"), m.get("loss/val")) for m in metrics(run)]  # noqa: E731
    assert curve(first) == curve(second)
    assert curve(first) != curve(other)


def test_divergence_is_caught_at_its_exact_step(tmp_path):
    raw = tiny(epochs=5, batch_size=10, log_every=7)
    raw["optimizer"]["lr"] = 10.0  # |1 - 2·lr| > 1: the error grows 19x per step
    run_dir, outcome = train(tmp_path / "coarse", raw)
    _, every_step = train(tmp_path / "fine", {**raw, "train": {**raw["train"], "log_every": 1}})
    summary = json.loads((run_dir / "summary.json").read_text())
    assert outcome.status == summary["status"] == "diverged"
    assert outcome.diverged_at_step == summary["diverged_at_step"] == every_step.diverged_at_step
    assert outcome.steps < 5 * 8  # stopped long before the end


def test_early_stopping_after_patience_epochs(tmp_path):
    raw = tiny(epochs=200, batch_size="full", patience=3, min_delta=0.5)  # 0.5 is a gain it never makes twice
    _, outcome = train(tmp_path, raw)
    assert outcome.stopped_early
    assert outcome.epochs < 200


def lrs(run_dir: Path) -> list[float]:
    return [m["lr"] for m in metrics(run_dir) if "lr" in m]


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"name": "constant"}, [0.1] * 6),
        ({"name": "step", "step_size": 2, "gamma": 0.5}, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]),
        ({"name": "exponential", "gamma": 0.5}, [0.1 * 0.5**e for e in range(6)]),
        ({"name": "cosine"}, [0.05 * (1 + math.cos(math.pi * e / 6)) for e in range(6)]),
    ],
)
def test_epoch_schedules_follow_torch(tmp_path, schedule, expected):
    raw = {**tiny(epochs=6, batch_size="full"), "schedule": schedule}
    raw["optimizer"]["lr"] = 0.1
    run_dir, _ = train(tmp_path, raw)
    assert lrs(run_dir) == pytest.approx(expected)


def test_warmup_ramps_per_step_then_hands_over_to_the_epoch_schedule(tmp_path):
    raw = {
        **tiny(epochs=3, batch_size=20),
        "schedule": {"name": "step", "step_size": 1, "gamma": 0.5, "warmup_steps": 4, "warmup_start_factor": 0.2},
    }
    raw["optimizer"]["lr"] = 0.1
    run_dir, _ = train(tmp_path, raw)  # 4 steps per epoch; lr is the lr each step used
    # warm-up reaches 0.1 after its 4th step, where the epoch's end halves it: no step uses 0.1
    assert lrs(run_dir) == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.025])


def test_plateau_schedule_cuts_lr_when_val_loss_stalls(tmp_path):
    raw = {
        **tiny(epochs=40, batch_size="full"),
        "schedule": {"name": "plateau", "factor": 0.5, "patience": 0, "threshold": 0.5},
    }
    run_dir, _ = train(tmp_path, raw)
    assert lrs(run_dir)[-1] < 0.05 / 2


def test_gradient_clipping_bounds_each_step(tmp_path):
    cfg = validate(tiny(max_steps=1, batch_size="full", grad_clip=0.01), "test")
    cfg_free = validate(tiny(max_steps=1, batch_size="full"), "test")
    moved = []
    for c in (cfg, cfg_free):
        seed_everything(c.experiment.seed)
        before = build_model(c.model, 1, 1).state_dict()
        run_dir, _ = recipe.run(c, tmp_path, quiet=True)
        after = torch.load(run_dir / "model.pt", weights_only=True)
        moved.append(math.sqrt(sum(((after[k] - before[k]) ** 2).sum().item() for k in before)))
    assert moved[0] == pytest.approx(0.05 * 0.01, rel=1e-4)  # lr × clip: the gradient was longer
    assert moved[1] > 10 * moved[0]


@pytest.mark.parametrize("init", ["xavier", "he"])
def test_initialisation_zeroes_biases_and_scales_weights(init):
    cfg = validate({"model": {"name": "mlp", "hidden_sizes": [256], "init": init}}, "test")
    model = build_model(cfg.model, 512, 10)
    first = model[0]
    assert torch.count_nonzero(first.bias) == 0
    expected_std = math.sqrt(2 / (512 + 256)) if init == "xavier" else math.sqrt(2 / 512)
    assert first.weight.std().item() == pytest.approx(expected_std, rel=0.05)


def test_tensorboard_holds_the_curves_and_hparams_in_the_run_folder(tmp_path):
    run_dir, outcome = train(tmp_path, config="smoke.yaml")
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/val", "lr", "grad_norm"} <= tags
    lines = metrics(run_dir)
    logged = [(m["step"], m["loss/train"]) for m in lines if "loss/train" in m]
    board = events.Scalars("loss/train")
    assert [e.step for e in board] == [step for step, _ in logged]
    assert [e.value for e in board] == pytest.approx([value for _, value in logged], rel=1e-6)  # float32
    assert [e.step for e in events.Scalars("loss/val")] == list(range(1, outcome.epochs + 1))  # x = epoch
    hparam_plugin = events.PluginTagToContent("hparams")
    # the run's session, start and end; the experiment that lists them is the experiment folder's (test_board.py)
    assert set(hparam_plugin) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    assert b"optimizer.lr" in hparam_plugin["_hparams_/session_start_info"]
    assert {p.parent for p in run_dir.rglob("events.out.tfevents.*")} == {run_dir}  # no timestamped sub-run


def test_run_folder_records_how_to_reproduce_it(tmp_path):
    run_dir, outcome = train(tmp_path, config="smoke.yaml")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["steps"] == outcome.steps and summary["epochs"] == outcome.epochs
    assert summary["best"]["loss/val"] <= summary["final"]["loss/val"]
    assert summary["samples_per_second"] > 0
    assert summary["environment"]["torch"] == torch.__version__
    assert run_dir.parent.name == "smoke"
    rerun = load_config(run_dir / "config.yaml")
    assert rerun == load_config(CONFIGS / "smoke.yaml")


def test_samples_per_second_leaves_out_the_first_epoch_which_pays_the_start(tmp_path, monkeypatch):
    """The first run in a sweep worker pays lazy initialisation in its first epoch; here a sleep
    stands in for it. samples/s counts the other epochs; a run of one epoch says its rate includes it."""
    import time

    batches = engine._batches

    def slow_start(parts, at, epoch):
        if epoch == 1 and at.step_in_epoch == 0:
            time.sleep(0.5)
        yield from batches(parts, at, epoch)

    monkeypatch.setattr(engine, "_batches", slow_start)
    run_dir, outcome = train(tmp_path, config="smoke.yaml")  # 3 epochs
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["first_epoch_samples"] == summary["samples"] // 3 and summary["first_epoch_seconds"] >= 0.5
    steady = (summary["samples"] - summary["first_epoch_samples"]) / (
        summary["train_seconds"] - summary["first_epoch_seconds"]
    )
    assert summary["samples_per_second"] == pytest.approx(steady, rel=1e-3)
    # the sleep is out: above the rate over all epochs (not "2x above", which two test suites sharing
    # two cores broke by slowing the other epochs as much as the sleep)
    assert summary["samples_per_second"] > summary["samples"] / summary["train_seconds"]
    assert summary["samples_per_second_with_first_epoch"] is False
    one, _ = train(tmp_path, config="smoke.yaml", overrides=["train.epochs=1"])
    single = json.loads((one / "summary.json").read_text())
    assert single["samples_per_second_with_first_epoch"] is True
    assert single["samples_per_second"] == pytest.approx(single["samples"] / single["train_seconds"], rel=1e-3)


def test_a_crash_inside_training_is_recorded_as_failed(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "train", explode)
    with pytest.raises(RuntimeError, match="boom"):
        train(tmp_path, config="smoke.yaml")
    (run_dir,) = run_folders(tmp_path / "smoke")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom" in summary["error"]


def test_plan_counts_steps_and_epochs():
    settings = validate(tiny(epochs=3, batch_size=30), "test").train
    assert lifecycle.plan(80, settings) == lifecycle.Plan(batch_size=30, steps_per_epoch=3, max_steps=9, epochs=3)
    budget = validate(tiny(max_steps=10, batch_size=30), "test").train
    assert lifecycle.plan(80, budget) == lifecycle.Plan(batch_size=30, steps_per_epoch=3, max_steps=10, epochs=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_device_trains_on_the_gpu(tmp_path):
    run_dir, outcome = train(tmp_path, config="smoke.yaml", overrides=["train.device=auto"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["environment"]["device"].startswith("cuda")
    assert outcome.status == "finished"
