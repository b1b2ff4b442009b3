"""The architecture page's map of the package is true: every subpackage and module is on it, each
module imports only from its own layer and the layers above it, and no import goes in a circle,
imports for type hints (`if TYPE_CHECKING:`) and imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gdtrain"


def layout() -> list[tuple[str, list[str]]]:
    """(layer, its modules) in the page's order: `core`, ..., and the top-level modules as their own layers."""
    block = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").split("```")[1]
    layers: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("gdtrain/"):
            name = line.split()[0].removeprefix("gdtrain/")
            if name.endswith("/"):
                layers.append((name.rstrip("/"), []))
            else:
                layers.append((name.removesuffix(".py"), [name.removesuffix(".py")]))
        elif line.startswith("  ") and line.split() and line.split()[0].endswith(".py"):
            package = layers[-1][0]
            layers[-1][1].append(f"{package}.{line.split()[0].removesuffix('.py')}")
    return layers


def modules() -> set[str]:
    """Every module of the package, dotted below gdtrain (`training.engine`), packages' __init__ left out."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] not in ("__init__", "__main__"):
            found.add(".".join(parts))
    return found


def imported(module: str) -> set[str]:
    """The gdtrain modules `module` imports anywhere in its file, type-hint imports included."""
    path = PACKAGE / f"{module.replace('.', '/')}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    known, found = modules(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gdtrain":
            base = node.module.removeprefix("gdtrain").lstrip(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix("gdtrain.") for alias in node.names if alias.name.startswith("gdtrain.")}
    return {name for name in found if name in known}


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int:
    return next(i for i, (_, members) in enumerate(layers) if module in members)


def test_every_module_and_package_is_on_the_map():
    layers = layout()
    assert {m for _, members in layers for m in members} == modules()
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert {name for name, members in layers if name in packages} == packages


def test_each_module_imports_only_its_own_layer_and_those_above():
    layers = layout()
    upward = {}
    for _, members in layers:
        for module in members:
            later = sorted(dep for dep in imported(module) if layer_of(dep, layers) > layer_of(module, layers))
            if later:
                upward[module] = later
    assert upward == {}


def test_no_import_circle():
    graph = {module: imported(module) - {module} for module in modules()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                circles.append(path[path.index(dep) :] + [dep] if dep in path else [module, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_a_module_importing_one_below_it_is_found():
    """The check can fail: recipe imports engine, and a type-hint import counts like any."""
    assert "training.engine" in imported("training.recipe")
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gdtrain.execution.workers import run_parallel\n"
    )
    probe = PACKAGE / "core" / "_layout_probe.py"
    probe.write_text(source, encoding="utf-8")
    try:
        assert imported("core._layout_probe") == {"execution.workers"}
    finally:
        probe.unlink()
