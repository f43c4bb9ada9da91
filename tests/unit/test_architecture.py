"""The layers import one way (issue 9): no module imports another that imports it back, and
every module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "batchctl"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(
    module_name(path)
    for path in PACKAGE.rglob("*.py")
    if "migrations" not in path.parts
)


def top_level_imports(path: Path) -> set[str]:
    """The batchctl modules a module imports when it is imported (not inside functions, nor
    under `if TYPE_CHECKING`)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(inner, ast.ImportFrom) and inner.module and inner.module.startswith("batchctl"):
                found.add(inner.module)
            elif isinstance(inner, ast.Import):
                found.update(a.name for a in inner.names if a.name.startswith("batchctl"))
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = module_name(path)
        edges[name] = {m for m in top_level_imports(path) if m in MODULES and m != name}
    return edges


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    edges = graph()
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for target in sorted(edges.get(node, ())):
            if target in path:
                cycles.append(path[path.index(target):] + [target])
            elif target not in done:
                visit(target, path + [target])
        done.add(node)

    for start in MODULES:
        if start not in done:
            visit(start, [start])
    assert cycles == []


def test_the_layers_run_one_way() -> None:
    """model <- job <- steps <- chunk <- runners <- worker <- executors <- partition <- engine
    <- operator <- cli: none imports one to its right."""
    layers = ["batchctl.model", "batchctl.job", "batchctl.steps", "batchctl.chunk",
              "batchctl.runners", "batchctl.worker", "batchctl.executors", "batchctl.partition",
              "batchctl.engine", "batchctl.operator", "batchctl.cli"]
    edges = graph()
    for index, module in enumerate(layers):
        above = set(layers[index + 1:])
        assert not edges[module] & above, f"{module} imports {edges[module] & above}"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_in_a_fresh_interpreter(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
