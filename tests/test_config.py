"""The config module: how YAML is read, how `--set` applies, what the schema accepts, and that every
name-to-builder registry holds exactly the names the schema accepts (STYLE habit 5)."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gdtrain import cli
from gdtrain.components.datasets import SYNTHETIC
from gdtrain.components.losses import LOSSES
from gdtrain.components.models import ACTIVATIONS, MODELS, build_model
from gdtrain.components.optimizers import IMPLEMENTATIONS, build_schedule
from gdtrain.core.catalog import DATASET_HELP, LOSS_HELP, MODEL_HELP, OPTIMIZER_HELP, SCHEDULE_HELP
from gdtrain.core.config import LOSS_TASKS, Config, ImageData, MLPModel, TrainConfig, load_config, to_dict, validate
from gdtrain.core.errors import UserError
from gdtrain.core.optimizers import OPTIMIZERS
from gdtrain.core.yamlio import dump_yaml, parse_value

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def reload(config: Config, tmp_path: Path) -> Config:
    """The config written out the way `check` and run folders write it, then read back."""
    return load_config(write(tmp_path, dump_yaml(to_dict(config)), "resolved.yaml"))


# --- reading YAML -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-3", 1e-3),
        ("1E-3", 1e-3),
        ("-2e-4", -2e-4),
        ("+1e2", 100.0),
        ("1.5e3", 1500.0),
        ("3.", 3.0),
        (".5", 0.5),
        ("1_000.5", 1000.5),
    ],
)
def test_every_float_spelling_is_a_number_in_a_file_and_in_set(tmp_path, text, value):
    raw = f"train: {{min_delta: {text}}}\n" if value >= 0 else f"data: {{bias: {text}}}\n"
    cfg = load_config(write(tmp_path, raw))
    read = cfg.train.min_delta if value >= 0 else cfg.data.bias
    assert type(read) is float and read == value
    assert parse_value(text, "--set x") == value
    assert type(parse_value(text, "--set x")) is float


def test_exponent_lr_from_file_and_from_set(tmp_path):
    path = write(tmp_path, "optimizer: {name: adam, lr: 3e-4}\n")
    assert load_config(path).optimizer.lr == 3e-4
    assert load_config(path, ["optimizer.lr=1e-3"]).optimizer.lr == 1e-3


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_python_float_repr_reads_back_as_that_float(x):
    assert parse_value(repr(x), "--set x") == x


@pytest.mark.parametrize("text", ["adam", "1e", "e3", "1.2.3", "0x1p3"])
def test_words_that_look_numeric_stay_strings(text):
    assert parse_value(text, "--set x") == text


def test_python_objects_in_yaml_are_refused(tmp_path):
    path = write(tmp_path, "optimizer: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match=r"exp\.yaml: malformed YAML at line 1.*python/object"):
        load_config(path)


def test_a_duplicate_key_is_an_error_not_last_one_wins(tmp_path):
    path = write(tmp_path, "optimizer:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(UserError, match=r"line 3.*duplicate key 'lr'"):
        load_config(path)


def test_malformed_yaml_names_its_line(tmp_path):
    path = write(tmp_path, "optimizer:\n  lr: 0.1\n lr2: 3\n")
    with pytest.raises(UserError, match=r"exp\.yaml: malformed YAML at line 3, column \d+"):
        load_config(path)


@pytest.mark.parametrize("text", ["[1, 2]\n", "just a string\n", "3\n"])
def test_a_document_that_is_not_a_mapping_is_refused(tmp_path, text):
    with pytest.raises(UserError, match="must be a mapping of sections"):
        load_config(write(tmp_path, text))


# --- --set overrides ------------------------------------------------------------------------------


def test_overrides_apply_before_validation(tmp_path):
    path = write(tmp_path, "data: {n_samples: 100}\noptimizer: {lr: -1}\ntrain: {batch_size: 500}\n")
    with pytest.raises(UserError):
        load_config(path)
    cfg = load_config(path, ["optimizer.lr=0.5", "train.batch_size=10"])
    assert (cfg.optimizer.lr, cfg.train.batch_size) == (0.5, 10)


def test_overrides_are_type_checked_like_the_file(tmp_path):
    path = write(tmp_path, "optimizer: {lr: 0.1}\n")
    with pytest.raises(UserError, match=r"optimizer\.lr: must be a number, got 'abc'") as err:
        load_config(path, ["optimizer.lr=abc"])
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(UserError, match=r"optimizer\.lr: must be > 0, got -0\.1"):
        load_config(path, ["optimizer.lr=-0.1"])


def test_overrides_create_sections_read_yaml_values_and_the_last_wins(tmp_path):
    path = write(tmp_path, "")
    cfg = load_config(
        path,
        ["optimizer.lr=0.5", "model={name: mlp, hidden_sizes: [8, 4]}", "train.batch_size=full", "optimizer.lr=0.25"],
    )
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.lr == 0.25
    assert cfg.model.hidden_sizes == [8, 4]
    assert cfg.train.batch_size == "full"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.momentun=0.9", r"optimizer\.momentun: unknown key; did you mean 'momentum'\?"),
        ("nosuch.key=1", r"nosuch: unknown section"),
        ("optimizer.lr.x=1", r"optimizer\.lr is a value, not a section"),
        ("optimizer.lr", r"expected key\.path=value"),
        ("optimizer..lr=1", r"expected key\.path=value"),
        ("optimizer.lr=[1", r"--set optimizer\.lr: the value '\[1' is not valid YAML"),
    ],
)
def test_an_override_of_a_path_that_does_not_exist_is_an_error(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        load_config(write(tmp_path, "optimizer: {name: sgd, lr: 0.1}\n"), [override])


# --- what the schema accepts --------------------------------------------------------------------


def test_an_empty_file_is_every_default(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "# only a comment\n")) == Config()


def test_every_problem_is_its_own_line_with_its_dotted_path():
    with pytest.raises(UserError) as err:
        validate({"optimizer": {"lr": 0, "momentum": 2}, "train": {"epochs": "ten"}}, "x.yaml")
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("x.yaml: optimizer.lr: must be > 0")
    assert lines[1].startswith("x.yaml: optimizer.momentum: must be in [0, 1)")
    assert lines[2].startswith("x.yaml: train.epochs: must be a whole number")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"optimizer": {"lr": "0.1"}}, r"optimizer\.lr: must be a number, got '0\.1' \(str\)"),
        ({"train": {"epochs": True}}, r"train\.epochs: must be a whole number"),
        ({"train": {"epochs": 1.5}}, r"train\.epochs: must be a whole number"),
        ({"train": {"batch_size": 0}}, r"train\.batch_size: must be 'full' or a whole number >= 1, got 0"),
        ({"train": {"batch_size": 2.0}}, r"train\.batch_size: must be 'full' or a whole number"),
        ({"data": {"n_samples": 100}, "train": {"batch_size": 81}}, r"train\.batch_size: 81 is more than the 80 train"),
        ({"optimizer": {"lr": float("nan")}}, r"optimizer\.lr: must be > 0, got nan"),
        ({"optimizer": {"name": "adam", "betas": [0.9]}}, r"optimizer\.betas: must be two numbers"),
        ({"optimizer": {"nesterov": True}}, r"optimizer\.nesterov: needs momentum > 0"),
        ({"train": {"epochs": 3, "max_steps": 5}}, r"train\.epochs: set train\.epochs or train\.max_steps, not both"),
        ({"train": {"loss": "cross_entropy"}}, r"train\.loss: cross_entropy is for classification"),
        ({"data": {"name": "blobs"}, "train": {"loss": "bce"}}, r"train\.loss: bce needs 2 classes"),
        ({"data": {"val_fraction": 0.999, "n_samples": 10}}, r"data\.val_fraction: leaves 0 training"),
        ({"experiment": {"name": "../up"}}, r"experiment\.name: must be 1-100 letters"),
        ({"experiment": {"run_name": "a/b"}}, r"experiment\.run_name: must be 1-100 letters"),
        ({"optimizer": {"name": "adamm"}}, r"optimizer\.name: unknown optimizer 'adamm'; did you mean 'adam'\?"),
        ({"schedule": {"name": "cosine", "gama": 0.5}}, r"schedule\.gama: unknown key"),
        ({"optimizer": 3}, r"optimizer: must be a mapping of keys, got 3"),
    ],
)
def test_bad_values_name_their_path_and_what_is_allowed(raw, message):
    with pytest.raises(UserError, match=message):
        validate(raw, "x.yaml")


def test_no_config_error_leaks_a_pydantic_error_or_url():
    with pytest.raises(UserError) as err:
        validate({"optimizer": {"lr": 0}, "data": {"name": "moons", "weight": [1.0]}}, "x.yaml")
    assert "pydantic" not in str(err.value) and "http" not in str(err.value)


# --- shipped configs and the resolved form ------------------------------------------------------


def test_the_shipped_configs_are_found():
    assert CONFIGS / "smoke.yaml" in SHIPPED and len(SHIPPED) > 1


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_validates_and_round_trips(tmp_path, path):
    cfg = load_config(path)
    assert reload(cfg, tmp_path) == cfg


@pytest.mark.parametrize("train", [{"max_steps": 5}, {"epochs": 3, "patience": 2}, {}])
def test_the_resolved_config_reads_back_as_the_same_config(tmp_path, train):
    cfg = validate({"train": train, "optimizer": {"name": "adam", "lr": 1e-4}}, "test")
    assert reload(cfg, tmp_path) == cfg


# --- registries match the schema (STYLE habit 5) ------------------------------------------------


def members(annotation: typing.Any) -> list[type[BaseModel]]:
    """The model classes of a (possibly Annotated) union annotation."""
    found = []
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append(arg)
        elif typing.get_args(arg):
            found.extend(members(arg))
    return found


def literal(model: type[BaseModel], field: str) -> set[str]:
    """The values a Literal field of a model accepts."""
    return set(typing.get_args(model.model_fields[field].annotation))


def schema_names(section: str) -> set[str]:
    """Every `name` the schema accepts for a tagged-union section of Config."""
    union = members(Config.model_fields[section].annotation)
    assert len(union) > 1, f"{section} is not a union"
    return set().union(*(literal(m, "name") for m in union))


def test_the_schema_helpers_see_the_schema():
    assert {"linear_regression", "mnist"} <= schema_names("data")
    assert {"sgd", "adam"} <= schema_names("optimizer")


@pytest.mark.parametrize(
    ("section", "registries"),
    [
        ("data", [DATASET_HELP]),
        ("model", [MODELS, MODEL_HELP]),
        ("optimizer", [OPTIMIZERS, OPTIMIZER_HELP]),
        ("schedule", [SCHEDULE_HELP]),
    ],
)
def test_registries_hold_exactly_the_names_the_schema_accepts(section, registries):
    for registry in registries:
        assert set(registry) == schema_names(section)


def test_synthetic_builders_cover_every_dataset_but_the_image_files():
    images = literal(ImageData, "name")
    assert set(SYNTHETIC) == schema_names("data") - images - {"function"}  # a function has no samples
    assert {e.value for e in cli.ImageSet} == images  # what `gdtrain data download` accepts


def test_losses_and_activations_match_their_literals():
    losses = literal(TrainConfig, "loss")
    assert set(LOSSES) == set(LOSS_HELP) == set(LOSS_TASKS) == losses
    assert set(ACTIVATIONS) == literal(MLPModel, "activation")
    assert {e.value for e in cli.Device} == literal(TrainConfig, "device")


def test_every_implementation_name_has_torch_arguments():
    accepted = set().union(
        *(
            literal(m, "implementation")
            for m in members(Config.model_fields["optimizer"].annotation)
            if "implementation" in m.model_fields
        )
    )
    assert set(IMPLEMENTATIONS) | {"auto"} == accepted  # auto resolves to one of them per optimizer and device


@pytest.mark.parametrize("name", sorted(SCHEDULE_HELP))
def test_every_schedule_builds(name):
    cfg = validate({"schedule": {"name": name}}, "test").schedule
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    scheduler = build_schedule(cfg, optimizer, epochs=4)
    assert (scheduler is None) == (name == "constant")


@pytest.mark.parametrize(("name", "activation"), [("linear", None)] + [("mlp", a) for a in sorted(ACTIVATIONS)])
def test_every_model_and_activation_builds_with_the_dataset_sizes(name, activation):
    raw = {"name": name} | ({"activation": activation, "hidden_sizes": [4]} if activation else {})
    model = build_model(validate({"model": raw}, "test").model, 3, 2)
    out = model(torch.zeros(5, 3))  # (B, in) → (B, out)
    assert out.shape == (5, 2) and math.isfinite(out.sum().item())
