"""Hostile input: random YAML documents and `--set` overrides thrown at the config loader and at
`gdtrain check`, YAML that builds Python objects, and names that try to leave the runs folder. Every
input either validates or is `error:` lines and exit code 2: never a traceback, never another
exception, never a hang. Each `@example` and each entry of CRASHES is a crash the fuzzer found.
Run folders a crash left half-written: tests/test_broken_runs.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from gdtrain.cli import app
from gdtrain.core.config import Config, check_name, load_config, to_dict
from gdtrain.core.errors import UserError
from gdtrain.core.runs import run_folders
from gdtrain.core.yamlio import dump_yaml
from gdtrain.execution.sweep import expand

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
runner = CliRunner()

# --- what to throw ------------------------------------------------------------------------------


def _models(annotation: typing.Any) -> list[type[BaseModel]]:
    found = []
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append(arg)
        elif typing.get_args(arg):
            found.extend(_models(arg))
    return found


SECTIONS = list(Config.model_fields)
FIELDS = sorted({key for f in Config.model_fields.values() for m in _models(f.annotation) for key in m.model_fields})
NAMES = [
    "sgd",
    "adam",
    "adamw",
    "rmsprop",
    "adagrad",
    "linear",
    "mlp",
    "blobs",
    "moons",
    "xor",
    "function",
    "linear_regression",
    "mnist",
    "constant",
    "step",
    "cosine",
    "plateau",
    "full",
    "mse",
    "bce",
    "cross_entropy",
    "relu",
    "he",
    "cpu",
    "../x",
    "a/b",
]


class Raw(typing.NamedTuple):
    """YAML text that goes into a generated document as it is: what a Python value cannot spell.
    (Not a str subclass: hypothesis's shrinker cannot replay those.)"""

    text: str


RAW = st.sampled_from(
    [
        "2001-13-45",
        "._",
        "!!bool abc",
        "!!timestamp x",
        "!!int ''",
        "!!set 0",
        "!!map [1]",
        "!!binary aGk=",
        "0x" + "f" * 4000,
        "9" * 5000,
        "1e400",
        ".nan",
        "-.inf",
        "~",
        "1:30",
        "0o17",
        "'..'",
        '"\\ud800"',
        '"\\x00"',
        "!!python/object/apply:os.system ['true']",
        "!!python/name:os.system ''",
        "&a [1, 2]",
        "*a",
        "!foo 1",
        "[" * 1000 + "]" * 1000,
    ]
).map(Raw)
RAW_KEYS = st.sampled_from(["[1, 2]", "{a: 1}", "!!set {a}", "? x", "&k key", "*k", "<<"]).map(Raw)
JUNK_KEYS = st.one_of(
    st.text(max_size=8), st.integers(-3, 3), st.none(), st.booleans(), st.floats(allow_nan=False), RAW_KEYS
)
KEYS = st.one_of(st.sampled_from(SECTIONS + FIELDS), JUNK_KEYS)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, 16, 2**63 - 1, 2**63, 10**400]),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(NAMES),
    RAW,
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3), max_leaves=10
)
SECTION = st.dictionaries(st.sampled_from(FIELDS) | JUNK_KEYS, VALUES, max_size=5) | VALUES
DOCS = st.dictionaries(st.sampled_from(SECTIONS) | JUNK_KEYS, SECTION, max_size=6) | VALUES
FRAGMENTS = [
    "optimizer",
    "lr",
    "name",
    "adam",
    "train",
    "epochs",
    "data",
    "model",
    ":",
    ": ",
    " ",
    "\n",
    "\t",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "? ",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "!!python/object/apply:os.system ",
    "!!binary ",
    "!!python/name:os.system ",
    "!!set ",
    "!!int ",
    "!foo ",
    "<<: ",
    "'",
    '"',
    "#",
    "|",
    ">",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "1e400",
    "0x" + "f" * 24,
    "0o7",
    "1:30",
    ".nan",
    "-.inf",
    "~",
    "yes",
    "2001-13-45",
    "._",
    "\\x00",
    "\\ud800",
    "é",
    "\u2028",
    "\ufeff",
    "\x85",
    "1_000",
    "9" * 30,
]
SYNTAX = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)


