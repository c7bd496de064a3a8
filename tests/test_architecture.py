"""The package's shape: its modules import one another without cycles, and no module is over 400 lines.

The import graph is built from the source with ``ast`` (module-level and function-level imports, relative
imports resolved; imports under ``if TYPE_CHECKING:`` are left out, they never run), so an import hidden in a
function to dodge a cycle still counts.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "geoattn"


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(package: Path = PACKAGE) -> nx.DiGraph:
    """Module → the package's modules it imports. ``from .x import y`` names module ``x.y`` when that is a
    module, else ``x`` (``y`` is a name defined in it, or re-exported by the package ``x``)."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module
                if node.level:
                    base = here
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            graph.add_edges_from((name, target) for target in targets if target in files and target != name)
    return graph


def test_the_graph_sees_relative_function_level_and_package_imports(tmp_path):
    """The builder itself, on a made-up package: a relative import inside a function is an edge, one under
    TYPE_CHECKING is not, and a cycle through a package's __init__ is found."""
    pkg = tmp_path / "geoattn"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("import os\nfrom .sub import thing\n\ndef f():\n    pass\n")
    (pkg / "c.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import C\n"
                                      "thing = 1\n\ndef g():\n    from .. import a\n    return a\n")
    graph = import_graph(pkg)
    assert set(graph.edges) == {("geoattn", "geoattn.a"), ("geoattn.a", "geoattn.sub"),
                                ("geoattn.sub", "geoattn.sub.b"), ("geoattn.sub.b", "geoattn.a")}
    assert sorted(map(sorted, nx.simple_cycles(graph))) == [["geoattn.a", "geoattn.sub", "geoattn.sub.b"]]


def test_no_import_cycles_among_the_modules():
    """Leaves are imported by what builds on them, never the other way round; a package's __init__ counts as
    the modules it imports (importing ``geoattn.geometry`` from a module that a geometry imports is a cycle)."""
    graph = import_graph()
    cycles = sorted(sorted(c) for c in nx.simple_cycles(graph))
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles[:10])


def test_no_python_file_in_the_package_is_over_400_lines():
    """Small files, one job each (the project's rule)."""
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert len(sizes) > 40  # the walk found the package
    assert {path: n for path, n in sizes.items() if n > 400} == {}


def test_the_backend_prose_names_every_backend_and_points_to_the_policy_table():
    """The backend policy is written once (``geoattn.backends.policy.RULES``): the package docs list every
    registered backend and refer to the table instead of restating it."""
    import geoattn
    from geoattn import backends

    names = [name for name in geoattn.available_backends() if name != "auto"]
    assert "native" in names and "tiled" in names
    assert [name for name in names if f"``{name}``" not in backends.__doc__] == []
    for doc in (backends.__doc__, geoattn.attention.__doc__, geoattn.explain_backend.__doc__):
        assert "geoattn.backends.policy.RULES" in doc
