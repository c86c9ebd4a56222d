"""The package's import structure: no circle, and every floor imports only the floors beneath it.

The imports are read from the source with ``ast`` (function-level imports included, so a circle hidden inside a
function counts), not by importing anything. ``docs/architecture.md`` describes the floors; :data:`FLOORS` is
that table, and a module on no floor of it fails the test, so a new module has to be placed on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "spikformers"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# floor -> the modules on it (a name ending in "." covers that package), lowest first; docs/architecture.md
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("kernels", ("kernels.",)),
    ("neurons", ("neurons.",)),
    ("layers", ("layers", "memory", "outputs")),
    ("attention", ("attention.",)),
    ("models", ("models.",)),
    ("registry", ("registry",)),
    ("applications", ("train.", "energy.", "data.", "convert.", "factory", "cli", "doctor", "viz", "__init__",
                      "__main__")),
]


def module_name(path: Path, root: Path = ROOT) -> str:
    """``kernels/cpp.py`` -> ``kernels.cpp``; a package's ``__init__.py`` is the package (``""`` at the top)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_modules(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Every module of the package by name: its file and whether it is a package (``__init__.py``)."""
    return {module_name(p, root): (p, p.name == "__init__.py") for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: Path, is_package: bool, modules: dict) -> list[tuple[str, int]]:
    """The package's modules that ``name`` imports, anywhere in its file, with the line of each import.

    ``from X import a``: the submodule ``X.a`` when there is one, else ``X`` itself. Parent packages that Python
    also imports on the way are not counted: an edge is what the code names.
    """
    here = name.split(".") if name else []
    package = here if is_package else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                full = [PACKAGE, *base, *(node.module.split(".") if node.module else [])]
            else:
                full = (node.module or "").split(".")
            targets = []
            for alias in node.names:
                sub = ".".join([*full, alias.name])
                targets.append(sub if sub.removeprefix(PACKAGE + ".") in modules else ".".join(full))
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                inner = target.removeprefix(PACKAGE).lstrip(".")
                while inner not in modules and "." in inner:  # `import spikformers.a.b.name` style
                    inner = inner.rsplit(".", 1)[0]
                if inner in modules and inner != name:
                    found.append((inner, node.lineno))
    return found


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` for every module of the package."""
    modules = read_modules(root)
    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in modules.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(name, path, is_package, modules):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def floor_of(module: str) -> int | None:
    """The index in :data:`FLOORS` of ``module``'s floor, None when it is on none."""
    for i, (_, members) in enumerate(FLOORS):
        for m in members:
            if module == m or (m.endswith(".") and (module + ".").startswith(m)) or (m == "__init__" and module == ""):
                return i
    return None


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """Every import of a module on a higher floor than the importer's, as ``a (line n) -> b``."""
    bad = []
    for module, edges in graph.items():
        for target, line in edges.items():
            a, b = floor_of(module), floor_of(target)
            if a is not None and b is not None and b > a:
                bad.append(f"{module or PACKAGE} (floor {FLOORS[a][0]}, line {line}) -> {target} "
                           f"(floor {FLOORS[b][0]})")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


def test_no_import_circle(graph) -> None:
    found = circles(graph)
    assert not found, "import circles (each group imports itself through the others):\n" + "\n".join(
        " <-> ".join(g) for g in found)


def test_kernels_import_nothing_above_them(graph) -> None:
    bad = [f"{m} (line {line}) -> {t}" for m, edges in graph.items() if m.startswith("kernels")
           for t, line in edges.items() if not t.startswith("kernels")]
    assert "kernels" in graph, "the kernel floor is the package spikformers.kernels"
    assert not bad, "kernels/ must import nothing of the rest of the package:\n" + "\n".join(bad)


def test_every_module_on_a_floor_and_no_import_runs_up(graph) -> None:
    unplaced = [m for m in graph if floor_of(m) is None]
    assert not unplaced, f"modules on no floor of FLOORS (place them, and in docs/architecture.md): {unplaced}"
    bad = upward_imports(graph)
    assert not bad, "imports that run up a floor:\n" + "\n".join(bad)


def test_the_reader_sees_circles_and_function_level_imports(tmp_path) -> None:
    """The analysis itself: a circle closed by an import inside a function, and ``from . import sub``, are seen."""
    pkg = tmp_path / PACKAGE
    (pkg / "kernels").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "kernels" / "__init__.py").write_text("from . import low\n")
    (pkg / "kernels" / "low.py").write_text("def f():\n    from ..layers import thing\n")
    (pkg / "layers.py").write_text("from .kernels.low import f\nthing = 1\n")
    g = import_graph(pkg)
    assert g["kernels"] == {"kernels.low": 1}
    assert g["kernels.low"] == {"layers": 2} and g["layers"] == {"kernels.low": 1}
    assert circles(g) == [["kernels.low", "layers"]]
    assert upward_imports(g) == ["kernels.low (floor kernels, line 2) -> layers (floor layers)"]
