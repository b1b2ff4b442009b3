"""Studies: which optimizer is better on a problem, and how sure we are.

A study file names a base experiment, the optimizers with their search spaces, and one tuning
budget for all of them (that is the fairness, after Sivaprasad et al. 2020). `gdtrain study` then
1. tunes: `budget` trials per optimizer, drawn by the sampler from `study.seed`, all on the tuning
   seed `study.seed`;
2. selects, per optimizer, the trial with the best final `select` (validation) value;
3. reruns that setting on `seeds` fresh seeds (study.seed + 1, ...: disjoint from the tuning seed);
4. states the verdict from the reruns' `report` metric (gdtrain/report/stats.py, gdtrain/study/report.py).
With `repeats: R`, steps 1-3 run R times per optimizer, independent pipelines: repeat r draws its
trials and trains them from its own seed, study.seed + (r - 1) * SEED_STRIDE, and reruns on the seeds
after it, so no two repeats share a seed; the verdict is then over the pipelines
(gdtrain/report/pipelines.py) and includes the variance of tuning itself. Repeat 1 is the study
without repeats, names and seeds alike, so `--set repeats=R --resume` adds repeats to a finished study.
Every trial and rerun is an ordinary run folder in DIR/<study-name>/, so --resume, compare and
TensorBoard treat them as any run; its manifest.json lists them (gdtrain/core/manifest.py).
This module holds the schema and the points; runner.py runs the phases.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Field, field_validator

from gdtrain.core import optimizers as registry
from gdtrain.core.config import (
    Config,
    FunctionData,
    ImageData,
    Section,
    apply_overrides,
    check_name,
    look_beside,
    optimizer_fields,
    read_config,
    validate,
)
from gdtrain.core.errors import UserError
from gdtrain.core.yamlio import format_validation_error, load_yaml

STUDY_KEYS = ("study", "base", "optimizers", "budget", "sampler", "seeds", "repeats", "select", "report", "target")
MAX_SEEDS, MAX_REPEATS = 1000, 100
SEED_STRIDE = MAX_SEEDS + 1  # repeat r's seeds: study.seed + (r - 1) * SEED_STRIDE, then its reruns' after it


class StudyMeta(Section):
    name: Annotated[str, AfterValidator(check_name)] = "study"  # the folder DIR/<name>/
    seed: Annotated[int, Field(ge=0, le=2**32 - 1 - MAX_REPEATS * SEED_STRIDE)] = (
        0  # sampler and tuning seed; reruns seed+1..
    )


class StudySpec(Section):
    """A study file, validated; `optimizers` entries are checked against their optimizer's schema."""

    study: StudyMeta = StudyMeta()
    base: str | dict[str, Any]  # a config file (relative to the study file) or an inline config
    optimizers: Annotated[list[dict[str, Any]], Field(min_length=1)]  # {name, label?, fixed keys, spaces}
    budget: Annotated[int, Field(ge=1, le=1000)]  # trials per optimizer, the same for each
    sampler: Literal["grid", "random", "quasirandom"] = "quasirandom"  # quasirandom: scrambled Halton
    seeds: Annotated[int, Field(ge=2, le=MAX_SEEDS)] = 5  # reruns of each chosen setting; 2 at least for a CI
    repeats: Annotated[int, Field(ge=1, le=MAX_REPEATS)] = (
        1  # independent tune → choose → rerun pipelines per optimizer
    )
    select: str | None = None  # validation metric that chooses; None: accuracy/val, else loss/val
    report: str | None = None  # metric of the verdict; None: the test one when there is a test split
    target: float | None = None  # value of `select` whose steps and samples to reach are reported

    @field_validator("base", mode="before")
    @classmethod
    def _one_base(cls, v: Any) -> Any:
        # One line for one mistake: without this pydantic reports each member of the union.
        if not isinstance(v, (str, dict)):
            raise ValueError(
                f"must be a config file (a path relative to the study file) or an inline config "
                f"(a mapping), got {v!r} ({type(v).__name__})"
            )
        return v

    @field_validator("target")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v!r}")
        return v


class Space:
    """One searched key: a log-uniform or uniform range, or a list of choices."""

    def __init__(self, kind: str, values: list[Any]) -> None:
        self.kind, self.values = kind, values  # kind: log_uniform | uniform | choice

    def at(self, u: float) -> Any:
        """The value at quantile u in [0, 1) of this space."""
        if self.kind == "choice":
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        lo, hi = self.values
        value = (
            math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
            if self.kind == "log_uniform"
            else lo + u * (hi - lo)
        )
        return float(f"{value:.4g}")  # 4 significant digits: readable configs, no lost resolution that matters

    def grid(self, n: int) -> list[Any]:
        """n evenly spaced values (log-spaced for log_uniform), ends included; every choice for a list."""
        if self.kind == "choice":
            return list(self.values)
        return [self.at(0.5 if n == 1 else i / (n - 1) * (1 - 1e-12)) for i in range(n)]


