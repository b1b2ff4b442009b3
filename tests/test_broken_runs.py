"""Run folders a crash left half-written (no summary.json, a metrics line cut mid-write, a summary
that is not JSON or has no status, an empty folder, only event files): `gdtrain compare` reports
them as unfinished or corrupt, never as finished results and never with a traceback; `gdtrain
evaluate` names a weights file that holds no state_dict, in one line."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from clihelp import one_error
from gdtrain.cli import app
from gdtrain.core.errors import UserError
from gdtrain.core.folders import read_rows
from gdtrain.core.runs import run_folders
from gdtrain.training import checkpoints

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
runner = CliRunner()


def gdtrain(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def write(folder: Path, content: str | bytes, name: str) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("finished")
    assert gdtrain("run", SMOKE, "--runs-dir", runs, "--name", "ok", "--quiet").exit_code == 0
    (run_dir,) = run_folders(runs / "smoke")
    return run_dir


STAMP = "-20250101-000000"  # what runs.new_run_dir appends
BROKEN = {  # name: (files removed, files replaced, the status compare must give)
    "config-only": (["metrics.jsonl", "summary.json"], {}, "unfinished"),
    "cut-mid-line": (["summary.json"], {"metrics.jsonl": "cut"}, "unfinished"),
    "summary-not-json": ([], {"summary.json": '{"status": "fini'}, "corrupt"),
    "summary-no-status": ([], {"summary.json": '{"final": {}}'}, "corrupt"),
    "summary-null-status": ([], {"summary.json": '{"status": null}'}, "corrupt"),
    "summary-a-list": ([], {"summary.json": "[1, 2]"}, "corrupt"),
    "summary-odd-figures": ([], {"summary.json": '{"status": "finished", "wall_seconds": "x"}'}, "finished"),
    "config-garbage": ([], {"config.yaml": "ÿ[: {"}, "corrupt"),
}


def half_written(finished: Path, root: Path) -> dict[str, str]:
    """Copies of a finished run, each broken the way a crash (or a stray edit) leaves one; name → status."""
    expected = {}
    for name, (remove, replace, status) in BROKEN.items():
        target = root / (name + STAMP)
        shutil.copytree(finished, target)
        for file in remove:
            (target / file).unlink()
        for file, text in replace.items():
            if text == "cut":
                text = (target / file).read_text()[:-25]  # the last line loses its end
            write(target, text, file)
        expected[target.name] = status
    (root / ("empty" + STAMP)).mkdir()  # a crash between mkdir and config.yaml
    (root / ("events-only" + STAMP)).mkdir()
    for source in finished.glob("events.out.tfevents.*"):
        shutil.copy(source, root / ("events-only" + STAMP))
    return expected | {"empty" + STAMP: "corrupt", "events-only" + STAMP: "corrupt"}


def test_compare_reports_half_written_runs_never_as_finished(finished, tmp_path):
    root = tmp_path / "smoke"
    shutil.copytree(finished, root / finished.name)
    expected = half_written(finished, root) | {finished.name: "finished"}
    result = gdtrain("compare", root, "--per-run", "--format", "json")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    shown = {row["run"]: row["status"] for row in json.loads(result.stdout)}
    assert shown == expected


def test_a_truncated_last_metrics_line_loses_only_that_line(finished, tmp_path):
    text = (finished / "metrics.jsonl").read_text()
    whole = read_rows(finished / "metrics.jsonl")
    assert len(whole) == len(text.splitlines()) > 3
    assert read_rows(write(tmp_path, text[:-25], "metrics.jsonl")) == whole[:-1]
    lines = text.splitlines()
    lines[1] = lines[1][:10]
    assert read_rows(write(tmp_path, "\n".join(lines), "metrics.jsonl")) == []  # a hole mid-file: unusable


SCALARS = st.one_of(
    st.sampled_from([10**400, 2**63, -1, True, None, "x", float("nan"), float("-inf")]),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
)
TAGS = {"loss/train": SCALARS, "loss/val": SCALARS, "accuracy/val": SCALARS}
COUNTS = {"step": st.integers(0, 9) | SCALARS, "epoch": st.integers(0, 3) | SCALARS}
METRICS = st.lists(st.fixed_dictionaries(COUNTS, optional=TAGS), max_size=4).map(
    lambda rows: "".join(json.dumps(row) + "\n" for row in rows)
)
SUMMARIES = st.fixed_dictionaries(
    {"status": st.sampled_from(["finished", "diverged"]) | SCALARS},
    optional={"wall_seconds": SCALARS, "samples_per_second": SCALARS, "batch_size": SCALARS},
).map(json.dumps)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
GARBAGE = st.one_of(st.binary(max_size=60), st.text(max_size=60), JSONISH.map(json.dumps))


@settings(max_examples=60, deadline=4000)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "config.yaml": GARBAGE | JSONISH.map(json.dumps),
            "summary.json": GARBAGE | SUMMARIES,
            "metrics.jsonl": GARBAGE | METRICS,
        },
    )
)
@example({"config.yaml": "!!set 0"})  # a ValueError inside the YAML loader
@example({"metrics.jsonl": '{"step": 1, "epoch": 1, "accuracy/val": 1%s}\n' % ("0" * 400)})  # OverflowError
@example({"metrics.jsonl": '{"step": 1%s, "epoch": 1, "accuracy/val": 0.5}\n' % ("0" * 400)})  # OverflowError
@example({"summary.json": '{"status": "finished", "wall_seconds": 1%s}' % ("0" * 400)})  # OverflowError
def test_compare_on_random_run_files_reports_or_says_why(finished, files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(finished, root / finished.name)
        for name, content in files.items():
            write(root / finished.name, content, name)
        result = gdtrain("compare", root, "--format", "csv", "--target", "0.5")
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert all(line.startswith("error: ") for line in result.stderr.splitlines())


NOT_STATE_DICTS = {  # what model.pt holds instead of a state_dict; bytes are written as they are
    "a list": [1, 2],
    "a tensor": torch.zeros(3),
    "None": None,
    "a dict of strings": {"net.0.weight": "x"},
    "a dict with a number key": {0: torch.zeros(1)},
    "a dict of dicts": {"net": {"0.weight": torch.zeros(1)}},
    "an empty file": b"",
    "random bytes": bytes(range(7, 250, 3)) * 3,
    "a zip that is not torch's": b"PK\x05\x06" + bytes(18),
}


@pytest.mark.parametrize("content", NOT_STATE_DICTS.values(), ids=NOT_STATE_DICTS.keys())
def test_evaluate_on_a_model_pt_that_is_not_a_state_dict(finished, tmp_path, content):
    run_dir = Path(shutil.copytree(finished, tmp_path / finished.name))
    if isinstance(content, bytes):
        (run_dir / "model.pt").write_bytes(content)
    else:
        torch.save(content, run_dir / "model.pt")
    line = one_error(gdtrain("evaluate", run_dir))
    assert str(run_dir / "model.pt") in line
    assert "not a state_dict of weights" in line or "not a readable weights file" in line


@pytest.mark.parametrize("model", [[1, 2], None, {"w": 1.0}], ids=["a list", "no model", "a dict of floats"])
def test_evaluate_on_a_checkpoint_whose_model_is_not_a_state_dict(finished, tmp_path, model):
    run_dir = Path(shutil.copytree(finished, tmp_path / finished.name))
    best = run_dir / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    if model is None:
        del state["model"]
    else:
        state["model"] = model
    torch.save(state, best)
    line = one_error(gdtrain("evaluate", run_dir, "--checkpoint", "best"))
    assert str(best) in line and "not a state_dict of weights" in line


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch warns on protocol-4 bytes
@settings(max_examples=150, deadline=None)
@given(st.sampled_from([b"", b"\x80\x02", b"\x80\x04", b"PK\x03\x04"]), st.binary(max_size=200))
@example(b"\x80\x04", b"q$\x9a\xb3")  # IndexError inside torch's weights-only unpickler
@example(b"\x80\x02", b"hr\xe3\x920G\xd60")  # KeyError
@example(b"\x80\x04", b"rs\xfe")  # struct.error
def test_any_bytes_as_weights_or_checkpoint_are_read_or_one_error(start, rest):
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), start + rest, "model.pt")
        for read in (checkpoints.load_weights, checkpoints.load):
            try:
                read(path)
            except UserError as err:
                assert str(path) in str(err) and "\n" not in str(err)
