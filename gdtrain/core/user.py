"""A user's own optimizer class, `name: "module:ClassName"`: found, imported and its signature read as a section.

The module is looked up on the Python path, then in the current folder, then in the folders of the
config, sweep and study files read so far that name one (config.look_beside adds each): a file
`signsgd.py` beside the config holding `class SignSGD(torch.optim.Optimizer)` is
`name: "signsgd:SignSGD"`. Those folders go on sys.path and PYTHONPATH, so the worker processes of a
sweep or study find the module too.
Importing runs the module's code: this is the one place where a config makes gdtrain execute
anything, and only for a name with a ':'.

The class's constructor arguments after `params` are its settings, less those that are not the
maths (optimizers.NOT_SETTINGS). Each is typed by its annotation (float, int, bool, str, Literal,
tuple, Optional) or else by its default's type; one with neither takes any value. A class that
takes no `lr` is refused: gdtrain's schedules, sweeps and studies set it. The constructor is tried
once on a small tensor, so a value it refuses is an error before any folder is made.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
import typing
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, create_model

from gdtrain.core.fields import interval, items
from gdtrain.core.optimizers import NOT_SETTINGS, REFUSED

SEARCH: list[Path] = []  # config files' folders, in the order they were read


def add_folder(folder: Path) -> None:
    """Let `module:Class` names find modules in `folder` (a config file's), here and in worker processes."""
    folder = folder.resolve()
    if folder in SEARCH:
        return
    SEARCH.append(folder)
    if str(folder) not in sys.path:
        sys.path.append(str(folder))  # after the installed packages: a file never shadows one
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(folder) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, str(folder)])


def _where() -> str:
    folders = [Path.cwd(), *SEARCH]
    return "the Python path or " + ", ".join(dict.fromkeys(str(f) for f in folders))


def split(name: str) -> tuple[str, str]:
    """`module:Class` -> (module, Class); a ValueError names the form."""
    module, _, attr = name.partition(":")
    if (
        not module
        or not attr
        or ":" in attr
        or not all(part.isidentifier() for part in [*module.split("."), *attr.split(".")])
    ):
        raise ValueError(
            f"name: {name!r} is not module:ClassName (e.g. signsgd:SignSGD for class SignSGD in signsgd.py)"
        )
    return module, attr


def load_class(name: str) -> type:
    """The torch.optim.Optimizer subclass `module:Class` names; ValueError `name: why` when it cannot be had."""
    module_name, attr = split(name)
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name) and module_name.split(".")[0] == err.name.split(".")[0]:
            raise ValueError(
                f"name: no module '{module_name}' for {name!r} on {_where()}; put {module_name.split('.')[0]}.py "
                "beside the config, or install its package"
            ) from None
        raise ValueError(f"name: importing '{module_name}' for {name!r} failed: {_one_line(err)}") from None
    except Exception as err:  # the module's own code raised: say what, in one line
        raise ValueError(f"name: importing '{module_name}' for {name!r} failed: {_one_line(err)}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
    import torch

    if target is None:
        found = [k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)]
        hint = f"; it has the optimizer classes {', '.join(found)}" if found else ""
        raise ValueError(f"name: module '{module_name}' ({_file(module)}) has no '{attr}'{hint}")
    if not (isinstance(target, type) and issubclass(target, torch.optim.Optimizer)):
        raise ValueError(f"name: {name!r} is {_kind(target)}, not a torch.optim.Optimizer subclass")
    for refused in (torch.optim.LBFGS, torch.optim.SparseAdam):
        if issubclass(target, refused):
            raise ValueError(f"name: {REFUSED[refused.__name__.lower()]}")
    return target


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _file(module: Any) -> str:
    return getattr(module, "__file__", None) or "built in"


def _kind(value: Any) -> str:
    return f"the class {value.__name__}" if isinstance(value, type) else f"a {type(value).__name__}"


def provenance(cls: type) -> dict[str, Any]:
    """Where a class came from: its module, file and the version of the package that holds it, if any."""
    from importlib import metadata

    module = sys.modules.get(cls.__module__)
    top = cls.__module__.split(".")[0]
    version = None
    try:
        dists = metadata.packages_distributions().get(top, [])
        version = metadata.version(dists[0]) if dists else None
    except Exception:  # metadata of a broken install: the version is unknown, not an error
        version = None
    return {"class": cls.__qualname__, "module": cls.__module__, "file": _file(module), "version": version}


# --- the signature as a section -----------------------------------------------------------------

Number = Annotated[float, interval(None, None)]  # any finite number