class Arm:
    """One optimizer of a study: its label, fixed settings and search spaces."""

    def __init__(self, label: str, fixed: dict[str, Any], spaces: dict[str, Space]) -> None:
        self.label, self.fixed, self.spaces = label, fixed, spaces

    def describe(self) -> str:
        """What is tuned over which range and what is fixed: `sgd, lr log-uniform 0.0003–0.3; momentum 0.9 fixed`
        (the optimizer named where the label is not its name)."""
        tuned = [
            f"{key} "
            + (
                f"one of {s.values}"
                if s.kind == "choice"
                else f"{s.kind.replace('_', '-')} {s.values[0]:g}–{s.values[1]:g}"
            )
            for key, s in self.spaces.items()
        ]
        fixed = [f"{key} {value}" for key, value in self.fixed.items() if key != "name"]
        text = "; ".join(tuned + ([", ".join(fixed) + " fixed"] if fixed else []))
        return text if self.label == self.fixed["name"] else f"{self.fixed['name']}, {text}"


def _space(where: str, key: str, value: Any, field_is_list: bool) -> Space | None:
    """A search space from a study value, or None for a fixed setting."""
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in ("log_uniform", "uniform"):
            raise UserError(
                f"{where}.{key}: a search space is {{log_uniform: [lo, hi]}}, {{uniform: [lo, hi]}} "
                f"or a list of values, got {value!r}"
            )
        kind, bounds = next(iter(value.items()))
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
        ):
            raise UserError(f"{where}.{key}.{kind}: must be two finite numbers [lo, hi], got {bounds!r}")
        lo, hi = float(bounds[0]), float(bounds[1])
        if kind == "log_uniform" and lo <= 0:
            raise UserError(f"{where}.{key}.log_uniform: lo must be > 0 (a log scale), got {bounds[0]!r}")
        if lo >= hi:
            raise UserError(f"{where}.{key}.{kind}: lo must be < hi, got [{bounds[0]!r}, {bounds[1]!r}]")
        return Space(kind, [lo, hi])
    is_choices = isinstance(value, list) and (not field_is_list or all(isinstance(v, list) for v in value))
    if is_choices:
        if not value:
            raise UserError(f"{where}.{key}: an empty list of choices; give at least one value")
        return Space("choice", list(value))
    return None


def _arm(source: str, index: int, entry: dict[str, Any]) -> Arm:
    """Check one `optimizers` entry against its optimizer's schema."""
    where = f"{source}: optimizers[{index}]"
    name = entry.get("name")
    try:
        fields = optimizer_fields(name)
    except ValueError as err:
        raise UserError(f"{where}.{err}") from None
    # A user's class is labelled by its class name (a folder name holds no ':'): signsgd:SignSGD -> SignSGD.
    label = entry.get("label", registry.display_name(name) if isinstance(name, str) else name)
    try:
        check_name(label) if isinstance(label, str) else None
    except ValueError as err:
        raise UserError(f"{where}.label: {err}") from None
    if not isinstance(label, str):
        raise UserError(f"{where}.label: must be a string, got {label!r}")
    fixed, spaces = {"name": name}, {}
    for key, value in entry.items():
        if key in ("name", "label"):
            continue
        if key not in fields:
            raise UserError(
                f"{where}.{key}: unknown key for {name}; valid keys: label, "
                f"{', '.join(k for k in fields if k != 'name')}"
            )
        if key == "rest":  # muon's optimizer for the other parameters: a section, fixed
            fixed[key] = value
            continue
        field_is_list = "tuple" in str(fields[key].annotation)  # betas: a pair is a value, a list of pairs choices
        space = _space(where, key, value, field_is_list)
        if space is None:
            fixed[key] = value
        else:
            spaces[key] = space
    if "lr" not in spaces:
        raise UserError(
            f"{where}.lr: every optimizer searches its lr, e.g. lr: {{log_uniform: [1e-4, 1]}} or lr: [0.1, 0.01]"
        )
    for lr in spaces["lr"].values:  # the trials' names carry their lr, so it is checked before they are named
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise UserError(f"{where}.lr: each value must be a number > 0, got {lr!r}; e.g. lr: [0.1, 0.01]")
    order = ["lr"] + sorted(key for key in spaces if key != "lr")  # lr is every arm's first axis: matched draws
    return Arm(label, fixed, {key: spaces[key] for key in order})


