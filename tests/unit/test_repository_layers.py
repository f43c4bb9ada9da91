"""The repository package's modules stack one way: each imports in isolation, and none imports a
module above it (partitions.py never store.py), at the top or inside a function."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import batchctl.repository

PACKAGE = Path(batchctl.repository.__file__).parent
# Lowest first: a module may import only modules before it.
LAYERS = [
    "tables", "connect", "migrate", "rows", "events", "base", "partitions", "fires", "prune",
    "store", "stats", "messages",
]


def repository_imports(module: str) -> set[str]:
    """The batchctl.repository modules that `module` imports, anywhere in its source."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["batchctl", "repository"] and len(parts) > 2 and parts[2] in LAYERS:
                found.add(parts[2])
    return found


@pytest.mark.parametrize("module", ["batchctl.repository", *(f"batchctl.repository.{m}" for m in LAYERS)])
def test_each_repository_module_imports_in_a_fresh_interpreter(module: str) -> None:
    outcome = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"], capture_output=True, text=True
    )
    assert outcome.returncode == 0, outcome.stderr


def test_every_module_of_the_package_has_a_layer() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS)


@pytest.mark.parametrize("module", LAYERS)
def test_a_module_imports_only_the_layers_below_it(module: str) -> None:
    below = set(LAYERS[: LAYERS.index(module)])
    assert repository_imports(module) <= below


def test_partitions_does_not_import_store() -> None:
    assert "store" not in repository_imports("partitions")


def test_store_keeps_exporting_what_others_import_from_it() -> None:
    from batchctl.repository import Decide, Fence, Repository  # noqa: F401
    from batchctl.repository.store import taken_over_message

    assert "taken over" in taken_over_message(7, "FAILED", "lost\nmore")


def test_prune_stacks_on_the_base_alone() -> None:
    """Pruning needs no partition query: it sits beside partitions.py, not on it."""
    assert "partitions" not in repository_imports("prune")
