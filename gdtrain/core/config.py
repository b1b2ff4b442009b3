"""The experiment schema: every setting, its type, default, range and reason, declared once.

Only this module reads YAML. A config is validated whole (file, then `--set` overrides) before
any data or model is touched; errors name their dotted path (`optimizer.lr: must be > 0, got -0.1`).
Sections whose fields depend on a `name` (data, model, optimizer, schedule) are unions tagged by it.
Sizes (n_samples, n_features, n_classes, hidden_sizes, batch_size, eval_batch_size) have no upper
bound here: what fits depends on the machine, so gdtrain/training/memory.py checks them against the device's
free memory when a run starts, before anything is allocated.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
    field_validator,
    model_validator,
)

from gdtrain.core import optimizers as registry
from gdtrain.core import user
from gdtrain.core.errors import UserError
from gdtrain.core.fields import BatchSize, Fraction, NonNegative, NonNegInt, OpenFraction, PosInt, Positive, interval
from gdtrain.core.yamlio import format_validation_error, load_yaml, parse_value

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]{0,99}$")  # folder names: no '/', no '..'


def check_name(value: str) -> str:
    """Accept a run or experiment name only if it is a safe single folder name."""
    if not SAFE_NAME.fullmatch(value) or ".." in value:  # fullmatch: `$` would let a final newline through
        raise ValueError(
            f"must be 1-100 letters, digits or . _ - = , + (starting with a letter or digit, no '..'), got {value!r}"
        )
    return value


class Section(BaseModel):
    """Base of every config section: strict types, unknown keys are errors, frozen after load."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- experiment -------------------------------------------------------------------------------


class ExperimentConfig(Section):
    name: Annotated[str, AfterValidator(check_name)] = "default"  # the folder runs/<name>/
    run_name: Annotated[str, AfterValidator(check_name)] | None = None  # None: <optimizer>-lr<lr>
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0  # seeds torch, numpy (its limit), random, data and data order


# --- data -------------------------------------------------------------------------------------


class LinearRegressionData(Section):
    """y = w·x + b + noise, x ~ N(0, 1) per feature."""

    name: Literal["linear_regression"] = "linear_regression"
    n_samples: Annotated[int, Field(ge=2)] = 1000  # before the train/val split
    weight: Annotated[list[float], Field(min_length=1)] = [2.0]  # true w; its length is the input size
    bias: float = 3.0  # true b
    noise: NonNegative = 0.1  # std of the Gaussian noise added to y
    val_fraction: OpenFraction = 0.2  # share of samples held out for validation

    task: ClassVar[str] = "regression"
    n_classes: ClassVar[None] = None


class BlobsData(Section):
    """Gaussian blobs: n_classes clusters in n_features dimensions, centres uniform in a box."""

    name: Literal["blobs"] = "blobs"
    n_samples: Annotated[int, Field(ge=2)] = 1000
    n_classes: Annotated[int, Field(ge=2)] = 3
    n_features: PosInt = 2
    cluster_std: Positive = 1.0  # std of each blob around its centre
    center_box: Positive = 5.0  # centres drawn uniformly from [-center_box, center_box]^d
    val_fraction: OpenFraction = 0.2

    task: ClassVar[str] = "classification"


class MoonsData(Section):
    """Two interleaved half-moons in 2-D: a binary set no linear boundary separates."""

    name: Literal["moons"] = "moons"
    n_samples: Annotated[int, Field(ge=2)] = 1000
    noise: NonNegative = 0.1  # std of Gaussian jitter on each point
    val_fraction: OpenFraction = 0.2

    task: ClassVar[str] = "classification"
    n_classes: ClassVar[int] = 2


class XorData(Section):
    """Points uniform in [-1, 1]^2 labelled by sign(x1)·sign(x2): XOR, not linearly separable."""

    name: Literal["xor"] = "xor"
    n_samples: Annotated[int, Field(ge=2)] = 1000
    noise: NonNegative = 0.0  # std of Gaussian jitter added after labelling
    val_fraction: OpenFraction = 0.2

    task: ClassVar[str] = "classification"
    n_classes: ClassVar[int] = 2


