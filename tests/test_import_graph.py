"""No import cycle in the package: every ``import resnetlab.x`` and ``from resnetlab.x import y``
of every module, at its top, inside functions or under ``TYPE_CHECKING``, is an edge of a graph
that must be acyclic, so that each module can be read after the ones it uses."""

from __future__ import annotations

import ast
from pathlib import Path

import resnetlab

PACKAGE = Path(resnetlab.__file__).resolve().parent

Graph = dict[str, set[str]]


def module_name(path: Path, root: Path) -> str:
    """``resnetlab.training.run`` for ``resnetlab/engine/run.py`` of the package at ``root``
    (``.../resnetlab``); a package's ``__init__.py``: the package."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.Import | ast.ImportFrom, package: str, modules: set[str]) -> set[str]:
    """The package's modules that ``node`` imports: ``from a.b import c`` imports the module
    ``a.b.c`` if there is one, else ``a.b``; a name resolves to the deepest module it names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the package, one level up per dot after the first
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parent, *([node.module] if node.module else [])])
        names = [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def import_graph(root: Path) -> Graph:
    """Each module of the package under ``root`` -> the package's modules it imports."""
    paths = {module_name(path, root): path for path in root.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        nodes = ast.walk(ast.parse(path.read_text(), str(path)))
        edges = set().union(
            *(
                imported(node, package, set(paths))
                for node in nodes
                if isinstance(node, ast.Import | ast.ImportFrom)
            )
        )
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """A cycle of ``graph`` as its modules in order, the first repeated at the end; None if
    there is none (a depth-first search that keeps the path it is on)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for neighbour in sorted(graph[node]):
            cycle = visit(neighbour)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert "resnetlab.config.train" in graph["resnetlab.training.train"]  # edges are found
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found_under_type_checking_and_in_functions(tmp_path: Path) -> None:
    """The check sees the imports that do not run at import time too, and relative ones."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
        "b.py": "def f():\n    from .sub import c\n",
        "sub/__init__.py": "",
        "sub/c.py": "import pkg.a\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (tmp_path / "pkg" / "sub" / "c.py").write_text("import json\n")
    assert find_cycle(import_graph(tmp_path / "pkg")) is None
