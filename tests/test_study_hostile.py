"""Hostile study files: every field of the study schema, and every key of an `optimizers:` entry, given
values of every type. Each document either loads (and its trials validate) or is a UserError line:
never a traceback, never another exception, never a hang. Each `@example` is a crash the fuzzer found."""

from __future__ import annotations

import copy
import tempfile
import typing
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gdtrain.core.errors import UserError
from gdtrain.study.spec import STUDY_KEYS, StudyMeta, load_study
from test_hostile import time_limit

VALID = {
    "study": {"name": "fuzz", "seed": 0},
    "base": {
        "data": {"name": "moons", "n_samples": 64},
        "model": {"name": "mlp", "hidden_sizes": [4]},
        "train": {"epochs": 1, "loss": "bce"},
    },
    "optimizers": [
        {"name": "sgd", "momentum": 0.9, "lr": {"log_uniform": [0.01, 1.0]}},
        {"name": "adam", "label": "a", "betas": [0.9, 0.99], "lr": [0.1, 0.01]},
    ],
    "budget": 2,
    "sampler": "quasirandom",
    "seeds": 2,
    "select": "accuracy/val",
}
# Where a value can go: every top-level key, every study.* key, the base's sections and every key an
# optimizer entry may hold (its settings, its label, its search-space forms).
PATHS = (
    [(key,) for key in STUDY_KEYS]
    + [("study", key) for key in StudyMeta.model_fields]
    + [("base", key) for key in ("data", "model", "train", "schedule", "experiment", "optimizer")]
    + [("optimizers", i) for i in range(3)]
    + [("optimizers", 0, key) for key in ("name", "label", "lr", "momentum", "nesterov", "dampening", "rest")]
    + [("optimizers", 1, key) for key in ("name", "label", "lr", "betas", "eps", "weight_decay", "amsgrad")]
    + [("optimizers", 0, "lr", "log_uniform"), ("optimizers", 1, "lr", 0), ("optimizers", 0, "lr", "uniform")]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, 1, 2, -1, 2**63, 10**30]),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(
        ["sgd", "adam", "muon", "lbfgs", "torch.optim:SGD", "nosuch:Cls", "a:b:c", "../x", "accuracy/test", "grid"]
    ),
)
SPACES = st.one_of(
    st.dictionaries(st.sampled_from(["log_uniform", "uniform", "normal"]), st.lists(SCALARS, max_size=3), max_size=2),
    st.lists(SCALARS, max_size=3),
)
VALUES = st.recursive(
    st.one_of(SCALARS, SPACES),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | SCALARS, inner, max_size=3),
    max_leaves=8,
)
CHANGES = st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=3)


def mutated(changes: list[tuple[tuple, typing.Any]]) -> dict:
    """VALID with each (path, value) put in place (a path through a value that is no container is skipped)."""
    doc = copy.deepcopy(VALID)
    for path, value in changes:
        node = doc
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = copy.deepcopy(value)
        except (KeyError, IndexError, TypeError):
            continue
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CHANGES)
@example([(("optimizers", 1, "lr"), [[1]])])  # a choice that is a list: its trial's name formatted it
@example([(("optimizers", 1, "lr"), ["", 0.01])])
@example([(("optimizers", 0, "lr"), [None])])
@example([(("optimizers", 0, "name"), {})])  # an unhashable name
@example([(("optimizers", 1, "name"), [])])
@example([(("base",), 5)])  # one mistake, one line (it was two: one per member of the union)
@example([(("base",), None)])
@example([(("base", "experiment"), True)])  # a section that is no mapping, which the study fills in
def test_a_study_file_loads_or_is_a_user_error(changes):
    doc = mutated(changes)
    with tempfile.TemporaryDirectory() as tmp, time_limit(20):
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        try:
            study = load_study(path)
        except UserError as err:
            message = str(err).strip()
            assert message and "Traceback" not in message and "pydantic" not in message, message
            return
    assert study.arms and study.select and study.report
