"""The layout is the architecture: ``graphopt.core`` (framework) <- ``graphopt.ascend`` (the Ascend hand-off) <-
``graphopt.commands`` (the CLI), with ``graphopt.passes`` and ``graphopt.models`` on top of core. Every import
counts, the ones inside functions too: a cycle hidden in a function is still a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> folder (setup.cfg's package_dir: passes/ and models/ install as graphopt.passes / graphopt.models)
PACKAGES = {"graphopt": ROOT / "graphopt", "graphopt.passes": ROOT / "passes", "graphopt.models": ROOT / "models"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def import_graph() -> nx.DiGraph:
    """Module -> graphopt module it imports (statically: ``import`` and ``from ... import``, at any depth)."""
    modules = _modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        package = name if _is_package(path) else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from pkg import mod`` imports the submodule; ``from mod import name`` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph.add_edge(name, target)
    return graph


def test_import_graph_sees_function_level_imports() -> None:
    graph = import_graph()
    assert graph.number_of_nodes() > 30
    assert graph.has_edge("graphopt.commands.cli", "graphopt.commands.apply")  # imported inside a function


def test_no_import_cycle() -> None:
    cycles = sorted(" -> ".join(c + c[:1]) for c in nx.simple_cycles(import_graph()))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("lower, upper", [
    ("graphopt.core", ("graphopt.ascend", "graphopt.commands", "graphopt.passes", "graphopt.models",
                       "graphopt.testing")),
    ("graphopt.ascend", ("graphopt.commands", "graphopt.testing")),
    ("graphopt.passes", ("graphopt.commands", "graphopt.testing")),
])
def test_layers(lower: str, upper: tuple[str, ...]) -> None:
    wrong = sorted(f"{a} imports {b}" for a, b in import_graph().edges
                   if (a == lower or a.startswith(lower + ".")) and any(b == u or b.startswith(u + ".") for u in upper))
    assert not wrong, "\n".join(wrong)


def test_no_module_over_400_lines() -> None:
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