def flow(value: typing.Any) -> str:
    """A generated value as one line of flow-style YAML; Raw pieces go in as they are, the rest as JSON."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{flow(k)}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(flow, value)) + "]"
    return json.dumps(value)  # JSON is YAML (NaN and Infinity read as strings)


def block(value: typing.Any) -> str:
    """A document in block style: each top-level key on its own line, its value in flow style."""
    if isinstance(value, dict) and value:
        return "".join(f"{flow(k)}: {flow(v)}\n" for k, v in value.items())
    return flow(value) + "\n"


FILES = st.one_of(DOCS.map(block), DOCS.map(flow), SYNTAX, st.text(max_size=80), st.binary(max_size=80))
SET_VALUES = st.one_of(VALUES.map(flow), SYNTAX, st.text(max_size=10))
KEY_PATHS = st.lists(st.sampled_from(SECTIONS + FIELDS) | st.text(max_size=4), max_size=3).map(".".join)
OVERRIDES = st.lists(
    st.one_of(st.builds(lambda k, v: f"{k}={v}", KEY_PATHS, SET_VALUES), st.text(max_size=12)), max_size=3
)

# What crashed (or, last two, passed and broke later) before the fixes; each must now be a UserError.
DEEP = "a: " + "[" * 3000 + "]" * 3000 + "\n"
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)
CRASHES = [
    "? [1, 2]\n: 3\n",  # a list as a key: TypeError, unhashable
    "optimizer: {[1]: 2}\n",
    "? !!set {a}\n: 1\n",  # a set as a key: TypeError, unhashable
    DEEP,  # slow (1.5 s per 1,000 levels), then RecursionError in PyYAML's composer
    "a:\n" + "- " * 3000 + "x\n",  # RecursionError, block style
    "train: {epochs: " + "9" * 5000 + "}\n",  # ValueError: int() past 4300 digits
    "optimizer: {lr: 0x" + "f" * 4000 + "}\n",  # read fine, then ValueError printing it in the error
    "data: {n_samples: " + "9" * 400 + "}\n",  # OverflowError: n_samples × val_fraction
    "optimizer: {lr: 2001-13-45}\n",  # ValueError: month must be in 1..12
    "optimizer: {lr: ._}\n",  # ValueError: float('.')
    "optimizer: {lr: !!bool abc}\n",  # KeyError inside PyYAML
    "optimizer: {lr: !!timestamp x}\n",  # AttributeError inside PyYAML
    "optimizer: {lr: !!int ''}\n",  # IndexError inside PyYAML
    "optimizer: !!set 0\n",  # ValueError unpacking a scalar as a mapping
    "optimizer: !!map [1]\n",  # TypeError unpacking a sequence as a mapping
    "experiment: {seed: 4294967296}\n",  # validated, then np.random.seed raised ValueError in `run`
    'experiment: {name: "abc\\n"}\n',  # validated (re's `$` matches before a final newline): a folder name
]


@contextlib.contextmanager
def time_limit(seconds: float):
    """A hang becomes a TimeoutError (a blocked read or a parse that never ends) instead of a stuck suite."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write(folder: Path, content: str | bytes, name: str = "exp.yaml") -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


