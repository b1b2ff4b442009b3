"""The optimizer registry agrees with torch and with itself: each entry's settings are its class's
constructor arguments with torch's defaults, every argument that is maths is a setting, each
optimizer builds, steps, sizes its state by measurement and finishes a run of the smoke config;
a bad name or setting is one line. Adding an optimizer: one registry entry plus its row in ROWS."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from clihelp import gdtrain, one_error
from gdtrain.components.optimizers import build_optimizer, optimizer_class, set_mode
from gdtrain.core import optimizers as registry
from gdtrain.core.config import OPTIMIZER_SECTIONS, load_config, validate
from gdtrain.training.memory import state_copies

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"

# Each registered optimizer: settings for its smoke run (muon needs its `rest`), and the state it
# keeps per parameter element as torch documents it (Adafactor and muon's factored / 2-D-only state aside).
ROWS = {
    "sgd": ({"lr": 0.05, "momentum": 0.9}, 1),
    "adagrad": ({"lr": 0.05}, 1),
    "rmsprop": ({"lr": 0.01}, 1),
    "adam": ({"lr": 0.01}, 2),
    "adamw": ({"lr": 0.01}, 2),
    "nadam": ({"lr": 0.01}, 2),
    "radam": ({"lr": 0.01}, 2),
    "adamax": ({"lr": 0.01}, 2),
    "adadelta": ({"lr": 1.0}, 2),
    "rprop": ({"lr": 0.01}, 2),
    "asgd": ({"lr": 0.05}, 1),
    "adafactor": ({"lr": 0.01}, None),
    "muon": ({"lr": 0.02, "rest": {"name": "adamw", "lr": 0.01}}, None),
}


def test_every_registered_optimizer_has_a_row_and_the_schema_takes_exactly_the_registry():
    assert set(ROWS) == set(registry.OPTIMIZERS) == set(OPTIMIZER_SECTIONS)
    assert len({entry.hue for entry in registry.ENTRIES}) == len(registry.ENTRIES)  # one colour family each


@pytest.mark.parametrize("name", sorted(registry.OPTIMIZERS))
def test_settings_are_the_constructor_arguments_with_torchs_defaults(name):
    entry = registry.OPTIMIZERS[name]
    cls = optimizer_class(name)
    assert f"{cls.__module__.split('.')[0]}.optim.{cls.__name__}" == entry.target
    parameters = dict(list(inspect.signature(cls.__init__).parameters.items())[1:])
    maths = {k for k in parameters if k not in registry.NOT_SETTINGS}
    assert set(entry.settings) == maths  # every argument that is maths, and nothing else
    for key, setting in entry.settings.items():
        default = parameters[key].default
        assert setting.default == (tuple(default) if isinstance(default, tuple) else default), key
    kernels = set(entry.kernels) - {"for_loop"}
    assert ("foreach" in parameters) == ("foreach" in kernels) and ("fused" in parameters) >= ("fused" in kernels)


@pytest.mark.parametrize("name", sorted(registry.OPTIMIZERS))
def test_each_optimizer_builds_from_its_config_steps_and_sizes_its_state(name):
    settings, copies = ROWS[name]
    cfg = validate({"optimizer": {"name": name, **settings}}, "test").optimizer
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    optimizer = build_optimizer(cfg, model)
    assert optimizer.param_groups[0]["lr"] == cfg.lr
    before = [p.detach().clone() for p in model.parameters()]
    set_mode(optimizer, training=True)
    model(torch.randn(8, 3)).square().mean().backward()
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # every parameter moved
    optimizer.load_state_dict(optimizer.state_dict())
    measured = state_copies(cfg)
    if copies is not None:
        assert measured == copies
    else:
        assert 0 < measured < 2.5  # factored (adafactor) or momentum on the weights plus the rest's (muon)


def test_state_size_is_measured_for_settings_and_for_a_users_class():
    def copies(**optimizer):
        return state_copies(validate({"optimizer": optimizer}, "test").optimizer)

    assert copies(name="sgd") == 0 and copies(name="sgd", momentum=0.9) == 1
    assert copies(name="adam", amsgrad=True) == 3
    assert copies(name="rmsprop", momentum=0.5, centered=True) == 3
    assert copies(name="lion_pytorch:Lion") == 1  # exp_avg only: the measurement, not a table


@pytest.mark.parametrize("name", sorted(registry.OPTIMIZERS))
def test_a_run_of_each_optimizer_finishes_on_the_smoke_config(tmp_path, name):
    settings, _ = ROWS[name]
    overrides = [f"optimizer={json.dumps({'name': name, **settings})}", "train.epochs=1"]
    result = gdtrain("run", SMOKE, "--runs-dir", tmp_path, *sum((["--set", o] for o in overrides), []))
    assert result.exit_code == 0, result.output
    (summary,) = tmp_path.rglob("summary.json")
    data = json.loads(summary.read_text())
    assert data["status"] == "finished" and data["final"]["loss/val"] < 10
    assert load_config(summary.parent / "config.yaml").optimizer.name == name


@pytest.mark.parametrize(
    ("optimizer", "fragment"),
    [
        (
            {"name": "nadam", "momentum_decy": 0.1},
            "optimizer.momentum_decy: unknown key; did you mean 'momentum_decay'?",
        ),
        ({"name": "nadamm"}, "optimizer.name: unknown optimizer 'nadamm'; did you mean 'nadam'?"),
        ({"name": "lbfgs"}, "optimizer.name: LBFGS re-evaluates the loss"),
        ({"name": "SparseAdam"}, "optimizer.name: SparseAdam needs sparse gradients"),
        ({"name": "muon", "lr": 0.02}, "optimizer.rest: muon updates only 2-D weight matrices"),
        ({"name": "muon", "rest": {"name": "muon"}}, "optimizer.rest.name: unknown optimizer 'muon'"),
        ({"name": "rprop", "etas": [1.5, 1.2]}, "optimizer.etas: must be 0 < etaminus < 1 < etaplus"),
        ({"name": "adam", "betas": [0.9, 1.0]}, "optimizer.betas.1: must be in [0, 1), got 1.0"),
        ({"name": "adafactor", "d": 0.5}, "optimizer.d: must be >= 1"),
        ({"name": "lion_pytorch:Lion", "lrr": 0.1}, "optimizer.lrr: unknown setting of Lion; did you mean 'lr'?"),
        ({"name": "no_such_module:Opt"}, "optimizer.name: no module 'no_such_module'"),
        ({"name": "torch.nn:Linear"}, "is the class Linear, not a torch.optim.Optimizer subclass"),
    ],
)
def test_a_bad_optimizer_is_one_line_and_no_folder(tmp_path, optimizer, fragment):
    result = gdtrain("run", SMOKE, "--runs-dir", tmp_path, "--set", f"optimizer={json.dumps(optimizer)}")
    assert fragment in one_error(result)
    assert not any(tmp_path.iterdir())


def test_values_torch_accepts_and_people_use_are_accepted():
    cfg = validate({"optimizer": {"name": "adam", "betas": [0.0, 0.99], "eps": 0.0}}, "test").optimizer
    assert cfg.betas == (0.0, 0.99) and cfg.eps == 0.0


def test_list_shows_every_registered_optimizer():
    result = gdtrain("list")
    assert result.exit_code == 0
    for name in registry.OPTIMIZERS:
        assert f"  {name}" in result.stdout or f"{name} " in result.stdout, name