class Study:
    """A validated study: the spec, the base document, its arms and the metrics it uses."""

    def __init__(
        self,
        spec: StudySpec,
        base: dict[str, Any],
        arms: list[Arm],
        select: str,
        report: str,
        source: str,
        overrides: list[str] = (),
    ) -> None:
        self.spec, self.base, self.arms, self.select, self.report, self.source = (
            spec,
            base,
            arms,
            select,
            report,
            source,
        )
        self.overrides = list(overrides)  # the --set options it was loaded with: its resume command repeats them

    @property
    def name(self) -> str:
        """The study's folder name."""
        return self.spec.study.name


def load_study(path: Path, overrides: list[str] = ()) -> Study:
    """Read and check a study file and every trial it implies; any problem is a UserError line."""
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(
            f"{path}: a study must be a mapping (study, base, optimizers, budget, ...), got {type(raw).__name__}"
        )
    study_sets = [o for o in overrides if o.partition("=")[0].split(".")[0] in STUDY_KEYS]
    base_sets = [o for o in overrides if o not in study_sets]
    if any(o.startswith("optimizer.") or o.startswith("optimizer=") for o in base_sets):
        raise UserError("--set optimizer...: a study's optimizers come from its optimizers: list; set them there")
    raw = apply_overrides(raw, study_sets)
    look_beside(path, raw)  # an optimizers: entry naming module:Class finds it beside the study file
    try:
        spec = StudySpec.model_validate(raw)
    except Exception as err:
        raise UserError(format_validation_error(err, StudySpec, str(path))) from None
    if isinstance(spec.base, str):
        base_path = (path.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
        base = read_config(base_path)
        base.pop("optimizer", None)  # the study's optimizers replace it
    else:
        base = copy.deepcopy(spec.base)
        if "optimizer" in base:
            raise UserError(f"{path}: base.optimizer: a study's optimizers come from its optimizers: list; remove it")
    base = apply_overrides(base, base_sets)
    experiment = base.get("experiment")
    if experiment is not None and not isinstance(experiment, dict):  # the study sets its name and seed in it
        raise UserError(f"{path}: base.experiment: must be a mapping of keys, got {experiment!r}")
    arms = [_arm(str(path), i, entry if isinstance(entry, dict) else {}) for i, entry in enumerate(spec.optimizers)]
    labels = [arm.label for arm in arms]
    if len(set(labels)) != len(labels):
        raise UserError(
            f"{path}: optimizers: two entries share the label {_first_repeat(labels)!r}; "
            "give each a distinct label, e.g. label: momentum"
        )
    probe = validate(_document(base, arms[0].fixed | {"lr": 1e-3}, spec.study, spec.study.seed), f"{path}: base")
    select, report = _metrics(spec, probe, path)
    study = Study(spec, base, arms, select, report, str(path), list(overrides))
    for point in tuning_points(study):  # every trial's config is checked before any runs
        validate(copy.deepcopy(point[2]), f"{path}: optimizers ({point[0]})")
    return study


def _first_repeat(items: list[str]) -> str:
    return next(item for i, item in enumerate(items) if item in items[:i])


def _metrics(spec: StudySpec, probe: Config, path: Path) -> tuple[str, str]:
    """The select and report metrics, checked against what this task logs."""
    kinds = ["loss"] + ([] if probe.train.loss == "mse" else ["accuracy"])
    has_test = isinstance(probe.data, ImageData)
    # A function problem has no data to hold out: its one figure is f(x), logged as loss/train.
    logged_val = ["loss/train"] if isinstance(probe.data, FunctionData) else [f"{k}/val" for k in kinds]
    select = spec.select or logged_val[-1]
    if select.endswith("/test"):
        raise UserError(
            f"{path}: select: {select} is a test metric; choosing on it leaks the test set into "
            f"tuning; use one of: {', '.join(logged_val)}"
        )
    if select not in logged_val:
        raise UserError(f"{path}: select: this task does not log {select!r}; use one of: {', '.join(logged_val)}")
    reportable = logged_val + ([f"{k}/test" for k in kinds] if has_test else [])
    report = spec.report or (select.replace("/val", "/test") if has_test else select)
    if report not in reportable:
        raise UserError(f"{path}: report: this task does not log {report!r}; use one of: {', '.join(reportable)}")
    return select, report


def _document(base: dict[str, Any], optimizer: dict[str, Any], meta: StudyMeta, seed: int) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    doc["experiment"] = {**(doc.get("experiment") or {}), "name": meta.name, "seed": seed}
    doc["experiment"].pop("run_name", None)
    doc["optimizer"] = dict(optimizer)
    return doc


def repeat_seed(study: Study, repeat: int) -> int:
    """The seed of repeat `repeat` (1-based): its sampler's and its trials' training seed."""
    return study.spec.study.seed + (repeat - 1) * SEED_STRIDE


def samples(study: Study, arm: Arm, repeat: int = 1) -> list[dict[str, Any]]:
    """The arm's `budget` settings of its searched keys in one repeat, from the sampler and the repeat's
    seed. Every arm gets the same points of the unit cube, each mapped into its own space: matched
    draws. A grid is the same in every repeat (its repeats differ in their seeds only)."""
    spec, keys, seed = study.spec, list(arm.spaces), repeat_seed(study, repeat)
    if spec.sampler == "grid":
        return _grid(study, arm)
    if spec.sampler == "random":
        unit = np.random.default_rng(seed).random((spec.budget, len(keys)))
    else:
        from scipy.stats import qmc  # AlgoPerf's choice: a scrambled Halton sequence

        unit = qmc.Halton(d=len(keys), scramble=True, seed=seed).random(spec.budget)
    return [{key: arm.spaces[key].at(float(u)) for key, u in zip(keys, row)} for row in unit]


def _grid(study: Study, arm: Arm) -> list[dict[str, Any]]:
    """A full grid of exactly `budget` points: lists give their choices, ranges share the rest."""
    import itertools

    budget, where = study.spec.budget, f"{study.source}: optimizers ({arm.label})"
    choices = math.prod(len(s.values) for s in arm.spaces.values() if s.kind == "choice")
    ranges = [key for key, s in arm.spaces.items() if s.kind != "choice"]
    per_range = round((budget / choices) ** (1 / len(ranges))) if ranges else 1
    if choices * per_range ** len(ranges) != budget:
        raise UserError(
            f"{where}: sampler grid: {choices} choice combinations and {len(ranges)} range(s) cannot make "
            f"exactly budget {budget} points; use sampler: quasirandom, or a budget of "
            f"{choices} x n^{len(ranges)}"
        )
    axes = {key: space.grid(per_range) for key, space in arm.spaces.items()}
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def _lr_text(value: float) -> str:
    return f"{value:.3g}"


def _prefix(arm: Arm, repeat: int) -> str:
    return arm.label if repeat == 1 else f"{arm.label}-r{repeat}"


def trial_name(arm: Arm, index: int, setting: dict[str, Any], repeat: int = 1) -> str:
    """`adam-t03-lr0.00123` (`adam-r2-t03-lr0.00123` in repeat 2): the optimizer, the trial number and its lr."""
    return f"{_prefix(arm, repeat)}-t{index:02d}-lr{_lr_text(setting['lr'])}"


def rerun_name(arm: Arm, seed: int, repeat: int = 1) -> str:
    """`adam-s1` (`adam-r2-s1002` in repeat 2): the optimizer and the seed of a rerun of its chosen setting."""
    return f"{_prefix(arm, repeat)}-s{seed}"


def repeats(study: Study) -> range:
    """The repeats, 1-based."""
    return range(1, study.spec.repeats + 1)


def tuning_points(study: Study, repeat: int | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(arm label, run name, config document) of every tuning trial of one repeat (None: of every
    repeat, repeat after repeat), optimizer after optimizer."""
    points = []
    for r in repeats(study) if repeat is None else [repeat]:
        for arm in study.arms:
            for i, setting in enumerate(samples(study, arm, r), 1):
                doc = _document(study.base, arm.fixed | setting, study.spec.study, repeat_seed(study, r))
                points.append((arm.label, trial_name(arm, i, setting, r), doc))
    return points


def rerun_seeds(study: Study, repeat: int = 1) -> list[int]:
    """The repeat's seed + 1 .. + seeds: never a tuning seed, nor another repeat's."""
    return [repeat_seed(study, repeat) + k for k in range(1, study.spec.seeds + 1)]


def rerun_points(study: Study, chosen: dict[tuple[str, int], dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(arm label, run name, config document) of every rerun of each (arm label, repeat)'s chosen optimizer
    section, repeat after repeat."""
    points = []
    for r in repeats(study):
        for arm in study.arms:
            if (arm.label, r) not in chosen:
                continue  # every trial diverged: nothing to rerun
            for seed in rerun_seeds(study, r):
                doc = _document(study.base, chosen[arm.label, r], study.spec.study, seed)
                points.append((arm.label, rerun_name(arm, seed, r), doc))
    return points