def gdtrain(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_rejected(result, *fragments: str) -> None:
    """Exit 2, nothing on stdout, only `error:` lines on stderr."""
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


FUZZ = settings(max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

# --- random documents and overrides -------------------------------------------------------------


@FUZZ
@given(FILES, OVERRIDES)
@example(LAUGHS, [])  # a billion laughs: refused before it is expanded
@example("a: &a [*a]\n", [])  # an alias inside its own anchor
@example("optimizer: {lr: 0.1}\n", ["optimizer.lr=" + "[" * 3000])
@example("", ["optimizer=5", "optimizer.lr=1"])
@example("", ["a..b=1", "=1", "optimizer.lr=0x" + "f" * 40, "optimizer={[1]: 2}"])
@example(b"\xff\xfe\x00bad", [])
@example("optimizer:\n\tlr: 0.1\n", ["optimizer.lr=1e400"])
@example("optimizer: {lr: .nan}\ndata: {bias: .inf}\n", [])
@example("{}\n", ["experiment=? !!set"])
def test_the_loader_validates_or_raises_a_user_error(content, overrides):
    with tempfile.TemporaryDirectory() as tmp, time_limit(10):
        path = write(Path(tmp), content)
        try:
            config = load_config(path, overrides)
        except UserError as err:
            assert str(err).strip()
            return
        again = load_config(write(Path(tmp), dump_yaml(to_dict(config)), "resolved.yaml"))
        assert again == config  # what `check` prints reads back as the same config


@pytest.mark.parametrize("content", CRASHES, ids=range(len(CRASHES)))
def test_each_crash_found_is_now_a_user_error(tmp_path, content):
    with pytest.raises(UserError), time_limit(10):
        load_config(write(tmp_path, content))


@settings(FUZZ, max_examples=60)
@given(FILES, OVERRIDES)
@example(CRASHES[0], ["optimizer.lr=[[[["])
@example("", ["optimizer.lr=!!timestamp x", "data=!!set 0"])
@example("", ["optimizer.lr=" + "9" * 5000])
@example("", ["experiment.name=\ud800"])
def test_check_prints_a_config_or_error_lines_and_exits_2(content, overrides):
    with tempfile.TemporaryDirectory() as tmp, time_limit(10):
        result = gdtrain("check", write(Path(tmp), content), *[f"--set={o}" for o in overrides])
    if result.exit_code == 0:
        assert result.stderr == "" and yaml.safe_load(result.stdout)
    else:
        assert_rejected(result)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("folder", "is a folder"),
        ("fifo", "is not a regular file"),
        ("too-big", "too big for a config"),
        ("long-name", "cannot read the config"),
        ("missing", "no such config file"),
    ],
)
def test_a_config_path_that_is_no_config_file(tmp_path, kind, message):
    path = tmp_path / "cfg.yaml"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # reading it would block until a writer comes: forever
    elif kind == "too-big":
        path.write_text("# " + "x" * 200_000 + "\n")
    elif kind == "long-name":
        path = tmp_path / ("x" * 5000)
    with time_limit(10):
        assert_rejected(gdtrain("check", path), message)


@pytest.mark.parametrize(
    "tag",
    [
        '!!python/object/apply:os.system ["touch {marker}"]',
        "!!python/name:os.system",
        '!!python/object/new:os.system ["touch {marker}"]',
        "!!python/module:os",
    ],
)
def test_yaml_that_builds_python_objects_is_refused(tmp_path, tag):
    marker = tmp_path / "pwned"
    value = tag.format(marker=marker)
    from_file = gdtrain("check", write(tmp_path, f"optimizer:\n  lr: {value}\n"))
    from_set = gdtrain("check", SMOKE, f"--set=optimizer.lr={value}")
    for result in (from_file, from_set):
        assert_rejected(result, "Python objects are refused")
    assert not marker.exists()


# --- names that try to leave the runs folder ------------------------------------------------------


