"""YAML in and out for the config module, and pydantic errors turned into one-line messages.

PyYAML follows YAML 1.1, which reads `1e-3` as a string and keeps the last of two equal keys;
the loader here reads every float spelling as a number and rejects duplicate keys.
"""

from __future__ import annotations

import collections.abc
import difflib
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from gdtrain.core.errors import UserError

_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


MAX_BYTES = 100_000  # a config is a few kilobytes; PyYAML is pure Python, so a huge file would stall
MAX_VALUES = 10_000  # values in a document, an alias counted at every use: stops billion-laughs bombs
MAX_FLOW_DEPTH = 100  # nested [ ] and { }: PyYAML's scanner slows quadratically with depth (1.5 s at 1,000)
_ERROR = yaml.constructor.ConstructorError
# What PyYAML's own constructors raise on a value its tag does not fit: `2001-13-45`, `._`, and
# explicit tags on the wrong value (`!!bool abc`: KeyError, `!!timestamp x`: AttributeError, `!!int ''`).
_UNREADABLE = (ValueError, TypeError, KeyError, IndexError, AttributeError)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_size(root: yaml.Node) -> None:
    """Refuse a document that is huge once aliases are expanded, or an alias inside its own anchor."""
    sizes: dict[int, int] = {}  # id(node) → values at and below it, aliases counted at every use
    path: set[int] = set()  # the collections being walked: meeting one again is a cycle
    stack = [(root, False)]
    while stack:  # iterative: deep documents must not hit the recursion limit here
        node, closing = stack.pop()
        if closing:
            path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[id(node)] > MAX_VALUES:
                raise _ERROR(
                    None,
                    None,
                    f"more than {MAX_VALUES:,} values once aliases are expanded; a config holds a few dozen",
                    node.start_mark,
                )
        elif id(node) in path:
            raise _ERROR(None, None, "an alias refers to a collection that holds it", node.start_mark)
        elif id(node) not in sizes:
            path.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


