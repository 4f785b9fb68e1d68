"""The house rules that keep each idea in one place: the outside world (adapters/) and the viewers never import a stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted(REPO.glob("adapters/*.py")) + [REPO / "view_tasks.py"], ids=lambda p: p.name)
def test_the_outside_world_and_the_viewers_never_import_a_stage(path: Path):
    stages = {name for name in imported_modules(path) if name == "nodes" or name.startswith(("nodes.", "graph"))}
    assert not stages, f"{path.name} imports {sorted(stages)}: what it needs belongs in goal.py, state.py or adapters/"


def test_every_reader_of_the_goal_uses_goal_py():
    readers = [REPO / "view_tasks.py", REPO / "runner.py", REPO / "adapters" / "views.py", REPO / "nodes" / "stop_rules.py", REPO / "nodes" / "report.py"]
    for path in readers:
        assert "goal" in imported_modules(path), path.name
    for path in [*REPO.glob("*.py"), *REPO.glob("adapters/*.py"), *REPO.glob("nodes/*.py")]:
        if path.name != "goal.py":
            assert "operator.ge" not in path.read_text(), f"{path.name} compares against the goal by itself"
