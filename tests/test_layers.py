"""The engine's layers: lower packages never import higher ones, so each can be used (and tested) alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "engine"

# package -> the engine packages it must never import (the server and command line sit on top of
# tasks, tasks on pipelines and training, pipelines on models/geo/runtime).
FORBIDDEN = {
    "geo": {"models", "pipelines", "tasks", "server", "training", "dataset", "scaleout", "runtime"},
    "runtime": {"pipelines", "tasks", "server", "training", "dataset", "scaleout"},
    "models": {"pipelines", "tasks", "server", "training", "dataset", "scaleout"},
    "pipelines": {"tasks", "server", "training", "dataset", "scaleout"},
    "training": {"tasks", "server", "dataset", "scaleout"},
    "dataset": {"tasks", "server"},
    "scaleout": {"tasks", "server"},
    "evaluate": {"tasks", "pipelines", "training", "dataset", "scaleout"},
    "tasks": {"server"},
}


def _engine_imports(path: Path) -> set[tuple[str, int]]:
    """(engine package, line) of every absolute or relative import of an engine package in a module."""
    package = path.relative_to(ENGINE).parts[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            elif node.level == 2:  # from ..x import y, one package up from engine/<package>/<module>.py
                names = [f"engine.{node.module}" if node.module else ""] + \
                        [f"engine.{alias.name}" for alias in node.names if not node.module]
            elif node.level == 1:
                names = [f"engine.{package}"]
        for name in names:
            parts = name.split(".")
            if len(parts) > 1 and parts[0] == "engine":
                found.add((parts[1], node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(package):
    offending = []
    for path in sorted((ENGINE / package).rglob("*.py")):
        for imported, line in _engine_imports(path):
            if imported in FORBIDDEN[package]:
                offending.append(f"{path.relative_to(ENGINE.parent)}:{line} imports engine.{imported}")
    assert not offending, "\n".join(offending)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The scanner itself: a module in tasks/ that imports the server is caught, relative or absolute."""
    fake = tmp_path / "engine" / "tasks"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from ..server.schemas import x\nimport engine.server.jobs\n", encoding="utf-8")
    monkeypatch.setattr(f"{__name__}.ENGINE", tmp_path / "engine")
    assert {name for name, _ in _engine_imports(fake / "bad.py")} == {"server"}
