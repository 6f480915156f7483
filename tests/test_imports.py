"""No module of the package imports a module that imports it back, not even lazily inside a
function: the import graph of mrl_deploy (with mrl_deploy.exporters and mrl_deploy.runtimes,
which live at the repository's top level) has no cycle.

The graph is read from the source with `ast`, so every import counts: top-level ones and those
inside functions, `import a.b`, `from a import b`, relative ones. An edge goes to the module an
import statement names: `from mrl_deploy.x import f` -> mrl_deploy.x, `from . import y` ->
the module y when y is one (else the package, whose attribute y is), `import mrl_deploy.x.y` ->
mrl_deploy.x.y; a package counts as its __init__. A "mrl_deploy.x:attr" string (what
importlib.import_module is given, as runtimes.RUNTIMES does) is an edge to mrl_deploy.x too. The
parents Python imports on the way (a package's __init__ before its modules) are not edges: every
module has them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# import name -> directory, as pyproject.toml's package-dir maps them
ROOTS = {"mrl_deploy": REPO / "mrl_deploy", "mrl_deploy.exporters": REPO / "exporters",
         "mrl_deploy.runtimes": REPO / "runtimes"}


def package_modules() -> dict[str, tuple[Path, bool]]:
    """module name -> (file, is a package's __init__)."""
    modules = {}
    for root, directory in ROOTS.items():
        for path in sorted(directory.rglob("*.py")):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if root == "mrl_deploy" and parts[0] in ("exporters", "runtimes"):
                continue   # not installed from here: the top-level directories are
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            modules[".".join([root, *parts])] = (path, is_package)
    return modules


def imported_names(path: Path, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(absolute dotted name, line) of everything the file imports; for `from X import a` both
    X.a (if a is a module) and X are candidates, resolved in import_graph."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            for alias in node.names:
                found.append((f"{origin}.{alias.name}" if alias.name != "*" else origin, node.lineno))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            spec = re.fullmatch(r"(mrl_deploy(?:\.\w+)+):\w+", node.value)
            if spec:   # a module named for importlib
                found.append((spec.group(1), node.lineno))
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the (first) import}."""
    modules = package_modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        edges: dict[str, int] = {}
        for target, line in imported_names(path, name, is_package):
            parts = target.split(".")
            # the longest prefix that is a module of the package: X.a when a is a module, else X
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in modules:
                    if candidate != name:
                        edges.setdefault(candidate, line)
                    break
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the graph, or None (iterative depth-first search)."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, iterators = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while path:
            child = next(iterators[-1], None)
            if child is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                iterators.append(iter(sorted(graph[child])))
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    modules = package_modules()
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        path = modules[a][0].relative_to(REPO)
        steps.append(f"  {a} imports {b} ({path}:{graph[a][b]})")
    return "\n".join(steps)


def test_the_graph_sees_every_kind_of_import():
    """The reader itself: lazy, relative and `from . import module` imports are edges."""
    graph = import_graph()
    assert "mrl_deploy.errors" in graph["mrl_deploy.artifact"]          # top level, relative
    assert "mrl_deploy.runtimes" in graph["mrl_deploy.artifact"]        # inside a method, a package
    assert "mrl_deploy.artifact" in graph["mrl_deploy.cli.models"]      # inside a command
    assert "mrl_deploy.runtimes.base" in graph["mrl_deploy.runtimes.ort"]
    assert "mrl_deploy.runtimes.ort" in graph["mrl_deploy.runtimes"]       # "module:attr" for importlib
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1, "b": 1}}) is None


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle:\n" + describe(cycle, graph)
