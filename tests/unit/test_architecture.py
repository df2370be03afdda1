"""The floors of docs/architecture.md, checked on the source: every import points down.

Walks the imports of every module of the application's packages (with `ast`, nothing is
imported) and fails on:

- a cycle between top-level packages, or among the modules of `dashboard/`;
- an import from a lower floor to a higher one, or between two packages of the same floor;
- an import of the engine from outside it other than its public surface;
- an import inside a function, unless `LOCAL_IMPORTS` lists it with its reason;
- a module of more than `MAX_LINES` lines that docs/architecture.md does not name with its reason.

The floors, the engine's public surface and the long modules are read from the marked blocks of
docs/architecture.md, so that the page and this test cannot disagree.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()
PACKAGES = ("config", "engine", "protocols", "dashboard", "cosession")
MAX_LINES = 500

# Function-local imports that are there for a reason other than a cycle: where, and why.
LOCAL_IMPORTS = {
    "cosession": "the command line imports what a command needs only when that command runs, so that "
                 "`cosession --help` or `cosession audit verify` does not load the web application",
}


def _block(name: str) -> list[str]:
    """The lines of the ```text block that follows ``<!-- name -->`` in docs/architecture.md."""
    found = re.search(rf"<!-- {name} -->\n```text\n(.*?)```", DOC, re.S)
    assert found, f"docs/architecture.md has no <!-- {name} --> block"
    return [line.split("#", 1)[0].strip() for line in found.group(1).splitlines()
            if line.split("#", 1)[0].strip()]


FLOORS = [line.split() for line in _block("floors")]  # lowest first; one line: peers
ENGINE_SURFACE = set(_block("engine-surface"))
LONG_MODULES = {line.split()[0] for line in _block("long-modules")}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (or a name in it: resolved below)
    line: int
    local: bool  # inside a function


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            if "node_modules" not in path.parts}


MODULES = _files()


def _resolve(name: str) -> str:
    """The module `name` is, or is in (``from a.b import c`` names module a.b.c or a name in a.b)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(module, alias.name, child.lineno, local) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                for alias in child.names:
                    found.append(Import(module, f"{base}.{alias.name}" if base else alias.name, child.lineno, local))
            visit(child, inner)

    visit(tree, False)
    return found


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]
OURS = [(imp, _resolve(imp.target)) for imp in IMPORTS if _resolve(imp.target)]


def _floor_of(module: str) -> tuple[int, str] | None:
    """(floor number, unit) of the longest unit of FLOORS that `module` is in."""
    best = None
    for number, units in enumerate(FLOORS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
                best = (number, unit)
    return best


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def _where(imp: Import) -> str:
    return f"{MODULES[imp.source].relative_to(ROOT)}:{imp.line} imports {imp.target}"


def test_every_module_is_on_a_floor():
    assert [m for m in MODULES if _floor_of(m) is None] == []


def test_no_cycle_between_top_level_packages():
    edges: dict[str, set[str]] = {}
    for imp, target in OURS:
        source, other = imp.source.split(".")[0], target.split(".")[0]
        if source != other:
            edges.setdefault(source, set()).add(other)
    assert _cycles(edges) == []


def test_no_cycle_among_the_modules_of_the_dashboard():
    edges: dict[str, set[str]] = {}
    for imp, target in OURS:
        if imp.source.startswith("dashboard") and target.startswith("dashboard") and target != imp.source:
            # importing a package runs its __init__: an edge to it, and from it to what it imports
            edges.setdefault(imp.source, set()).add(target)
    assert _cycles(edges) == []


def test_every_import_points_down():
    wrong = []
    for imp, target in OURS:
        source_floor, target_floor = _floor_of(imp.source), _floor_of(target)
        assert source_floor and target_floor
        if source_floor[1] == target_floor[1]:
            continue
        if target_floor[0] > source_floor[0]:
            wrong.append(f"{_where(imp)}: up from {source_floor[1]} to {target_floor[1]}")
        elif target_floor[0] == source_floor[0]:
            wrong.append(f"{_where(imp)}: sideways, from {source_floor[1]} to its peer {target_floor[1]}")
    assert wrong == []


def test_outside_the_engine_only_its_public_surface():
    wrong = [_where(imp) for imp, target in OURS
             if target.split(".")[0] == "engine" and not imp.source.startswith("engine")
             and target not in ENGINE_SURFACE]
    assert wrong == []


def test_no_import_inside_a_function_unless_listed_with_its_reason():
    wrong = [_where(imp) for imp in IMPORTS
             if imp.local and not any(imp.source == key or imp.source.startswith(key + ".") for key in LOCAL_IMPORTS)]
    assert wrong == []


def test_no_long_module_unless_the_architecture_says_why():
    long = {m: n for m, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert sorted(set(long) - LONG_MODULES) == []
    assert sorted(LONG_MODULES - set(long)) == [], "docs/architecture.md names a module that is no longer long"


@pytest.mark.parametrize("block", ["floors", "engine-surface", "long-modules"])
def test_the_blocks_name_modules_that_exist(block):
    names = [name for line in _block(block) for name in line.split()[:None if block == "floors" else 1]]
    assert [name for name in names if name not in MODULES] == []
