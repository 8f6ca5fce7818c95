"""The dependency rule of docs/architecture.md, checked on the source: a lower layer never imports a
higher one, the gateway reaches only models and core, and no two modules import each other in a loop."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# each layer and the layers it may import (besides itself); the CLI (the `adaudit` package itself) may
# import everything
ALLOWED = {
    "adaudit.core": set(),
    "adaudit.models": {"adaudit.core"},
    "adaudit.decisions": {"adaudit.core", "adaudit.models"},  # scores + policy -> pass / review / block
    "adaudit.data": {"adaudit.core", "adaudit.models"},
    "adaudit.training": {"adaudit.core", "adaudit.models", "adaudit.data", "adaudit.decisions"},
    "adaudit.compression": {"adaudit.core", "adaudit.models", "adaudit.data", "adaudit.training",
                            "adaudit.decisions"},
    "adaudit.export": {"adaudit.core", "adaudit.models"},
    "adaudit.service": {"adaudit.core", "adaudit.models", "adaudit.decisions"},
}


def package_folders() -> dict[str, Path]:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {package: ROOT / folder for package, folder in settings["package-dir"].items()}


def modules() -> dict[str, Path]:
    """Every module of the package, by its import name."""
    found = {}
    for package, folder in package_folders().items():
        for path in folder.glob("*.py"):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The adaudit modules `name` imports, at module level or inside a function."""
    found = set()
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # `from . import x` imports the submodule x
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
    return {module for module in found if module in known and module != name}


def layer(module: str) -> str:
    return next((layer for layer in sorted(ALLOWED, key=len, reverse=True)
                 if module == layer or module.startswith(layer + ".")), "adaudit")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_package_folder_is_a_layer_with_a_rule():
    assert set(package_folders()) == set(ALLOWED) | {"adaudit"}


def test_no_layer_imports_a_higher_one(graph):
    assert len(graph) > 40  # the walk found the package
    wrong = sorted(f"{name} imports {target}" for name, targets in graph.items() for target in targets
                   if layer(name) != "adaudit" and layer(target) != layer(name)
                   and layer(target) not in ALLOWED[layer(name)])
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle(graph):
    state: dict[str, str] = {}
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_the_checks_see_a_violation(tmp_path):
    """The walk reads relative and function-level imports (a check that sees nothing passes everything)."""
    module = tmp_path / "backends.py"
    module.write_text("def load():\n    from ..training.loop import fit\n    from . import encoding\n")
    known = {"adaudit.training.loop", "adaudit.service.encoding", "adaudit.service.backends"}
    assert imports("adaudit.service.backends", module, known) == {"adaudit.training.loop", "adaudit.service.encoding"}
    assert layer("adaudit.training.loop") not in ALLOWED["adaudit.service"]