def listing(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def hostile_names(tmp_path: Path) -> list[str]:
    return [
        "../x",
        "../../etc",
        "..",
        ".",
        "a/b",
        "a/../b",
        "a\\b",
        str(tmp_path / "abs"),
        "/tmp",
        "x\x00y",
        "x\ny",
        "abc\n",
        "\n",
        "",
        "-rf",
        "~",
        "a b",
        "x" * 101,
        "x" * 5000,
        "ｘ",
        "a\u202eb",
        "café",
        "ａ/ｂ",
        "x\ud800",
    ]


@pytest.mark.parametrize("where", ["--name", "experiment.name", "experiment.run_name", "file"])
def test_run_refuses_names_that_are_not_one_safe_folder(tmp_path, where):
    config = write(tmp_path, "data: {n_samples: 20}\ntrain: {epochs: 1}\n")
    before = listing(tmp_path)
    for name in hostile_names(tmp_path):
        if where == "--name":
            args = [f"--name={name}"]
        elif where == "file":
            config = write(tmp_path, json.dumps({"experiment": {"name": name}}, ensure_ascii=False), "named.yaml")
            before, args = listing(tmp_path), []
        else:
            args = [f"--set={where}={json.dumps(name)}"]  # JSON is YAML: the name arrives as the exact string
        assert_rejected(gdtrain("run", config, *args, "--runs-dir", tmp_path / "runs", "--quiet"))
        assert listing(tmp_path) == before, name


def test_sweep_refuses_names_and_grid_keys_that_leave_the_runs_folder(tmp_path):
    config = write(tmp_path, "data: {n_samples: 20}\ntrain: {epochs: 1}\n")
    in_file = write(tmp_path, "data: {n_samples: 20}\ngrid: {experiment.name: [../../etc, ok]}\n", "grid.yaml")
    bad_key = write(tmp_path, "grid: {../../x: [1, 2]}\n", "key.yaml")
    before = listing(tmp_path)
    for args in (
        [config, "--grid", "experiment.name=../up,ok"],
        [config, "--grid", f"experiment.name={tmp_path},ok"],
        [config, "--grid", "optimizer.lr=0.1,0.2", "--set", "experiment.name=/abs"],
        [config, "--grid", "../../x=1,2"],
        [in_file],
        [bad_key],
    ):
        assert_rejected(gdtrain("sweep", *args, "--runs-dir", tmp_path / "runs"))
        assert listing(tmp_path) == before, args


BASES = st.sampled_from(["data: {n_samples: 20}\n", "data: {name: mnist, root: x}\ntrain: {loss: cross_entropy}\n"])
GRIDS = st.lists(
    st.builds(lambda k, v: f"{k}={v}", KEY_PATHS | st.sampled_from(["data.root", "optimizer.lr"]), SET_VALUES),
    min_size=1,
    max_size=2,
)


@settings(FUZZ, max_examples=80)
@given(BASES, GRIDS)
@example("", ["optimizer.lr=2001-01-01"])  # TypeError: a date is not JSON, in expand
@example("", ["optimizer.lr=!!binary aGk="])
# A point named 'root=..' passed expand, then its run was refused mid-sweep, after others had run.
@example("data: {name: mnist}\ntrain: {loss: cross_entropy}\n", ["data.root=..,../../etc,/abs"])
def test_a_sweep_validates_or_refuses_and_names_every_point_safely(base, grid):
    with tempfile.TemporaryDirectory() as tmp, time_limit(10):
        try:
            points = expand(write(Path(tmp), base), grid, None, [])
        except UserError:
            return
    for point in points:
        check_name(point.name)


def test_a_sweep_names_runs_by_values_inside_its_runs_folder(tmp_path):
    config = write(tmp_path, "data: {n_samples: 20}\ntrain: {epochs: 1, batch_size: full}\n")
    result = gdtrain("sweep", config, "--grid", "data.weight=[1.5, -2],[3]", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    made = [p for p in listing(tmp_path) if p.parts[0] != "exp.yaml"]
    assert made and all(p.parts[0] == "runs" for p in made)
    assert {p.name.rsplit("-", 2)[0] for p in run_folders(tmp_path / "runs" / "default")} == {
        "sgd-lr0.001-weight1.5,-2",
        "sgd-lr0.001-weight3",
    }
    assert (tmp_path / "runs" / "default" / "manifest.json").is_file()  # the sweep's, beside them
