"""No import circle in the package or in ``bench/``, not even a type-only one.

The graph is read from the source (``ast``), so imports under
``TYPE_CHECKING`` and imports inside functions count as much as the
others: a circle that only type checking or a late import hides is
still a circle in the design.
"""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of a package, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _targets(name: str, path: Path, node: ast.AST, found: set[str]) -> set[str]:
    """The modules of ``found`` that one import statement imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & found
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        anchor = here[: len(here) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    targets = set()
    for alias in node.names:
        module = f"{base}.{alias.name}"
        targets.add(module if module in found else base)
    return targets & found


def graph(root: Path, package: str) -> dict[str, set[str]]:
    """Which module of the package imports which, by name.

    ``from a import b`` is an edge to ``a.b`` when that is a module, else
    to ``a``. A parent package's ``__init__``, which Python runs first, is
    not an edge: a package re-exporting its modules would make every
    import a circle.
    """
    found = modules(root, package)
    edges: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            edges[name] |= _targets(name, path, node, set(found)) - {name}
    return edges


def _reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    pending = list(edges[start])
    while pending:
        node = pending.pop()
        if node not in seen:
            seen.add(node)
            pending.extend(edges[node])
    return seen


def circles(edges: dict[str, set[str]]) -> set[frozenset[str]]:
    """The groups of modules that import one another, directly or not."""
    reach = {node: _reachable(edges, node) for node in edges}
    return {
        frozenset({node} | {other for other in reach[node] if node in reach[other]})
        for node in edges
        if node in reach[node]
    }


def test_the_package_has_no_import_circle() -> None:
    found = circles(graph(ROOT, "taskiq_batching"))
    assert found == set(), sorted(map(sorted, found))


def test_bench_has_no_import_circle() -> None:
    found = circles(graph(ROOT, "bench"))
    assert found == set(), sorted(map(sorted, found))


def test_a_type_only_or_late_import_makes_a_circle(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg.a import A\n")
    (package / "a.py").write_text("from pkg.b import B\nclass A: ...\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import c\n"
        "class B: ...\n"
    )
    (package / "c.py").write_text("def f():\n    from . import a\n")
    (package / "d.py").write_text("import pkg.a\n")
    edges = graph(tmp_path, "pkg")
    assert edges["pkg.d"] == {"pkg.a"}
    assert circles(edges) == {frozenset({"pkg.a", "pkg.b", "pkg.c"})}