class ImageData(Section):
    """MNIST, Fashion-MNIST or KMNIST from the standard IDX files in <root>/<Folder>/raw/."""

    name: Literal["mnist", "fashion_mnist", "kmnist"] = "mnist"
    # The folder that holds MNIST/raw/ etc.; None: $GDTRAIN_DATA, else ./data. Made absolute when the
    # config is read, so a run's config.yaml records where it found its files: its rerun and resume
    # from another shell or folder read the same ones.
    root: Annotated[str | None, Field(validate_default=True)] = None
    download: bool = False  # fetch missing files from the public mirrors (md5-checked)
    val_size: PosInt = 5000  # images held out of the training set for validation, fixed by the seed
    normalize: Literal["none", "unit", "standard", "half"] = "unit"  # 0-255, [0,1], mean/std, [-1,1]

    task: ClassVar[str] = "classification"
    n_classes: ClassVar[int] = 10

    @field_validator("root")
    @classmethod
    def _absolute(cls, v: str | None) -> str:
        return str(Path(v or os.environ.get("GDTRAIN_DATA") or "data").expanduser().absolute())


class FunctionData(Section):
    """No samples: minimise a named test function f(x) from `start`; x is the one parameter."""

    name: Literal["function"] = "function"
    function: Literal["quadratic", "ill_conditioned", "rosenbrock", "rastrigin", "beale"] = "quadratic"
    start: list[float] | None = None  # x₀, its length the dimension; None: the function's STARTS entry

    task: ClassVar[str] = "function"
    n_classes: ClassVar[None] = None
    # Dimensions each function is defined in, and its usual start (the tutorials': x² from 10).
    DIMENSIONS: ClassVar[dict[str, tuple[int, ...]]] = {
        "quadratic": (1, 2),
        "ill_conditioned": (2,),
        "rosenbrock": (2,),
        "rastrigin": (2,),
        "beale": (2,),
    }
    STARTS: ClassVar[dict[str, list[float]]] = {
        "quadratic": [10.0],
        "ill_conditioned": [-9.0, 2.5],
        "rosenbrock": [-1.5, 2.5],
        "rastrigin": [2.2, 1.7],
        "beale": [1.0, 1.5],
    }

    @model_validator(mode="before")
    @classmethod
    def _usual_start(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("start") is None:
            function = raw.get("function", "quadratic")
            raw = {**raw, "start": cls.STARTS.get(function) if isinstance(function, str) else None}
        return raw

    @model_validator(mode="after")
    def _start_fits(self) -> FunctionData:
        dims = self.DIMENSIONS[self.function]
        if self.start is None or len(self.start) not in dims:
            need = " or ".join(f"{d}-D [{', '.join('xy'[:d])}]" for d in dims)
            raise ValueError(f"start: {self.function} takes a {need} start point, got {self.start!r}")
        if not all(math.isfinite(v) for v in self.start):
            raise ValueError(f"start: must be finite numbers, got {self.start!r}")
        return self


DataConfig = Annotated[
    LinearRegressionData | BlobsData | MoonsData | XorData | ImageData | FunctionData,
    Field(discriminator="name"),
]

# --- model ------------------------------------------------------------------------------------

Init = Literal["default", "xavier", "he"]  # default: PyTorch's own (Kaiming-uniform, a=sqrt(5))


class LinearModel(Section):
    """One affine layer; regression, logistic or softmax regression depending on the loss."""

    name: Literal["linear"] = "linear"
    bias: bool = True
    init: Init = "default"


class MLPModel(Section):
    """Fully connected layers with an activation between them."""

    name: Literal["mlp"] = "mlp"
    hidden_sizes: Annotated[list[PosInt], Field(min_length=1)] = [128]
    activation: Literal["relu", "leaky_relu", "tanh", "sigmoid"] = "relu"
    init: Init = "default"  # xavier suits tanh/sigmoid, he suits relu
    dropout: Fraction = 0.0  # probability, after each hidden activation


ModelConfig = Annotated[LinearModel | MLPModel, Field(discriminator="name")]

# --- optimizer: built from the registry (optimizers.py), torch.optim's own names and defaults ------


def _section(entry: registry.Entry, rest: Any = None) -> type[Section]:
    """The config section of one registry entry: `name`, its settings, `implementation` when torch offers a choice."""
    fields: dict[str, Any] = {"name": (Literal[entry.name], entry.name)}
    for key, setting in entry.settings.items():
        fields[key] = (setting.type, Field(setting.default, description=setting.comment))
    if len(entry.kernels) > 1:  # auto: the fastest torch offers (optimizers.implementation)
        fields["implementation"] = (Literal[("auto", *entry.kernels)], "auto")
    if entry.rest:
        fields["rest"] = (rest, Field(description="the optimizer of the parameters that are not 2-D weights"))
    validators = {}
    if entry.rest:

        def _needs_rest(cls: Any, data: Any) -> Any:
            if isinstance(data, dict) and "rest" not in data:
                raise ValueError(
                    f"rest: {entry.name} updates only 2-D weight matrices; name the optimizer for the other "
                    "parameters (biases), e.g. rest: {name: adamw, lr: 0.001} (required even for a model without "
                    "biases, so that one config fits every model)"
                )
            return data

        validators["_needs_rest"] = model_validator(mode="before")(_needs_rest)
    if entry.check is not None:
        check = entry.check

        def _check(self: Any) -> Any:
            problem = check(self)
            if problem:
                raise ValueError(problem)
            return self

        validators["_check"] = model_validator(mode="after")(_check)
    name = "".join(part.capitalize() for part in entry.name.split("_")) + "Config"
    return create_model(name, __base__=Section, __validators__=validators, __module__=__name__, **fields)


class UserOptimizer(Section):
    """A user's own class, `name: "module:ClassName"`: its settings are its constructor's (user.py)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    name: str

    @model_validator(mode="before")
    @classmethod
    def _settings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        values = {k: v for k, v in data.items() if k != "name"}
        return {"name": data["name"], **user.check_settings(data["name"], values)}


class RefusedOptimizer(Section):
    """A torch.optim class that does not fit gdtrain's loop (optimizers.REFUSED): an error that says why."""

    name: str

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        raise ValueError(f"name: {registry.REFUSED[str(data['name']).lower()]}")


def _optimizer_name(value: Any) -> Any:
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    if registry.is_user(name):
        return "module:Class"
    return "refused" if isinstance(name, str) and name.lower() in registry.REFUSED else name


def _union(entries: list[registry.Entry], rest: Any = None) -> tuple[Any, dict[str, type[Section]]]:
    sections = {entry.name: _section(entry, rest) for entry in entries}
    members = [Annotated[model, Tag(name)] for name, model in sections.items()]
    members.append(Annotated[UserOptimizer, Tag("module:Class")])
    members.append(Annotated[RefusedOptimizer, Tag("refused")])
    return Annotated[Union[tuple(members)], Discriminator(_optimizer_name)], sections  # noqa: UP007


# Muon's `rest` takes any optimizer but another one that needs a rest.
RestConfig, _REST_SECTIONS = _union([e for e in registry.ENTRIES if not e.rest])
OptimizerConfig, OPTIMIZER_SECTIONS = _union(list(registry.ENTRIES), RestConfig)
SGDConfig, AdagradConfig, RMSpropConfig, AdamConfig, AdamWConfig = (
    OPTIMIZER_SECTIONS[name] for name in ("sgd", "adagrad", "rmsprop", "adam", "adamw")
)


def optimizer_fields(name: Any) -> dict[str, Any]:
    """The settings an optimizer name takes (pydantic FieldInfo by key, `name` included); ValueError
    `name: why` for a name that is neither in the registry nor a loadable `module:Class`."""
    if registry.is_user(name):
        return {"name": UserOptimizer.model_fields["name"], **user.settings_model(user.load_class(name)).model_fields}
    if isinstance(name, str) and name.lower() in registry.REFUSED:
        raise ValueError(f"name: {registry.REFUSED[name.lower()]}")
    if not isinstance(name, str) or name not in OPTIMIZER_SECTIONS:
        raise ValueError(
            f"name: unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZER_SECTIONS)}"
            " (or module:ClassName, a class of your own)"
        )
    return dict(OPTIMIZER_SECTIONS[name].model_fields)


# --- schedule: torch.optim.lr_scheduler, stepped once per epoch; warm-up per optimizer step ----


class ScheduleBase(Section):
    warmup_steps: NonNegInt = 0  # optimizer steps of linear warm-up from warmup_start_factor·lr
    warmup_start_factor: Annotated[float, interval(0, 1, lo_open=True)] = 0.1


class ConstantSchedule(ScheduleBase):
    name: Literal["constant"] = "constant"


class StepSchedule(ScheduleBase):
    name: Literal["step"] = "step"
    step_size: PosInt = 10  # epochs between decays
    gamma: OpenFraction = 0.1  # lr factor at each decay


class ExponentialSchedule(ScheduleBase):
    name: Literal["exponential"] = "exponential"
    gamma: OpenFraction = 0.95  # lr factor per epoch


class CosineSchedule(ScheduleBase):
    name: Literal["cosine"] = "cosine"
    t_max: PosInt | None = None  # epochs of one half-period; None: the whole run
    eta_min: NonNegative = 0.0  # lr at the bottom of the cosine


class PlateauSchedule(ScheduleBase):
    """Reduce the lr when the validation loss stops improving (ReduceLROnPlateau, mode min)."""

    name: Literal["plateau"] = "plateau"
    factor: OpenFraction = 0.1
    patience: NonNegInt = 3  # epochs with no improvement before a reduction
    threshold: NonNegative = 1e-4  # relative improvement that counts
    min_lr: NonNegative = 0.0


ScheduleConfig = Annotated[
    ConstantSchedule | StepSchedule | ExponentialSchedule | CosineSchedule | PlateauSchedule,
    Field(discriminator="name"),
]

# --- train ------------------------------------------------------------------------------------


class TrainConfig(Section):
    epochs: PosInt = 10  # upper bound on passes over the training set
    max_steps: PosInt | None = None  # optimizer-step budget; when set, epochs is not used
    batch_size: BatchSize = 32  # full: batch GD, 1: stochastic GD, else mini-batch
    loss: Literal["mse", "cross_entropy", "bce"] = "mse"  # bce takes logits (BCEWithLogitsLoss)
    grad_clip: Positive | None = None  # max total L2 norm of the gradients; None: no clipping
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    log_every: PosInt = 20  # optimizer steps between train-loss read-backs (a host sync on GPU)
    eval_batch_size: PosInt = 4096  # samples per forward pass in validation; memory, not maths
    patience: PosInt | None = None  # early stop after this many epochs without val-loss gain
    min_delta: NonNegative = 0.0  # val-loss decrease that counts as a gain
    checkpoint_every: PosInt | None = None  # optimizer steps between checkpoints, besides each epoch's end
    keep_last: PosInt = 2  # step checkpoints kept in checkpoints/ (best.pt is kept apart)
    precision: Literal["fp32", "bf16", "fp16"] = (
        "fp32"  # torch.autocast dtype of forward and loss; fp16 adds a GradScaler
    )
    compile: bool = False  # torch.compile the model (slow to start, faster per step on GPU); eager if it fails
    deterministic: bool = (
        False  # torch.use_deterministic_algorithms + cuDNN flags: same numbers on GPU too, slower there
    )

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        if self.max_steps is not None and "epochs" in self.model_fields_set:
            raise ValueError("epochs: set train.epochs or train.max_steps, not both")
        return self


# --- the whole experiment -----------------------------------------------------------------------

LOSS_TASKS = {"mse": "regression", "cross_entropy": "classification", "bce": "classification"}
# What train settings mean when data is a function: the loss is f(x), there are no samples and every
# step is logged, so only these keys apply; model does not apply either (the parameter is x itself).
FUNCTION_TRAIN_KEYS = ("max_steps", "grad_clip", "device")


class Config(Section):
    """One experiment: what to train, on what, with which optimizer and schedule, for how long."""

    experiment: ExperimentConfig = ExperimentConfig()
    data: DataConfig = LinearRegressionData()
    model: ModelConfig = LinearModel()
    optimizer: OptimizerConfig = SGDConfig()
    schedule: ScheduleConfig = ConstantSchedule()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _loss_fits_data(self) -> Config:
        if isinstance(self.data, FunctionData):
            return self._fits_function()
        loss, data = self.train.loss, self.data
        if LOSS_TASKS[loss] != data.task:
            fits = [name for name, task in LOSS_TASKS.items() if task == data.task]
            raise ValueError(
                f"train.loss: {loss} is for {LOSS_TASKS[loss]}, but data '{data.name}' is "
                f"{data.task}; use {' or '.join(fits)}"
            )
        if loss == "bce" and data.n_classes != 2:
            raise ValueError(
                f"train.loss: bce needs 2 classes, data '{data.name}' has {data.n_classes}; use cross_entropy"
            )
        if not isinstance(self.data, ImageData):  # file datasets are checked once read
            n_val = round(self.data.n_samples * self.data.val_fraction)
            self.check_sizes(self.data.n_samples - n_val, n_val)
        return self

    def _fits_function(self) -> Config:
        """A function problem sets no model, only FUNCTION_TRAIN_KEYS in train, and a step budget."""
        entry = registry.OPTIMIZERS.get(self.optimizer.name)
        if entry is not None and entry.rest:
            raise ValueError(
                f"optimizer.name: {entry.name} updates 2-D weight matrices, and a function's x is a vector; use adam"
            )
        if "model" in self.model_fields_set:
            raise ValueError("model: does not apply to data 'function' (the parameter is x itself); remove it")
        extra = sorted(self.train.model_fields_set - set(FUNCTION_TRAIN_KEYS))
        if extra:
            raise ValueError(
                f"train.{extra[0]}: does not apply to data 'function' (no samples, the loss is "
                f"f(x), every step is logged); it takes train.{', '.join(FUNCTION_TRAIN_KEYS)} only"
            )
        if self.train.max_steps is None:
            raise ValueError("train.max_steps: data 'function' needs a step budget, e.g. train: {max_steps: 20}")
        return self

    def check_sizes(self, n_train: int, n_val: int) -> None:
        """Both splits non-empty and a batch no larger than the training set."""
        if n_train < 1 or n_val < 1:
            key = "val_size" if isinstance(self.data, ImageData) else "val_fraction"
            raise ValueError(
                f"data.{key}: leaves {n_train} training and {n_val} validation samples; both need at least 1"
            )
        if self.train.batch_size != "full" and self.train.batch_size > n_train:
            raise ValueError(
                f"train.batch_size: {self.train.batch_size} is more than the {n_train} training "
                f"samples; use at most {n_train}, or full for batch gradient descent"
            )


# `name` picks the member of each union; when it is missing the section takes this one.
DEFAULT_NAMES = {"data": "linear_regression", "model": "linear", "optimizer": "sgd", "schedule": "constant"}


def validate(raw: Any, source: str) -> Config:
    """Validate a parsed document; every problem becomes one line `path: what, fix`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: the config must be a mapping of sections, got {type(raw).__name__}")
    for section, name in DEFAULT_NAMES.items():
        if isinstance(raw.get(section), dict) and "name" not in raw[section]:
            raw[section] = {"name": name, **raw[section]}
    try:
        return Config.model_validate(raw)
    except Exception as err:  # pydantic.ValidationError, formatted one line per field
        raise UserError(format_validation_error(err, Config, source)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` strings to a parsed document; values are read as YAML scalars."""
    for item in overrides:
        path, sep, text = item.partition("=")
        keys = path.strip().split(".")
        if not sep or not all(keys):
            raise UserError(f"--set {item!r}: expected key.path=value, e.g. --set optimizer.lr=0.01")
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise UserError(f"--set {path}: {where} is a value, not a section; set {where}=... instead")
            node = child
        node[keys[-1]] = parse_value(text, f"--set {path}")
    return raw


def names_module(doc: Any) -> bool:
    """Whether a document (a config, a sweep's grid, a study, `--set` values) names a `module:Class` anywhere."""
    if isinstance(doc, dict):
        return any(names_module(value) for value in doc.values())
    if isinstance(doc, list):
        return any(names_module(value) for value in doc)
    try:
        return isinstance(doc, str) and registry.is_user(doc) and bool(user.split(doc))
    except ValueError:
        return False


def look_beside(path: Path, doc: Any) -> None:
    """Let the `module:Class` names of `doc`, read from the file `path`, find their module in its folder."""
    # Only such a document puts its folder on sys.path: run folders' config.yaml files, read by the
    # hundred, name none.
    if names_module(doc):
        user.add_folder(path.parent)
        for root in recorded_roots(path)[0]:  # a run folder's config.yaml: where the run found the module
            user.add_folder(root)


def recorded_roots(path: Path) -> tuple[list[Path], list[str]]:
    """From a run's config.yaml header (`# optimizer_module:`, `# optimizer_file:`, the same for `rest_`):
    the folders its modules were imported from, and the modules whose file is gone."""
    recorded = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return [], []
    for line in lines:
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(": ")
        recorded[key] = value
    roots, missing = [], []
    for key in ("optimizer", "rest"):
        module, file = recorded.get(f"{key}_module"), recorded.get(f"{key}_file")
        if module and file and Path(file).is_file():
            depth = len(module.split(".")) + (Path(file).name == "__init__.py")
            roots.append(Path(file).parents[depth - 1])  # the folder `import module` needs
        elif module and file:
            missing.append(f"{module} ({file})")
    return roots, missing


def read_config(path: Path) -> dict[str, Any]:
    """A YAML experiment file as a plain mapping, not yet validated; a module it names is looked for beside it."""
    raw = load_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the config must be a mapping of sections, got {type(raw).__name__}")
    look_beside(path, raw)
    return raw


def load_config(path: Path, overrides: list[str] = ()) -> Config:
    """Read a YAML experiment, apply `--set` overrides, validate; raise UserError on any problem."""
    raw = apply_overrides(read_config(path), list(overrides))
    look_beside(path, raw)  # `--set optimizer.name=signsgd:SignSGD` looks beside the config too
    return validate(raw, str(path))


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain data (every default filled in, `name` first in a section)."""
    data = config.model_dump(mode="json")
    if config.train.max_steps is not None:  # epochs is unused then, and the schema refuses both
        del data["train"]["epochs"]
    if isinstance(config.data, FunctionData):  # the schema refuses what does not apply
        del data["model"]
        data["train"] = {key: data["train"][key] for key in FUNCTION_TRAIN_KEYS}
    return {
        key: ({"name": section.pop("name"), **section} if "name" in section else section)
        for key, section in data.items()
    }