class _Loader(yaml.SafeLoader):
    """SafeLoader (no Python objects) that reads 1e-3 as a float and refuses duplicate keys,
    alias bombs, self-referencing aliases, whole numbers beyond 64 bits and unconvertible scalars."""

    def fetch_flow_collection_start(self, TokenClass: type) -> None:
        if self.flow_level >= MAX_FLOW_DEPTH:
            raise yaml.scanner.ScannerError(
                None,
                None,
                f"nested more than {MAX_FLOW_DEPTH} levels deep; a config is a few levels deep",
                self.get_mark(),
            )
        super().fetch_flow_collection_start(TokenClass)

    def construct_document(self, node: yaml.Node) -> Any:
        _check_size(node)
        try:
            return super().construct_document(node)
        except _UNREADABLE as err:  # raised while filling a collection: no better place to point at
            raise _ERROR(None, None, f"cannot read a value ({type(err).__name__}: {err})", node.start_mark) from None

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except _UNREADABLE as err:
            kind = node.tag.rsplit(":", 1)[-1]  # tag:yaml.org,2002:timestamp → timestamp
            raise _ERROR(
                None, None, f"cannot read a {kind} from this value ({type(err).__name__}: {err})", node.start_mark
            ) from None

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = super().construct_yaml_int(node)
        if not -(2**63) <= value < 2**63:  # 0x-spelled giants would later fail to print
            raise _ERROR(None, None, "a whole number beyond 64 bits; no setting takes one", node.start_mark)
        return value

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else []:  # else the base class says so
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):  # a list, set or mapping: the base class says so
                break
            if key in seen:
                line = key_node.start_mark.line + 1
                raise _ERROR(None, None, f"duplicate key {key!r} (line {line}); keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _refuse_python(loader: _Loader, suffix: str, node: yaml.Node) -> None:
    raise _ERROR(
        None, None, f"!!python/{suffix}: Python objects are refused (a config holds plain values)", node.start_mark
    )


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", _refuse_python)  # SafeLoader refuses them too, less clearly


def _yaml_problem(err: yaml.YAMLError) -> str:
    """`line L, column C: problem` from a PyYAML error."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _parse(text: str) -> Any:
    """YAML text as data; every problem with the text is a yaml.YAMLError."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except RecursionError:  # PyYAML's composer recurses once per level of nesting
        raise yaml.YAMLError("nested too deeply; a config is a few levels deep") from None


def load_yaml(path: Path) -> Any:
    """Parse a YAML file safely; a missing, unreadable, odd or malformed file is a UserError."""
    try:
        if not path.exists():
            raise UserError(f"{path}: no such config file; check the path (shipped configs are in configs/)")
        if path.is_dir():
            raise UserError(f"{path}: is a folder; give a YAML config file")
        if not path.is_file():  # reading a FIFO or a device could block forever
            raise UserError(f"{path}: is not a regular file; give a YAML config file")
        if path.stat().st_size > MAX_BYTES:
            raise UserError(f"{path}: {path.stat().st_size:,} bytes is too big for a config (at most {MAX_BYTES:,})")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:  # also a name too long to stat
        raise UserError(f"{path}: cannot read the config ({err.__class__.__name__}: {err})") from None
    try:
        return _parse(text)
    except yaml.YAMLError as err:
        where = " at " if getattr(err, "problem_mark", None) else ": "  # a reader error has no line
        raise UserError(f"{path}: malformed YAML{where}{_yaml_problem(err)}") from None


def parse_value(text: str, where: str) -> Any:
    """Read one `--set` value as YAML (`0.1` → float, `[64, 64]` → list, `adam` → str)."""
    try:
        return _parse(text)
    except yaml.YAMLError as err:
        raise UserError(f"{where}: the value {text!r} is not valid YAML ({_yaml_problem(err)})") from None


class _Dumper(yaml.SafeDumper):
    """Block-style sections, lists on one line (`hidden_sizes: [128, 64]`)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def dump_yaml(data: Any) -> str:
    """YAML that keeps the schema's key order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


# --- pydantic errors → `path: message` lines --------------------------------------------------

_RELATIVE = re.compile(r"^([a-z_][a-z0-9_.]*): (.*)$")  # model validators prefix their field


def _unions(annotation: Any) -> list[type[BaseModel]]:
    """The model classes inside a field's annotation (one, or the members of a union)."""
    found = []
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append(arg)
        elif typing.get_args(arg):
            found.extend(_unions(arg))
    return found


def _names(model: type[BaseModel]) -> tuple[str, ...]:
    """The `name` values that select this member of a tagged union."""
    return typing.get_args(model.model_fields["name"].annotation)


def _walk(
    model: type[BaseModel], loc: tuple[Any, ...]
) -> tuple[list[str], type[BaseModel] | None, list[type[BaseModel]]]:
    """Follow an error location through the schema: (dotted keys, model reached, union members)."""
    keys: list[str] = []
    members: list[type[BaseModel]] = []
    items = list(loc)
    while items:
        item = items.pop(0)
        if model is None or item not in model.model_fields:
            keys.append(str(item))
            model = None
            continue
        keys.append(item)
        members = _unions(model.model_fields[item].annotation)
        model = members[0] if len(members) == 1 else None
        if len(members) > 1 and items:  # discriminated union: the next element is the tag
            tag = items.pop(0)
            model = next((m for m in members if tag in _names(m)), None)
    return keys, model, members


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'? " if close else ""


_TYPE_WORDS = {
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "int_parsing": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
}


def _line(model: type[BaseModel], error: dict[str, Any]) -> str:
    keys, reached, members = _walk(model, tuple(error["loc"]))
    path, kind, value = ".".join(keys), error["type"], error.get("input")
    if kind == "extra_forbidden" and len(keys) > 1:
        parent, owner, _ = _walk(model, tuple(error["loc"][:-1]))
        valid = list(owner.model_fields) if owner else []
        return f"{path}: unknown key; {_suggest(keys[-1], valid)}valid keys in {'.'.join(parent)}: {', '.join(valid)}"
    if kind == "extra_forbidden":
        valid = list(model.model_fields)
        return f"{path}: unknown section; {_suggest(keys[-1], valid)}valid sections: {', '.join(valid)}"
    if kind == "union_tag_invalid":
        names = [name for m in members for name in _names(m)]
        tag = error["ctx"]["tag"]
        noun = {"data": "dataset", "rest": "optimizer"}.get(keys[-1], keys[-1])
        own = " (or module:ClassName, a class of your own)" if noun == "optimizer" else ""
        return f"{path}.name: unknown {noun} '{tag}'; {_suggest(str(tag), names)}choose one of: {', '.join(names)}{own}"
    if kind == "union_tag_not_found":  # a section that is not a mapping, or one without a usable name
        if not isinstance(value, dict):
            return f"{path}: must be {_TYPE_WORDS['dict_type']}, got {value!r}"
        return f"{path}.name: must be a name, got {value.get('name')!r}"
    message = error["msg"].removeprefix("Value error, ")
    relative = _RELATIVE.match(message)
    if relative and kind == "value_error":
        path = ".".join(filter(None, [path, relative.group(1)]))
        return f"{path}: {relative.group(2)}"
    if kind in _TYPE_WORDS:
        return f"{path}: must be {_TYPE_WORDS[kind]}, got {value!r} ({type(value).__name__})"
    if kind == "literal_error":
        return f"{path}: must be one of {error['ctx']['expected']}, got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(error["ctx"].values()))
        return f"{path}: must be {sign} {bound}, got {value!r}"
    if kind == "value_error":
        return f"{path}: {message}"
    return f"{path}: {message[0].lower()}{message[1:]}, got {value!r}"


def error_line(model: type[BaseModel], error: dict[str, Any]) -> str:
    """One pydantic error of `model` as `dotted.path: what is wrong and what is allowed`."""
    return _line(model, error)


def format_validation_error(err: Exception, model: type[BaseModel], source: str) -> str:
    """One line per problem, each `source: dotted.path: what is wrong and what is allowed`."""
    if not isinstance(err, ValidationError):
        raise err
    return "\n".join(f"{source}: {_line(model, e)}" for e in err.errors(include_url=False))
