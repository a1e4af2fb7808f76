"""The modules of scc_kernels import each other in layers, without a cycle: every import counts,
those inside functions included (an import moved into a function still ties the two modules)."""

from __future__ import annotations

import ast
import graphlib
import pathlib

import pytest

import scc_kernels

PACKAGE = pathlib.Path(scc_kernels.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    """Dotted name → file, for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("scc_kernels", *path.relative_to(PACKAGE).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports (a package's __init__ is the package's name).
    Importing a.b.c runs a.b's __init__ too: an edge to every package on the way that is not one
    of the importer's own (those are running already); an import of the package itself counts."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
                parts = target.split(".")
                for end in range(2, len(parts)):  # the packages on the way: scc_kernels.x, ...
                    prefix = ".".join(parts[:end])
                    if prefix in modules and not name.startswith(prefix + "."):
                        graph[name].add(prefix)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        return error.args[1]
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_imports_at_every_level():
    """The graph holds what the files say: top-level, relative, nested and in-function imports."""
    graph = import_graph()
    assert "scc_kernels.planning" in graph["scc_kernels.functional"]  # from .planning import resolve
    assert "scc_kernels.backends.registry" in graph["scc_kernels._options"]  # from .backends import registry
    assert "scc_kernels.backends.registry" in graph["scc_kernels.backends.torch_backend"]  # from .registry import
    assert "scc_kernels.backends.triton_backend" in graph["scc_kernels.timing"]  # imported inside a function
    assert "scc_kernels.backends" in graph["scc_kernels.ops"]  # the package __init__ on the way
    assert "scc_kernels" in graph["scc_kernels.integrations.nnunet"]  # from scc_kernels import SCCLoss


@pytest.mark.parametrize(
    "graph, expected",
    [({"a": {"b"}, "b": {"c"}, "c": set()}, None), ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, {"a", "b", "c"})],
)
def test_a_cycle_is_found(graph, expected):
    cycle = find_cycle(graph)
    assert (cycle if cycle is None else set(cycle)) == expected
