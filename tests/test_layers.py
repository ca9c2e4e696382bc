"""The package's floors: every import (function-level ones too) goes to the same floor or one below, and no
module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "blockswap"
FLOORS = ("util", "space", "weights", "data", "scoring", "search", "train", "deploy", "study")
TOP = len(FLOORS)  # blockswap/__init__, cli, __main__: above every floor


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> int:
    """The floor index of a dotted module name under the package (the top for the package itself and cli)."""
    parts = module.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else TOP


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of the package in `path`, wherever it stands in the file."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    known = {module_name(p, root) for p in root.rglob("*.py")}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == root.name:
                base = node.module or ""
            else:
                continue
            for alias in node.names:  # `from . import kernels` names a module, `from .x import f` a name in one
                found.append((node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == root.name]
    return found


def violations(root: Path) -> list[str]:
    """Every upward import and every import circle among the modules under `root`, as readable lines."""
    problems = []
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        graph[name] = set()
        for line, target in imports_of(path, root):
            if floor_of(target) > floor_of(name):
                problems.append(f"{path.relative_to(root.parent)}:{line}: {name} ({FLOORS[floor_of(name)]}) imports "
                                f"{target}, a higher floor")
            if target != name and not name.startswith(target + "."):  # a package's own __init__ is not a circle
                graph[name].add(target)
    # circles: depth-first search for a back edge
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                problems.append("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt in graph and not state.get(nxt):
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node)
    return problems


def test_every_module_lives_on_a_floor() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__", "cli")]
    assert loose == [], f"modules outside the floors: {loose}"
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(FLOORS)


def test_no_upward_import_and_no_circle() -> None:
    assert violations(PACKAGE) == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "blockswap"
    for rel, text in {"__init__.py": "", **{f"{f}/__init__.py": "" for f in FLOORS}, **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_an_upward_import_inside_a_function_is_caught(tmp_path: Path) -> None:
    root = _package(tmp_path, {"util/counts.py": "def f():\n    from ..train.training import train\n",
                               "train/training.py": "from ..util.counts import f\n"})
    found = violations(root)
    assert any("util/counts.py:2" in p and "blockswap.train.training, a higher floor" in p for p in found), found


def test_a_circle_within_one_floor_is_caught(tmp_path: Path) -> None:
    root = _package(tmp_path, {"space/a.py": "from .b import x\n", "space/b.py": "def x():\n    from . import a\n"})
    assert any(p.startswith("import circle: blockswap.space.a -> blockswap.space.b -> blockswap.space.a")
               for p in violations(root)), violations(root)


@pytest.mark.parametrize("line", ["from blockswap.search.run import run_search", "import blockswap.deploy.export",
                                  "from .. import cli"])
def test_every_spelling_of_an_upward_import_is_caught(tmp_path: Path, line: str) -> None:
    root = _package(tmp_path, {"scoring/x.py": line + "\n", "cli.py": "", "search/run.py": "", "deploy/export.py": ""})
    assert len(violations(root)) == 1, violations(root)