def _tuple_type(args: tuple[Any, ...]) -> Any:
    """A fixed tuple type that a YAML list fills (`betas: [0.9, 0.99]`)."""
    if len(args) == 2 and args[1] is Ellipsis:  # tuple[float, ...]: any length
        return Annotated[tuple[_value_type(args[0], None), ...], BeforeValidator(_as_tuple)]
    words = [f"value{i + 1}" for i in range(len(args))]
    return Annotated[tuple[tuple(_value_type(a, None) for a in args)], items(*words)]


def _as_tuple(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(v)
    raise ValueError(f"must be a list of values, got {v!r}")


def _value_type(annotation: Any, default: Any) -> Any:
    """A pydantic type for one argument from its annotation, else its default's type; Any when neither says."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is inspect.Parameter.empty or annotation is Any or annotation is None:
        return _from_default(default)
    if origin is Literal:
        return annotation
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        kinds = [a for a in args if a is not type(None)]
        named = [k for k in kinds if k in (float, int, bool, str)]
        if float in kinds or _is_tensor(kinds):
            base: Any = Number
        elif len(named) == 1:
            base = named[0]
        else:
            base = _from_default(default) if default is not None else Any
        return base | None if type(None) in args else base
    if origin is tuple:
        found = _tuple_type(args)
        return found if found is not None else _from_default(default)
    if annotation is float:
        return Number
    if annotation in (int, bool, str):
        return annotation
    return _from_default(default)


def _is_tensor(kinds: list[Any]) -> bool:
    return any(getattr(k, "__name__", "") == "Tensor" for k in kinds)


def _from_default(default: Any) -> Any:
    if default is inspect.Parameter.empty or default is None:
        return Any
    if isinstance(default, bool):
        return bool
    if isinstance(default, float):
        return Number
    if isinstance(default, (int, str)):
        return type(default)
    if isinstance(default, tuple):
        return _tuple_type(tuple(type(v) if not isinstance(v, float) else float for v in default)) or Any
    return Any


class UserSettings(BaseModel):
    """Base of a user class's section: strict, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


@cache
def settings_model(cls: type) -> type[UserSettings]:
    """The section a class's constructor defines: one field per setting, typed, with its default."""
    signature = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # annotations naming what the module never imported: fall back to the defaults
        hints = {}
    fields: dict[str, Any] = {}
    for i, (key, p) in enumerate(signature.parameters.items()):
        if i == 0 or key in NOT_SETTINGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        kind = _value_type(hints.get(key, p.annotation), p.default)
        fields[key] = (kind, ... if p.default is inspect.Parameter.empty else p.default)
    return create_model(f"{cls.__name__}Settings", __base__=UserSettings, **fields)


def check_settings(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """`values` checked against `name`'s class: the settings with every default filled, or ValueError `key: why`."""
    cls = load_class(name)
    model = settings_model(cls)
    keys = list(model.model_fields)
    if "lr" not in keys:
        raise ValueError(
            f"name: {cls.__name__} takes no lr, which gdtrain's schedules, sweeps and studies set; its settings: "
            f"{', '.join(keys) or 'none'}"
        )
    if "name" in keys:
        raise ValueError(
            f"name: {cls.__name__} has a setting called 'name', which a config uses for the optimizer's class; "
            "rename that argument"
        )
    try:
        settings = model.model_validate(values).model_dump()
    except ValidationError as err:
        raise ValueError(_problem(cls, model, err.errors(include_url=False)[0])) from None
    _try(cls, name, settings)  # the class's own checks first, then gdtrain's: lr is a step size
    lr = settings["lr"]
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and not lr > 0:
        raise ValueError(f"lr: must be > 0 (a step size), got {lr!r}")
    return settings


def _problem(cls: type, model: type[UserSettings], error: dict[str, Any]) -> str:
    from gdtrain.core.yamlio import error_line

    keys = list(model.model_fields)
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{key}: unknown setting of {cls.__name__}; {hint}its settings: {', '.join(keys)}"
    if error["type"] == "missing":
        return f"{key}: {cls.__name__} needs it (it has no default)"
    return error_line(model, error)


def _try(cls: type, name: str, settings: dict[str, Any]) -> None:
    """Build the class once on a small tensor, so that a value it refuses is an error now, not mid-run."""
    import torch

    try:
        cls([torch.nn.Parameter(torch.zeros(2, 2))], **settings)
    except Exception as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        raise ValueError(f"name: {cls.__name__}({shown}) raised {_one_line(err)}") from None
