"""The README and docs/ state what the code does: links, make targets, commands and their options,
shipped files and module paths all exist, and docs/configs.md's reference is the schema's, key for
key and default for default. Torch-free: it reads the pages, the Makefile and the Typer app."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest
import typer.main

from gdtrain.cli import app
from gdtrain.core import optimizers as registry
from gdtrain.core.config import Config
from gdtrain.core.yamlio import parse_value

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A command line: `gdtrain` at the start of a line or code span (after `$ `, `.venv/bin/`, `python -m `) or after -m.
COMMAND = re.compile(r"(?:^\s*(?:\$\s+)?(?:\.venv/bin/|python -m )?|\s-m )gdtrain\s+([^`]*)")


def prose(text: str) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", text)


def code(text: str) -> list[str]:
    """Every fenced block and inline code span of a page, backslash continuations joined."""
    blocks = FENCE.findall(text)
    spans = re.findall(r"`([^`\n]+)`", prose(text))
    return [snippet.replace("\\\n", " ") for snippet in blocks + spans]


def slugs(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings (`## What survives what` → what-survives-what)."""
    found: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", prose(page.read_text(encoding="utf-8")), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n, unique = 0, slug
        while unique in found:
            n += 1
            unique = f"{slug}-{n}"
        found.add(unique)
    return found


def commands() -> list[tuple[str, list[str]]]:
    """(where, its words) for each `gdtrain ...` command line the pages show."""
    lines = []
    for page in PAGES:
        for snippet in code(page.read_text(encoding="utf-8")):
            for line in snippet.splitlines():
                line = line.split(" #")[0]
                for part in re.split(r";|&&", line):
                    match = COMMAND.search(part)
                    if match:
                        lines.append((f"{page.name}: {part.strip()}", match.group(1).split()))
    return lines


def test_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    head = "\n".join(text.splitlines()[:12])
    assert "make demo" in head and "make test" in head


def test_every_relative_link_points_at_a_file_in_the_repository():
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.is_relative_to(ROOT) or not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in slugs(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def make_targets() -> set[str]:
    """The targets `make help` lists, its own and one per config."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    listed = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip() and not line.endswith(":")}


def test_every_make_target_named_exists():
    targets = make_targets()
    named = {
        (page.name, target)
        for page in PAGES
        for snippet in code(page.read_text(encoding="utf-8"))
        for target in re.findall(r"(?<![\w-])make\s+([a-z][\w-]*)", snippet)
    }
    assert sorted(f"{page}: make {target}" for page, target in named if target not in targets) == []


def test_readme_lists_every_make_target():
    section = README.read_text(encoding="utf-8").split("## Make targets")[1].split("\n## ")[0]
    configs = {path.stem for path in (ROOT / "configs").glob("*.yaml")}
    listed = make_targets() - configs - {"help"}
    assert sorted(t for t in listed if f"`make {t}`" not in section and f"`{t}`" not in section) == []


def test_every_gdtrain_command_and_option_named_exists():
    group = typer.main.get_command(app)  # Typer's own click: a group has .commands
    wrong = []
    for where, words in commands():
        command: Any = group
        for word in words:
            if hasattr(command, "commands") and re.fullmatch(r"[a-z][\w-]*", word):
                if word not in command.commands:
                    wrong.append(f"{where}: no command {word!r}")
                    break
                command = command.commands[word]
            elif word.startswith("-") and word not in ("-", "--"):
                options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
                if word.split("=")[0] not in options | {"--help", "-h"}:
                    wrong.append(f"{where}: {command.name} has no option {word}")
    assert wrong == []


def test_every_shipped_file_and_module_named_exists():
    pattern = re.compile(
        r"(?<![\w/.-])((?:configs|sweeps|studies)/[\w.-]+\.yaml|(?:tests|benchmarks)/[\w.-]+\.py"
        r"|gdtrain/[\w/]+\.py)"
    )
    named = {(page.name, path) for page in PAGES for path in pattern.findall(page.read_text(encoding="utf-8"))}
    assert sorted(f"{page}: {path}" for page, path in named if not (ROOT / path).is_file()) == []


def test_readme_config_table_lists_every_shipped_config():
    section = README.read_text(encoding="utf-8").split("## Shipped configs")[1].split("\n## ")[0]
    rows = re.findall(r"^\| `([\w*]+)` \|", section, re.M)
    shipped = {path.stem for path in (ROOT / "configs").glob("*.yaml")}
    assert [row for row in rows if not fnmatch.filter(shipped, row)] == []
    assert sorted(name for name in shipped if not any(fnmatch.fnmatch(name, row) for row in rows)) == []


def tables() -> dict[str, dict[str, list[str]]]:
    """docs/configs.md's reference: heading → {key: its row's cells}."""
    found: dict[str, dict[str, list[str]]] = {}
    text = prose((ROOT / "docs" / "configs.md").read_text(encoding="utf-8"))
    for part in re.split(r"^### ", text, flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        rows = [line.strip().strip("|").split(" | ") for line in body.splitlines() if line.startswith("| `")]
        found[heading.strip()] = {cells[0].strip().strip("`"): [c.strip() for c in cells] for cells in rows}
    return found


def literals(annotation: Any) -> list[Any]:
    """Every value a Literal anywhere in the annotation allows."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [value for arg in typing.get_args(annotation) for value in literals(arg)]


