"""What the CLI tests share: invoke gdtrain in-process, write a config, read a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gdtrain.cli import app

runner = CliRunner()


def gdtrain(*args: str | Path):
    """Invoke the CLI in-process; unexpected exceptions surface as test errors, not exit code 1."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    """A config file with `text` in tmp_path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def one_error(result) -> str:
    """The single `error:` line of a rejected command: exit 2, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def finals(runs_dir: Path, experiment: str = "smoke") -> dict[str, tuple]:
    """(status, final metrics, steps) of each run of an experiment, by run name (the newest folder of each)."""
    found = {}
    for summary in sorted(runs_dir.glob(f"{experiment}/*/summary.json")):
        data = json.loads(summary.read_text())
        found[summary.parent.name.rsplit("-", 2)[0]] = (data["status"], data["final"], data["steps"])
    return found
