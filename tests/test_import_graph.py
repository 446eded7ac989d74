"""The package's import graph: every ``import resnetlab.x`` and ``from resnetlab.x import y`` of
every module, at its top, inside functions or under ``TYPE_CHECKING``, is an edge. The graph
must be acyclic, so that each module can be read after the ones it uses, and its edges must
follow the layers of docs/design.md: a module imports its own package and the layers below."""

from __future__ import annotations

import ast
from pathlib import Path

import resnetlab

PACKAGE = Path(resnetlab.__file__).resolve().parent

Graph = dict[str, set[str]]

# docs/design.md's layers, bottom first: the packages (and top-level modules) of each row may
# import their own and those of the rows below, nothing beside or above them
LAYERS = (
    ("errors",),
    ("settings", "files"),
    ("models", "scratch", "data", "config"),
    ("runtime", "checkpoints"),
    ("training",),
    ("inference",),
    ("explain",),
    ("bench", "detection", "experiments", "serve"),
    ("cli", "__init__"),
    ("__main__",),
)


def module_name(path: Path, root: Path) -> str:
    """``resnetlab.training.run`` for ``resnetlab/training/run.py`` of the package at ``root``
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


def part(module: str) -> str:
    """The package or top-level module under the root that ``module`` belongs to:
    ``training`` for ``resnetlab.training.run``, ``__init__`` for ``resnetlab`` itself."""
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def layer_breaches(graph: Graph, layers: tuple[tuple[str, ...], ...]) -> list[str]:
    """Each import of ``graph`` that ``layers`` forbid, and each part that no layer places, as
    a line naming the module and what it imports."""
    level = {name: row for row, names in enumerate(layers) for name in names}
    breaches = [
        f"{module}: {part(module)} is in no layer" for module in graph if part(module) not in level
    ]
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            source, used = part(module), part(target)
            if source in level and used != source and level.get(used, len(layers)) >= level[source]:
                below = ", ".join(sorted(name for name in level if level[name] < level[source]))
                allowed = f"only {below}" if below else "none of the other parts"
                breaches.append(f"{module} imports {target}: {source} may import {allowed}")
    return breaches


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


def test_imports_follow_the_layers() -> None:
    graph = import_graph(PACKAGE)
    assert "resnetlab.files" in graph["resnetlab.data.pack"]  # edges across layers are found
    breaches = layer_breaches(graph, LAYERS)
    assert not breaches, "imports against docs/design.md's layers:\n" + "\n".join(breaches)


def test_an_import_beside_or_above_its_layer_is_named(tmp_path: Path) -> None:
    """data/pack.py's old import of the training run's files, a sibling's import and a package
    without a layer are each named; an import from a lower layer is not."""
    for folder in ("data", "models", "training", "extra"):
        (tmp_path / "pkg" / folder).mkdir(parents=True)
        (tmp_path / "pkg" / folder / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "data" / "pack.py").write_text("from pkg.training.files import write\n")
    (tmp_path / "pkg" / "models" / "net.py").write_text("def f():\n    import pkg.data.pack\n")
    (tmp_path / "pkg" / "training" / "files.py").write_text("from pkg.models import net\n")
    layers = (("data", "models"), ("training",), ("__init__",))
    assert layer_breaches(import_graph(tmp_path / "pkg"), layers) == [
        "pkg.extra: extra is in no layer",
        "pkg.data.pack imports pkg.training.files: data may import none of the other parts",
        "pkg.models.net imports pkg.data.pack: models may import none of the other parts",
    ]