def plain(value: Any) -> Any:
    """Tuples as lists, as YAML reads them."""
    return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def models(annotation: Any) -> list[Any]:
    """The model classes of a section's annotation: one, or a (tagged, Annotated) union's members."""
    if isinstance(annotation, type):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models(arg)]


def test_the_optimizer_tables_are_the_registrys():
    text = (ROOT / "docs" / "configs.md").read_text(encoding="utf-8")
    block = text.partition(registry.BEGIN)[2].partition(registry.END)[0]
    assert block.strip() == registry.reference().strip(), "run: python -m gdtrain.core.optimizers docs/configs.md"


def test_config_reference_is_the_schema():
    reference, wrong = tables(), []
    for section, field in Config.model_fields.items():
        variants = [
            m
            for m in models(field.annotation)
            if typing.get_origin(m.model_fields.get("name", field).annotation) is typing.Literal
        ] or [field.annotation]
        shared = reference.get(f"{section}: every `name`", {})
        for model in variants:
            if len(variants) == 1:
                heading = section
            else:
                names = set(typing.get_args(model.model_fields["name"].annotation))
                heading = next(
                    (
                        h
                        for h in reference
                        if h.startswith(f"{section}: ") and set(re.findall(r"`([^`]+)`", h)) == names
                    ),
                    f"{section}: {sorted(names)}",
                )
            if heading not in reference:
                wrong.append(f"no table '### {heading}'")
                continue
            rows = {**shared, **reference[heading]}
            keys = set(model.model_fields) - ({"name"} if len(variants) > 1 else set())
            wrong += [f"{heading}: {key} is not in the table" for key in sorted(keys - set(rows))]
            wrong += [f"{heading}: {key} is not in the schema" for key in sorted(set(rows) - keys)]
            for key in sorted(keys & set(rows)):
                info, cells = model.model_fields[key], rows[key]
                if info.is_required():
                    wrong += (
                        [] if cells[1] == "(required)" else [f"{heading}: {key} is required, the table says {cells[1]}"]
                    )
                    continue
                stated = parse_value(cells[1].strip("`"), f"{heading}.{key}")
                if plain(stated) != plain(info.default):
                    wrong.append(f"{heading}: {key} default is {info.default!r}, the table says {cells[1]}")
                wrong += [
                    f"{heading}: {key} allows {value!r}, the table does not say so"
                    for value in literals(info.annotation)
                    if f"`{value}`" not in " | ".join(cells)
                ]
    assert wrong == []


def test_the_tutorials_settings_are_defined_and_the_old_term_is_gone():
    assert "the-tutorials-settings" in slugs(ROOT / "docs" / "configs.md")
    assert [page.name for page in PAGES if "seeds'" in page.read_text(encoding="utf-8")] == []


def docs_figures() -> Any:
    """benchmarks/docs_figures.py as a module (torch-free: it trains in subprocesses)."""
    spec = importlib.util.spec_from_file_location("docs_figures", ROOT / "benchmarks" / "docs_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_configs_table_is_what_make_docs_figures_measured_last():
    figures = docs_figures()
    block = README.read_text(encoding="utf-8").partition(figures.BEGIN)[2].partition(figures.END)[0]
    measured = json.loads(figures.FIGURES.read_text(encoding="utf-8"))
    assert block.strip() == figures.render(measured).strip(), "run: make docs-figures"
    assert measured["machine"]["cpu"] in block and measured["machine"]["date"] in block
    shipped = sorted(path.stem for path in (ROOT / "configs").glob("*.yaml"))
    rows = [row for row, _, _ in figures.ROWS]
    assert [name for name in shipped if not any(fnmatch.fnmatch(name, row) for row in rows)] == []
    assert re.search(r"^docs-figures: .*## ", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
