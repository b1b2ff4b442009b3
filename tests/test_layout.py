"""The README's map of the package is true: every module is on it, and each imports only modules
above it in the map (imports for type hints alone excepted), so there is no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout() -> list[str]:
    """The module names of the README's Layout section, in their order."""
    block = (ROOT / "README.md").read_text(encoding="utf-8").split("## Layout", 1)[1].split("```")[1]
    return [line.split()[0].removeprefix("gdtrain/").removesuffix(".py")
            for line in block.splitlines() if line.startswith("gdtrain/")]


def imported(module: str) -> set[str]:
    """The gdtrain modules `module` imports at run time, at its top or inside its functions."""
    tree = ast.parse((ROOT / "gdtrain" / f"{module}.py").read_text(encoding="utf-8"))
    hints_only = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
                  and ast.unparse(branch.test) == "TYPE_CHECKING" for node in ast.walk(branch)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in hints_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "gdtrain":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gdtrain."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("gdtrain.")}
    return found - {"__version__"}


def test_every_module_is_on_the_map():
    modules = {path.stem for path in (ROOT / "gdtrain").glob("*.py")} - {"__init__", "__main__"}
    assert set(layout()) == modules


def test_each_module_imports_only_those_above_it():
    order = layout()
    later = {module: [dep for dep in imported(module) if order.index(dep) > order.index(module)] for module in order}
    assert {module: deps for module, deps in later.items() if deps} == {}


def test_a_module_importing_one_below_it_is_found():
    """The check can fail: recipe imports engine, so engine must sit above recipe."""
    order = layout()
    assert "engine" in imported("recipe") and order.index("engine") < order.index("recipe")
